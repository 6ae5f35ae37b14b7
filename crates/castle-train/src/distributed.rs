//! Synchronous data parallelism on burn-collective: `--devices N` ranks in this process (one
//! thread and one device each), times `--nnodes` processes joined through burn's global
//! orchestrator, which node 0 hosts at `--master-addr`.
//!
//! Every rank runs the single-device loop ([`crate::trainer::run_rank`]) on its own rows of each
//! global batch; each step all-reduces (mean) the accumulated gradients and the loss before
//! clipping and AdamW, so all ranks take the same step and the run computes what a single-device
//! run with the same config computes. Node 0 prepares the data (other nodes prepare or reuse it
//! only after joining, that is after node 0 finished), and rank 0 alone validates, logs and
//! checkpoints. A rank that fails stops the run at once; a collective call that waits longer
//! than `--peer-timeout-s` (a dead peer, a node that never joined) stops it with an error naming
//! the call. Checkpoints are written atomically by rank 0, so the last one stays valid.

use std::net::TcpListener;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use burn::module::Module;
use burn::tensor::backend::{Backend, Device as _, DeviceId};
use burn_collective::{finish_collective, register, CollectiveConfig, PeerId};
use castle_model::TrainBackend;
use tracing::{info, warn};

use crate::backend::OnBackend;
use crate::checkpoint::write_atomic;
use crate::collective::{check_same_model, Peer, Watch};
use crate::config::RunConfig;
use crate::data::prepare_data;
use crate::metrics::Summary;
use crate::optim::AdamWGroups;
use crate::trainer::{run_rank, start, Start};

/// Where the ranks of a run are: `devices` per node on `nodes` nodes.
#[derive(Debug, Clone)]
pub struct Launch {
    /// Ranks (devices) in this process.
    pub devices: usize,
    /// Processes (nodes) in the run, each with `devices` ranks.
    pub nodes: usize,
    /// This node's index in `0..nodes`; node 0 hosts the orchestrator and rank 0.
    pub node_rank: usize,
    /// `host:port` of the orchestrator (node 0 listens on the port); multi-node only.
    pub master_addr: Option<String>,
    /// `host:port` where the other nodes reach this one (its tensor service listens on the
    /// port); multi-node only.
    pub node_addr: Option<String>,
    /// Longest wait in one collective call before the run is declared stuck.
    pub timeout: Duration,
}

impl Launch {
    pub fn world(&self) -> usize {
        self.devices * self.nodes
    }

    /// Checks the launch against the config; errors name the flag or key at fault.
    pub fn validate(&self, config: &RunConfig) -> Result<()> {
        if self.devices == 0 || self.nodes == 0 {
            bail!("--devices and --nnodes must be at least 1");
        }
        if self.node_rank >= self.nodes {
            bail!(
                "--node-rank {} with --nnodes {}: must be in 0..{}",
                self.node_rank,
                self.nodes,
                self.nodes
            );
        }
        let batch = config.train.batch_size;
        if !batch.is_multiple_of(self.world()) {
            bail!(
                "train.batch_size = {batch} cannot be split evenly over {} ranks (--devices {} x --nnodes {}): \
                 make it a multiple of {} (the global batch stays train.tokens_per_step)",
                self.world(),
                self.devices,
                self.nodes,
                self.world()
            );
        }
        if self.nodes > 1 {
            for (flag, addr) in [
                ("--master-addr", &self.master_addr),
                ("--node-addr", &self.node_addr),
            ] {
                match addr {
                    None => bail!("--nnodes {}: {flag} HOST:PORT is required", self.nodes),
                    Some(a) => {
                        port_of(a).with_context(|| format!("{flag} {a}"))?;
                    }
                }
            }
        }
        Ok(())
    }

    fn collective_config(&self) -> Result<CollectiveConfig> {
        let config = CollectiveConfig::default().with_num_devices(self.devices);
        if self.nodes == 1 {
            return Ok(config);
        }
        let (master, node) = (
            self.master_addr.as_deref().unwrap_or_default(),
            self.node_addr.as_deref().unwrap_or_default(),
        );
        Ok(config
            .with_num_nodes(self.nodes as u32)
            .with_global_address(ws(master)?)
            .with_node_address(ws(node)?)
            .with_data_service_port(port_of(node)?))
    }

    /// The collective settings in words, for the log (burn-collective's default strategies).
    fn describe(&self) -> String {
        let local = format!(
            "{} ranks ({} per node x {} nodes), gradients all-reduced as a binary tree within a node",
            self.world(),
            self.devices,
            self.nodes
        );
        match (&self.master_addr, &self.node_addr) {
            (Some(master), Some(node)) if self.nodes > 1 => format!(
                "{local} and as a ring across nodes; orchestrator at {master}, this node's tensor \
                 service at {node}"
            ),
            _ => local,
        }
    }
}

fn port_of(addr: &str) -> Result<u16> {
    addr.rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .ok_or_else(|| anyhow!("expected HOST:PORT, e.g. 10.0.0.1:29500"))
}

fn ws<T: std::str::FromStr<Err = String>>(addr: &str) -> Result<T> {
    format!("ws://{addr}")
        .parse()
        .map_err(|e| anyhow!("address {addr}: {e}"))
}

/// Trains `config` data-parallel as `launch` says (see [`train_data_parallel`]).
pub struct TrainDataParallel {
    pub config: RunConfig,
    pub require_resume: bool,
    pub launch: Launch,
}

impl OnBackend for TrainDataParallel {
    type Output = Option<Summary>;
    fn run<B: TrainBackend>(self, _device: B::Device) -> Result<Option<Summary>> {
        train_data_parallel::<B>(&self.config, self.require_resume, &self.launch)
    }
}

/// One report from a rank's thread to the supervising thread.
enum Report {
    Done(usize, Result<Option<Summary>>),
    Finished,
}

/// Trains `config` with this process's `launch.devices` ranks; returns the summary on the node
/// of rank 0 and `None` elsewhere.
pub fn train_data_parallel<B: TrainBackend>(
    config: &RunConfig,
    require_resume: bool,
    launch: &Launch,
) -> Result<Option<Summary>> {
    launch.validate(config)?;
    let devices = local_devices::<B>(launch.devices);
    let lead_node = launch.node_rank == 0;
    if launch.nodes > 1 && lead_node {
        host_orchestrator(port_of(launch.master_addr.as_deref().unwrap_or_default())?)?;
    }
    let run_dir = &config.run.dir;
    let data = match lead_node {
        true => {
            std::fs::create_dir_all(run_dir)
                .with_context(|| format!("cannot create run.dir {}", run_dir.display()))?;
            Some(prepare_data(config)?)
        }
        false => None,
    };
    let watch = Watch::new(launch.devices);
    register_all::<B>(launch, &devices, &watch)?;
    let data = Arc::new(match data {
        Some(data) => data,
        None => prepare_data(config)?,
    });
    let first = start::<B>(config, &data, require_resume, &devices[0])?;
    if lead_node {
        write_atomic(&run_dir.join("config.toml"), config.to_toml().as_bytes())?;
    }
    let mut starts = vec![];
    for device in &devices[1..] {
        starts.push(Start {
            model: first.model.clone().fork(device),
            optim: match &first.resumed_from {
                Some(dir) => AdamWGroups::new(&config.train).load(dir, device)?,
                None => AdamWGroups::new(&config.train),
            },
            state: first.state.clone(),
            resumed_from: first.resumed_from.clone(),
        });
    }
    starts.insert(0, first);

    let (tx, rx) = mpsc::channel();
    for (local, (start, device)) in starts.into_iter().zip(devices).enumerate() {
        let rank = launch.node_rank * launch.devices + local;
        let peer = Peer::new(rank, launch.world(), local, watch.clone());
        let (config, data, tx) = (config.clone(), data.clone(), tx.clone());
        std::thread::Builder::new()
            .name(format!("rank-{rank}"))
            .spawn(move || {
                let result = catch_unwind(AssertUnwindSafe(|| {
                    check_same_model(&peer, &start.model, start.state.step, &device)?;
                    run_rank(&config, &data, start, &device, Some(&peer))
                }))
                .unwrap_or_else(|panic| Err(anyhow!("rank {rank} panicked: {panic:?}")));
                let _ = tx.send(Report::Done(rank, result));
                if let Err(e) = finish_collective::<B::InnerBackend>(peer.id()) {
                    warn!("rank {rank}: leaving the collective: {e:?}");
                }
                let _ = tx.send(Report::Finished);
            })
            .context("cannot start a rank's thread")?;
    }
    drop(tx);
    supervise(rx, launch, &watch, run_dir)
}

/// Waits for every local rank; the first error, or a collective call stuck longer than the
/// timeout, ends the run (the stuck threads end with the process).
fn supervise(
    rx: mpsc::Receiver<Report>,
    launch: &Launch,
    watch: &Watch,
    run_dir: &std::path::Path,
) -> Result<Option<Summary>> {
    let resume_hint = format!(
        "the last checkpoint in {} is intact: run the same command again to resume",
        run_dir.display()
    );
    let (mut done, mut finished, mut summary) = (0, 0, None);
    let mut finishing_since = None;
    while finished < launch.devices {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Report::Done(_, Ok(s))) => {
                done += 1;
                summary = summary.or(s);
                if done == launch.devices {
                    finishing_since = Some(Instant::now());
                }
            }
            Ok(Report::Done(rank, Err(e))) => {
                return Err(e.context(format!(
                    "rank {rank} failed, so the run stops; {resume_hint}"
                )))
            }
            Ok(Report::Finished) => finished += 1,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if finishing_since.is_some_and(|t| t.elapsed() > Duration::from_secs(10)) {
                    warn!("leaving burn-collective took over 10 s; exiting without it");
                    break;
                }
                if done < launch.devices {
                    if let Some((what, waited)) = watch.stalled(launch.timeout) {
                        bail!(
                            "every rank of this node has waited {:.0} s in {what} (--peer-timeout-s {}): \
                             a peer died or a node never joined (check --nnodes, --master-addr and that \
                             every node was started); {resume_hint}",
                            waited.as_secs_f64(),
                            launch.timeout.as_secs()
                        );
                    }
                }
            }
        }
    }
    if done < launch.devices {
        bail!("a rank's thread ended without reporting; {resume_hint}");
    }
    Ok(summary)
}

/// `n` devices of `B`'s kind: 0..n when it has that many, else shared round-robin (the CPU
/// backends have one device, which all ranks share).
fn local_devices<B: Backend>(n: usize) -> Vec<B::Device> {
    let first = B::Device::default();
    let kind = first.to_id().type_id;
    let count = B::device_count(kind).max(1);
    if n > count {
        warn!("--devices {n} but the backend has {count} device(s): ranks share them");
    }
    (0..n)
        .map(|i| B::Device::from_id(DeviceId::new(kind, (i % count) as u16)))
        .collect()
}

/// Registers every local rank with burn-collective (on several nodes this waits for all nodes
/// to join), each from its own thread since `register` returns only when all have.
fn register_all<B: TrainBackend>(
    launch: &Launch,
    devices: &[B::Device],
    watch: &Watch,
) -> Result<()> {
    let config = launch.collective_config()?;
    info!("joining: {}", launch.describe());
    let (tx, rx) = mpsc::channel();
    for (local, device) in devices.iter().enumerate() {
        let id = PeerId::from(launch.node_rank * launch.devices + local);
        let (config, device, tx, watch) =
            (config.clone(), device.clone(), tx.clone(), watch.clone());
        std::thread::spawn(move || {
            let joined = watch.waiting(local, "joining the run", || {
                register::<B::InnerBackend>(id, device, config)
            });
            let _ = tx.send(joined);
        });
    }
    let deadline = Instant::now() + launch.timeout;
    for _ in devices {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("joining the collective failed: {e:?}"),
            Err(_) => bail!(
                "not every node joined within {} s (--peer-timeout-s): {} nodes expected \
                 (--nnodes) at orchestrator {} (--master-addr); start the missing nodes or check the addresses",
                launch.timeout.as_secs(),
                launch.nodes,
                launch.master_addr.as_deref().unwrap_or("(this process)")
            ),
        }
    }
    info!("joined: all {} ranks", launch.world());
    Ok(())
}

/// Starts burn's global orchestrator on `port` (all interfaces) in this process, and makes
/// Ctrl-C and SIGTERM still end the process (the orchestrator catches them to stop itself).
fn host_orchestrator(port: u16) -> Result<()> {
    TcpListener::bind(("0.0.0.0", port)).with_context(|| {
        format!("--master-addr: cannot listen on port {port} for the orchestrator")
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the orchestrator's runtime")?;
    std::thread::Builder::new()
        .name("orchestrator".into())
        .spawn(move || {
            runtime.spawn(async {
                let _ = tokio::signal::ctrl_c().await;
                std::process::exit(130);
            });
            runtime.spawn(async {
                use tokio::signal::unix::{signal, SignalKind};
                if let Ok(mut term) = signal(SignalKind::terminate()) {
                    term.recv().await;
                    std::process::exit(143);
                }
            });
            runtime.block_on(burn_collective::start_global_orchestrator(port));
        })
        .context("cannot start the orchestrator's thread")?;
    info!("orchestrator listening on port {port}");
    Ok(())
}
