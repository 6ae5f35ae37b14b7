//! `castle-train --config configs/small.toml`: trains, checkpoints, prints validation perplexity.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use castle_train::backend::dispatch;
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
}

fn main() -> ExitCode {
    castle_data::cli::main_with_logging(|| run(Args::parse()))
}

fn run(args: Args) -> Result<()> {
    let config = RunConfig::load(&args.config, &args.overrides)?;
    if args.dry_run {
        let vocab = match &config.data.tokenizer {
            Some(path) if path.exists() => castle_data::Tok::load(path)?.vocab_size(),
            _ => config.data.vocab_size,
        };
        print!(
            "{}{}",
            model_summary(&config, vocab),
            schedule_summary(&config)
        );
        return Ok(());
    }
    let run_dir = config.run.dir.clone();
    let summary = dispatch(
        config.backend.kind,
        Train {
            config,
            require_resume: args.resume,
        },
    )?;
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
