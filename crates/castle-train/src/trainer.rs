//! The training loop: data, model, AdamW, schedule, validation, checkpoints, resume.
//!
//! Written on burn's optimizer API rather than burn-train's `Learner`, whose checkpointing does
//! not carry the sampler position (needed for an exact resume) and whose metrics do not write
//! `metrics.jsonl` as specified. Each step is [`crate::step::train_step`]; the same loop
//! ([`run_rank`]) runs on one device or as one rank of a data-parallel run
//! ([`crate::distributed`]).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::module::{AutodiffModule, Module};
use castle_data::{validation_windows, BatchSampler, Prepared};
use castle_model::CastleLm;
use castle_model::TrainBackend;
use indicatif::{ProgressBar, ProgressStyle};
use tracing::{info, warn};

use crate::backend::OnBackend;
use crate::checkpoint::{self, write_atomic, TrainState, FORMAT_VERSION};
use crate::collective::Peer;
use crate::config::RunConfig;
use crate::data::{prepare_data, repairable, rewrite};
use crate::metrics::{metrics_path, summary_path, MetricsLog, StepMetrics, Summary};
use crate::optim::AdamWGroups;
use crate::schedule::learning_rate;
use crate::step::{train_step, TimeTotals};
use crate::validation::mean_loss;

/// Trains `config` on its backend (see [`crate::backend::dispatch`]).
pub struct Train {
    pub config: RunConfig,
    /// Fail unless there is a checkpoint to resume from.
    pub require_resume: bool,
}

impl OnBackend for Train {
    type Output = Summary;
    fn run<B: TrainBackend>(self, device: B::Device) -> Result<Summary> {
        train::<B>(&self.config, self.require_resume, &device)
    }
}

pub fn train<B: TrainBackend>(
    config: &RunConfig,
    require_resume: bool,
    device: &B::Device,
) -> Result<Summary> {
    let run_dir = &config.run.dir;
    std::fs::create_dir_all(run_dir)
        .with_context(|| format!("cannot create run.dir {}", run_dir.display()))?;
    let mut data = prepare_data(config)?;
    let mut rewritten = vec![];
    loop {
        let run = start::<B>(config, &data, require_resume, device).and_then(|start| {
            write_atomic(&run_dir.join("config.toml"), config.to_toml().as_bytes())?;
            run_rank(config, &data, start, device, None)
        });
        match run {
            // Without a peer this is rank 0, which always summarizes.
            Ok(summary) => return summary.context("the run ended without a summary"),
            // A damaged shard of our own, with its corpus at hand: rewritten, then resumed.
            Err(e) => match repairable(&e, config, &rewritten) {
                Some(shard) => {
                    // `data` maps the damaged file; `rewrite` replaces it.
                    data = rewrite(&e, &shard, config, data)?;
                    rewritten.push(shard);
                }
                None => return Err(e),
            },
        }
    }
}

/// Where a run starts: a fresh model, or the newest checkpoint that loads.
pub struct Start<B: TrainBackend> {
    pub model: CastleLm<B>,
    pub optim: AdamWGroups<B>,
    pub state: TrainState,
    /// The checkpoint resumed from, if any.
    pub resumed_from: Option<PathBuf>,
}

/// The model, optimizer and state a run starts from on `device`.
pub fn start<B: TrainBackend>(
    config: &RunConfig,
    data: &Prepared,
    require_resume: bool,
    device: &B::Device,
) -> Result<Start<B>> {
    let seq_len = config.train.seq_len;
    if validation_windows(&data.val, seq_len, config.eval.tokens)?.is_empty() {
        bail!(
            "the validation split {} has {} tokens, fewer than one window of train.seq_len + 1 = {}",
            data.val.path().display(),
            data.val.len(),
            seq_len + 1
        );
    }
    B::seed(device, config.run.seed);
    let model = crate::init::initial_model::<B>(
        config,
        vocab_size(data),
        &data.tokenizer.hash_hex(),
        device,
    )?;
    let sampler = BatchSampler::new(data.train.len(), seq_len, config.run.seed)?;
    let state = TrainState {
        format_version: FORMAT_VERSION,
        step: 0,
        tokens: 0,
        sampler: sampler.state(),
        val_loss: None,
        best_val_loss: None,
        tokenizer_sha256: data.tokenizer.hash_hex(),
        parameters: model.num_params(),
        elapsed_s: 0.0,
    };
    match resume::<B>(config, data, device)? {
        Some((model, optim, state, dir)) => Ok(Start {
            model,
            optim,
            state,
            resumed_from: Some(dir),
        }),
        None if require_resume => bail!(
            "--resume: {} holds no checkpoint to resume from",
            checkpoint::checkpoints_dir(&config.run.dir).display()
        ),
        None => Ok(Start {
            model,
            optim: AdamWGroups::<B>::new(&config.train),
            state,
            resumed_from: None,
        }),
    }
}

fn vocab_size(data: &Prepared) -> usize {
    data.tokenizer.vocab_size()
}

/// The step loop of one rank from `start` to `train.steps`. Without `peer` the run is a
/// single-device one; with it, this rank trains on its part of every global batch and the step
/// all-reduces. Rank 0 alone validates (a full pass on its device), logs, checkpoints and
/// summarizes; it returns the summary, other ranks `None`.
pub(crate) fn run_rank<B: TrainBackend>(
    config: &RunConfig,
    data: &Prepared,
    start: Start<B>,
    device: &B::Device,
    peer: Option<&Peer>,
) -> Result<Option<Summary>> {
    let Start {
        mut model,
        mut optim,
        mut state,
        ..
    } = start;
    model.compute_dtype = config.backend.dtype.compute_dtype();
    let (rank, world) = peer.map_or((0, 1), |p| (p.rank, p.world));
    let lead = rank == 0;
    let run_dir = &config.run.dir;
    let (seq_len, batch) = (config.train.seq_len, config.train.batch_size);
    let val_windows = validation_windows(&data.val, seq_len, config.eval.tokens)?;
    let mut sampler = BatchSampler::from_state(data.train.len(), seq_len, state.sampler.clone())?;
    let mut metrics = match lead {
        true => Some(MetricsLog::open(&metrics_path(run_dir), state.step)?),
        false => None,
    };

    let steps = config.train.steps;
    let accumulation = config.accumulation();
    let tokens_per_step = config.tokens_per_step() as u64;
    let progress = match lead {
        true => progress_bar(steps, state.step),
        false => ProgressBar::hidden(),
    };
    let started = Instant::now() - std::time::Duration::from_secs_f64(state.elapsed_s);
    let (mut window_start, mut window_tokens) = (Instant::now(), 0u64);
    let mut last_val = state.val_loss;
    let mut times = TimeTotals::default();

    for step in state.step + 1..=steps {
        let lr = learning_rate(&config.train, step);
        let micro_batches = (0..accumulation)
            .map(|_| sampler.next_batch_part(&data.train, batch, rank, world))
            .collect::<Result<Vec<_>>>();
        let micro_batches = match micro_batches {
            Ok(batches) => batches,
            Err(e) => {
                progress.abandon();
                return Err(e.context(format!(
                    "step {step}: the training data cannot be read, so the run stops; the last \
                     checkpoint ({}) is intact: repair the data, then run the same command again \
                     to resume",
                    checkpoint::last_named(run_dir)?
                )));
            }
        };
        let out;
        (model, out) = train_step(
            model,
            &mut optim,
            &micro_batches,
            batch / world,
            lr,
            peer,
            device,
        )?;
        let (train_loss, grad_norm) = (out.loss, out.grad_norm);
        times.add(&out.times);
        if !train_loss.is_finite() || !grad_norm.is_finite() {
            progress.abandon();
            bail!(
                "train_loss = {train_loss}, grad_norm = {grad_norm} at step {step}: training diverged. \
                 Last good checkpoint: {}. Lower train.lr or raise train.warmup_steps and resume.",
                checkpoint::last_named(run_dir)?
            );
        }
        state.step = step;
        state.tokens += tokens_per_step;
        state.sampler = sampler.state();
        window_tokens += tokens_per_step;
        let Some(metrics) = metrics.as_mut() else {
            continue; // ranks other than 0 only train
        };

        let is_last = step == steps;
        state.val_loss = None;
        if step % config.eval.every == 0 || is_last {
            let val_loss = mean_loss(&model.valid(), &val_windows, batch, device);
            state.val_loss = Some(val_loss);
            state.best_val_loss = Some(state.best_val_loss.map_or(val_loss, |b| b.min(val_loss)));
            last_val = Some(val_loss);
        }
        if step % config.train.log_every == 0 || state.val_loss.is_some() {
            let tokens_per_s = window_tokens as f64 / window_start.elapsed().as_secs_f64();
            let m = StepMetrics {
                step,
                tokens: state.tokens,
                train_loss,
                lr,
                grad_norm,
                tokens_per_s,
                val_loss: state.val_loss,
                val_ppl: state.val_loss.map(f64::exp),
            };
            metrics.append(&m)?;
            let val = last_val.map_or(String::new(), |v| format!(" | val ppl {:.2}", v.exp()));
            progress.set_message(format!(
                "loss {train_loss:.4} | {tokens_per_s:.0} tok/s{val}"
            ));
            if progress.is_hidden() {
                let val = state.val_loss.map_or(String::new(), |v| {
                    format!(" | val loss {v:.4} ppl {:.2}", v.exp())
                });
                info!(
                    "step {step}/{steps} | loss {train_loss:.4} | lr {lr:.2e} | grad norm {grad_norm:.3} | {tokens_per_s:.0} tok/s{val}"
                );
            }
            (window_start, window_tokens) = (Instant::now(), 0);
        }
        progress.set_position(step as u64);
        if step % config.checkpoint.every == 0 || is_last {
            state.elapsed_s = started.elapsed().as_secs_f64();
            checkpoint::save(
                run_dir,
                &model,
                |dir| optim.save(dir),
                &state,
                config,
                &data.tokenizer,
            )?;
            checkpoint::prune(run_dir, config.checkpoint.keep_last)?;
        }
    }
    progress.finish_and_clear();
    if let Some(peer) = peer {
        crate::collective::check_same_model(peer, &model, state.step, device)?;
    }
    if !lead {
        return Ok(None);
    }
    info!("{}", times.report());
    let summary = summarize(
        config,
        &model,
        &state,
        started.elapsed().as_secs_f64(),
        data,
        device,
    )?;
    write_atomic(
        &summary_path(run_dir),
        &serde_json::to_vec_pretty(&summary)?,
    )?;
    Ok(Some(summary))
}

/// The newest checkpoint that loads, falling back to older ones with a warning.
#[allow(clippy::type_complexity)]
fn resume<B: TrainBackend>(
    config: &RunConfig,
    data: &Prepared,
    device: &B::Device,
) -> Result<Option<(CastleLm<B>, AdamWGroups<B>, TrainState, PathBuf)>> {
    let candidates = checkpoint::list(&config.run.dir)?;
    if candidates.is_empty() {
        return Ok(None);
    }
    for dir in candidates.iter().rev() {
        match load_for_resume::<B>(dir, config, data, device) {
            Ok((model, optim, state)) => {
                info!("resuming from {} (step {})", dir.display(), state.step);
                return Ok(Some((model, optim, state, dir.clone())));
            }
            Err(e) => warn!("{e:#}; falling back to the previous checkpoint"),
        }
    }
    bail!(
        "none of the {} checkpoints in {} loads (see the warnings above); move them away to start afresh",
        candidates.len(),
        checkpoint::checkpoints_dir(&config.run.dir).display()
    )
}

#[allow(clippy::type_complexity)]
fn load_for_resume<B: TrainBackend>(
    dir: &Path,
    config: &RunConfig,
    data: &Prepared,
    device: &B::Device,
) -> Result<(CastleLm<B>, AdamWGroups<B>, TrainState)> {
    let ckpt = checkpoint::read(dir)?;
    let saved = &ckpt.config;
    if let Some((key, was, now)) = config.resume_mismatch(saved) {
        bail!("{}: {key} was {was} when this run started, the config now says {now}; resume with the same value or pick a new run.dir", dir.display());
    }
    if ckpt.state.tokenizer_sha256 != data.tokenizer.hash_hex() {
        bail!(
            "{}: trained with tokenizer sha256 {}, but the prepared data in {} uses {}",
            dir.display(),
            ckpt.state.tokenizer_sha256,
            data.dir.display(),
            data.tokenizer.hash_hex()
        );
    }
    let model = ckpt.load_model::<B>(data.tokenizer.vocab_size(), device)?;
    let optim = AdamWGroups::new(&config.train).load(dir, device)?;
    Ok((model, optim, ckpt.state))
}

fn summarize<B: TrainBackend>(
    config: &RunConfig,
    model: &CastleLm<B>,
    state: &TrainState,
    wall_time_s: f64,
    data: &Prepared,
    device: &B::Device,
) -> Result<Summary> {
    let params = config.model.param_summary(data.tokenizer.vocab_size());
    let final_val_loss = match state.val_loss {
        Some(v) => v,
        None => {
            let windows = validation_windows(&data.val, config.train.seq_len, config.eval.tokens)?;
            mean_loss(&model.valid(), &windows, config.train.batch_size, device)
        }
    };
    let best_val_loss = state
        .best_val_loss
        .unwrap_or(final_val_loss)
        .min(final_val_loss);
    Ok(Summary {
        attention: config.model.attention.to_string(),
        parameters: params.total,
        non_embedding_parameters: params.non_embedding(),
        steps: state.step,
        tokens: state.tokens,
        wall_time_s,
        final_val_loss,
        final_val_ppl: final_val_loss.exp(),
        best_val_loss,
        best_val_ppl: best_val_loss.exp(),
    })
}

fn progress_bar(steps: usize, start: usize) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(steps as u64).with_position(start as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} step {pos}/{len} [{elapsed_precise}] {bar:30.cyan/blue} {msg} | ETA {eta}",
        )
        // A constant template, which parses.
        .expect("valid template"),
    );
    bar.reset_eta();
    bar
}
