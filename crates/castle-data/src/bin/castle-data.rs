//! `castle-data prepare --config FILE`: tokenizer + token shards from the
//! `[data]` section of the trainer's TOML.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use castle_data::{prepare, DataConfig, Prepared};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "castle-data",
    version,
    about = "Prepare tokenized data for castle"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Read the corpus, train or load the tokenizer, write token shards
    /// (reuses valid existing output).
    Prepare {
        /// TOML config; only its [data] table is read.
        #[arg(long)]
        config: PathBuf,
    },
}

/// Reads the `[data]` table of a TOML file (absent table = all defaults).
fn load_config(path: &Path) -> Result<DataConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    let mut doc: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    let data = doc
        .remove("data")
        .unwrap_or_else(|| toml::Value::Table(Default::default()));
    data.try_into()
        .with_context(|| format!("{}: invalid [data] section", path.display()))
}

fn print_report(p: &Prepared) {
    let m = &p.manifest;
    println!("prepared data in {}", p.dir.display());
    println!(
        "tokenizer: {} tokens, sha256 {}…{}",
        p.tokenizer.vocab_size(),
        castle_data::prepare::short_hash(m),
        if p.timing.is_none() { " (reused)" } else { "" }
    );
    println!(
        "{:<6} {:>10} {:>14} {:>10} {:>10}",
        "split", "documents", "tokens", "MB", "MB/s"
    );
    for (name, s) in [("train", &m.train), ("val", &m.val)] {
        let mb = s.bytes as f64 / 1e6;
        let rate = match &p.timing {
            Some(t) if t.tokenize_s > 0.0 => format!(
                "{:.2}",
                (m.train.bytes + m.val.bytes) as f64 / 1e6 / t.tokenize_s
            ),
            _ => "-".into(),
        };
        println!(
            "{name:<6} {:>10} {:>14} {mb:>10.2} {rate:>10}",
            s.documents, s.tokens
        );
    }
    if let Some(t) = &p.timing {
        println!(
            "time: read {:.1}s, tokenizer {:.1}s, tokenize {:.1}s",
            t.read_s, t.tokenizer_s, t.tokenize_s
        );
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Prepare { config } => {
            let cfg = load_config(&config)?;
            let prepared = prepare(&cfg)?;
            print_report(&prepared);
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    castle_data::cli::main_with_logging(|| run(Cli::parse()))
}
