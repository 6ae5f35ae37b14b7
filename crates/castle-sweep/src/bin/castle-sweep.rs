//! `castle-sweep --sweep configs/sweeps/cpu-ladder.toml`: runs (or resumes) every cell of a
//! sweep, then writes `results.md`, `results.csv`, `curves.svg` and `scaling.svg` in its dir.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use castle_sweep::{report, results, Sweep};
use castle_train::backend::dispatch_training;
use castle_train::trainer::Train;
use clap::Parser;
use tracing::info;

#[derive(Parser)]
#[command(
    version,
    about = "Run a grid of sizes x attention kinds x seeds and report"
)]
struct Args {
    /// The sweep file.
    #[arg(long)]
    sweep: PathBuf,
    /// Override a key in every cell's config (repeatable), e.g. `--set backend.kind="flex"`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Only rewrite the report from the finished cells.
    #[arg(long)]
    report_only: bool,
}

fn main() -> ExitCode {
    castle_data::cli::main_with_logging(|| run(Args::parse()))
}

fn run(args: Args) -> Result<()> {
    let sweep = Sweep::load(&args.sweep)?;
    let cells = sweep.cells(&args.overrides)?; // every cell validated before any runs
    if !args.report_only {
        for (i, cell) in cells.iter().enumerate() {
            if cell.is_finished() {
                info!(
                    "cell {}/{} {}: finished, skipped",
                    i + 1,
                    cells.len(),
                    cell.name()
                );
                continue;
            }
            info!("cell {}/{} {}", i + 1, cells.len(), cell.name());
            let train = Train {
                config: cell.config.clone(),
                require_resume: false,
            };
            let summary = dispatch_training(&cell.config.backend, train)?;
            info!("cell {}: val ppl {:.3}", cell.name(), summary.final_val_ppl);
            report::write(&sweep.dir, &results::collect(&cells)?)?;
        }
    }
    let finished = results::collect(&cells)?;
    report::write(&sweep.dir, &finished)?;
    print!("{}", report::markdown(&finished));
    println!("report: {}", sweep.dir.join("results.md").display());
    Ok(())
}
