//! `castle-train --config configs/small.toml`: trains, checkpoints, prints validation perplexity.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use castle_train::backend::dispatch_training;
use castle_train::distributed::{Launch, TrainDataParallel};
use castle_train::memory::memory_summary;
use castle_train::summary::{model_summary, schedule_summary};
use castle_train::trainer::Train;
use castle_train::RunConfig;
use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "Pretrain a CASTLE or baseline LM from one TOML config"
)]
struct Args {
    /// The run's TOML config.
    #[arg(long)]
    config: PathBuf,
    /// Override a config key, e.g. `--set train.lr=3e-4 --set run.dir=/tmp/r` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Print the model summary and the planned schedule, then exit.
    #[arg(long)]
    dry_run: bool,
    /// Require a checkpoint in run.dir to continue from (a run directory with checkpoints is
    /// resumed even without this flag).
    #[arg(long)]
    resume: bool,
    /// Start from the weights of a safetensors export (`castle-eval --export DIR`: the directory
    /// or its model.safetensors) instead of a random initialisation; its config.json must match
    /// [model] and the tokenizer. Fresh optimizer, step 0. Ignored when run.dir already has
    /// checkpoints (the run resumes). Same as `--set run.init_from=PATH`.
    #[arg(long, value_name = "PATH")]
    init_from: Option<PathBuf>,
    /// Data-parallel ranks in this process, one device each (CUDA devices 0..N-1; on the CPU
    /// backends N ranks share the CPU). Every step still consumes train.tokens_per_step tokens.
    #[arg(long, default_value_t = 1, value_name = "N")]
    devices: usize,
    /// Processes (nodes) in a multi-node run, each started with the same flags but its own
    /// --node-rank and --node-addr.
    #[arg(long, default_value_t = 1, value_name = "N")]
    nnodes: usize,
    /// This node's index in 0..nnodes; node 0 hosts the orchestrator and writes the outputs.
    #[arg(long, default_value_t = 0, value_name = "R")]
    node_rank: usize,
    /// HOST:PORT of node 0's orchestrator (node 0 listens on PORT).
    #[arg(long, value_name = "HOST:PORT")]
    master_addr: Option<String>,
    /// HOST:PORT at which the other nodes reach this node's tensor service (it listens on PORT).
    #[arg(long, value_name = "HOST:PORT")]
    node_addr: Option<String>,
    /// Seconds every local rank may wait in one collective call (a dead peer, a node that never
    /// joined) before the run stops with an error; must exceed a validation plus a checkpoint.
    #[arg(long, default_value_t = 600, value_name = "S")]
    peer_timeout_s: u64,
}

fn main() -> ExitCode {
    castle_data::cli::main_with_logging(|| run(Args::parse()))
}

fn run(args: Args) -> Result<()> {
    let mut config = RunConfig::load(&args.config, &args.overrides)?;
    if args.init_from.is_some() {
        config.run.init_from = args.init_from;
    }
    // Checked before the data is prepared; a run with checkpoints ignores run.init_from.
    if let Some(path) = config.run.init_from.as_ref().filter(|p| !p.exists()) {
        if castle_train::checkpoint::list(&config.run.dir)?.is_empty() {
            anyhow::bail!("run.init_from = {} does not exist: pass a `castle-eval --export` directory or its model.safetensors", path.display());
        }
    }
    if args.dry_run {
        let vocab = match &config.data.tokenizer {
            Some(path) if path.exists() => castle_data::Tok::load(path)?.vocab_size(),
            _ => config.data.vocab_size,
        };
        print!(
            "{}{}{}",
            model_summary(&config, vocab),
            schedule_summary(&config),
            memory_summary(&config, vocab)
        );
        return Ok(());
    }
    let run_dir = config.run.dir.clone();
    let summary = if args.devices == 1 && args.nnodes == 1 {
        dispatch_training(
            &config.backend.clone(),
            Train {
                config,
                require_resume: args.resume,
            },
        )?
    } else {
        let launch = Launch {
            devices: args.devices,
            nodes: args.nnodes,
            node_rank: args.node_rank,
            master_addr: args.master_addr,
            node_addr: args.node_addr,
            timeout: std::time::Duration::from_secs(args.peer_timeout_s),
        };
        let task = TrainDataParallel {
            config,
            require_resume: args.resume,
            launch,
        };
        match dispatch_training(&task.config.backend.clone(), task)? {
            Some(summary) => summary,
            None => {
                println!("node {} done; node 0 holds the outputs", args.node_rank);
                return Ok(());
            }
        }
    };
    println!(
        "validation perplexity: {:.3} (loss {:.4}) after {} steps, {} tokens, {:.0} s; best {:.3}; run dir {}",
        summary.final_val_ppl,
        summary.final_val_loss,
        summary.steps,
        summary.tokens,
        summary.wall_time_s,
        summary.best_val_ppl,
        run_dir.display()
    );
    Ok(())
}
