//! `castle-data prepare --config FILE [--set data.key=value]...`: tokenizer + token shards from
//! the `[data]` section of the trainer's TOML; `castle-data verify` checks them.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use castle_data::overrides::apply_override;
use castle_data::prepare::short_hash;
use castle_data::{open_prepared, prepare, DataConfig, Prepared};
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

/// The config file and its overrides, as castle-train takes them.
#[derive(clap::Args)]
struct ConfigArgs {
    /// TOML config; only its [data] table is read.
    #[arg(long)]
    config: PathBuf,
    /// Override a key, e.g. `--set data.shard_tokens=1000000` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Read the corpus, train or load the tokenizer, write token shards (reuses complete
    /// output, continues an interrupted run).
    Prepare(ConfigArgs),
    /// Open the prepared data read-only and check every shard's checksums.
    Verify(ConfigArgs),
}

/// Reads the `[data]` table of a TOML file after `--set` overrides (absent table = defaults).
fn load_config(args: &ConfigArgs) -> Result<DataConfig> {
    let path = &args.config;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    let mut doc: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    for o in &args.overrides {
        apply_override(&mut doc, o)?;
    }
    let data = doc
        .remove("data")
        .unwrap_or_else(|| toml::Value::Table(Default::default()));
    let cfg: DataConfig = data
        .try_into()
        .with_context(|| format!("{}: invalid [data] section", path.display()))?;
    cfg.validate()?;
    Ok(cfg)
}

fn print_report(p: &Prepared) {
    let m = &p.manifest;
    println!("prepared data in {}", p.dir.display());
    println!(
        "tokenizer: {} tokens, sha256 {}…{}",
        p.tokenizer.vocab_size(),
        short_hash(m),
        if p.timing.is_none() { " (reused)" } else { "" }
    );
    println!(
        "{:<6} {:>7} {:>10} {:>14} {:>10}",
        "split", "shards", "documents", "tokens", "MB"
    );
    for (name, s) in [("train", &m.train), ("val", &m.val)] {
        println!(
            "{name:<6} {:>7} {:>10} {:>14} {:>10.2}",
            s.shards.len(),
            s.documents,
            s.tokens,
            s.bytes as f64 / 1e6
        );
    }
    if let Some(t) = &p.timing {
        let (mb, tokens) = (
            (m.train.bytes + m.val.bytes) as f64 / 1e6,
            (m.train.tokens + m.val.tokens) as f64,
        );
        println!(
            "time: tokenizer {:.1}s, tokenize {:.1}s ({:.2} MB/s, {:.0} tokens/s; a resumed run counts all shards)",
            t.tokenizer_s,
            t.tokenize_s,
            mb / t.tokenize_s.max(1e-9),
            tokens / t.tokenize_s.max(1e-9)
        );
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Prepare(args) => print_report(&prepare(&load_config(&args)?)?),
        Command::Verify(args) => {
            let cfg = load_config(&args)?;
            let t = Instant::now();
            let p = open_prepared(&cfg)?;
            let opened = t.elapsed().as_secs_f64();
            let t = Instant::now();
            p.train.verify()?;
            p.val.verify()?;
            println!(
                "{}: opened {} + {} shards in {opened:.3}s; all {} tokens verified in {:.1}s",
                p.dir.display(),
                p.train.shards().len(),
                p.val.shards().len(),
                p.train.len() + p.val.len(),
                t.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    castle_data::cli::main_with_logging(|| run(Cli::parse()))
}
