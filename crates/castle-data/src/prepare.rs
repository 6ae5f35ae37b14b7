//! `prepare` (build or resume, then open) and `open_prepared` (read-only, cheap).
//!
//! Output folder (`DataConfig::out_dir`): `tokenizer.json`, numbered shards
//! `train-000000.bin`, … and `val-000000.bin`, … (see [`crate::shard`]), and
//! `prepared.json` (a [`Manifest`]). Shards are written under temp names and renamed, and the
//! manifest is rewritten atomically after each one, so an interrupted `prepare` resumes from its
//! last finished shard ([`crate::build`]).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};

use crate::build::{build, Timing};
use crate::config::DataConfig;
use crate::dataset::ShardSet;
use crate::manifest::{Manifest, ShardKind, SplitStats, MANIFEST_FILE, TOKENIZER_FILE};
use crate::shard::Shard;
use crate::tokenizer::Tok;

/// An opened prepared folder: its tokenizer and both splits, memory-mapped.
#[derive(Debug)]
pub struct Prepared {
    pub dir: PathBuf,
    pub tokenizer: Tok,
    pub train: ShardSet,
    pub val: ShardSet,
    pub manifest: Manifest,
    /// `Some` when this call built (or finished) the output, `None` when it was reused.
    pub timing: Option<Timing>,
}

/// Returns the prepared data for `cfg`, building it when missing or stale, and finishing it
/// when an earlier run stopped part-way. Never downloads anything.
pub fn prepare(cfg: &DataConfig) -> Result<Prepared> {
    cfg.validate()?;
    match open_prepared(cfg) {
        Ok(prepared) => {
            tracing::info!(dir = %prepared.dir.display(), "reusing prepared data");
            Ok(prepared)
        }
        Err(why) => {
            tracing::info!("preparing data: {why:#}");
            let started = Instant::now();
            let mut timing = build(cfg)?;
            let mut prepared =
                open_prepared(cfg).context("the output just written does not open")?;
            timing.tokenize_s = started.elapsed().as_secs_f64() - timing.tokenizer_s;
            prepared.timing = Some(timing);
            Ok(prepared)
        }
    }
}

/// Opens complete output for `cfg` without writing anything: checks the manifest against the
/// config, the tokenizer against its hash, and each shard's header and size (no payload is
/// read: blocks are checked when first read, or all at once by [`ShardSet::verify`]).
pub fn open_prepared(cfg: &DataConfig) -> Result<Prepared> {
    let dir = cfg.out_dir();
    let fix =
        "run `castle-data prepare --config <your config>` (or castle-train, which prepares it)";
    let manifest = Manifest::load(&dir).map_err(|e| anyhow!("{e:#}; {fix}"))?;
    if !manifest.same_settings(cfg) {
        bail!(
            "{} was prepared with different [data] settings than the config's; {fix}, or set data.dir \
             to another folder",
            dir.join(MANIFEST_FILE).display()
        );
    }
    if !manifest.complete {
        bail!(
            "{} is incomplete (preparation stopped part-way); {fix} to finish it",
            dir.display()
        );
    }
    let tokenizer = Tok::load(dir.join(TOKENIZER_FILE))?;
    if tokenizer.hash_hex() != manifest.tokenizer_sha256 {
        bail!(
            "{} does not match {} (tokenizer sha256 {}, manifest says {}); {fix}",
            dir.join(TOKENIZER_FILE).display(),
            dir.join(MANIFEST_FILE).display(),
            tokenizer.hash_hex(),
            manifest.tokenizer_sha256
        );
    }
    if let Some(source) = &cfg.tokenizer {
        if Tok::load(source)?.hash() != tokenizer.hash() {
            bail!(
                "data.tokenizer {} changed since {} was prepared; {fix}",
                source.display(),
                dir.display()
            );
        }
    }
    let train = open_split(&dir, &manifest.train, &tokenizer)?;
    let val = open_split(&dir, &manifest.val, &tokenizer)?;
    Ok(Prepared {
        dir,
        tokenizer,
        train,
        val,
        manifest,
        timing: None,
    })
}

/// Maps every shard of a split, checking headers, sizes and the tokenizer they record.
fn open_split(dir: &std::path::Path, split: &SplitStats, tok: &Tok) -> Result<ShardSet> {
    let shards = split
        .shards
        .iter()
        .map(|entry| {
            let shard = Shard::open_entry(dir, entry)?;
            if entry.kind == ShardKind::Castle {
                shard.check_tokenizer(&tok.hash())?;
            }
            Ok((shard, entry.block_crc32.clone()))
        })
        .collect::<Result<Vec<_>>>()?;
    ShardSet::new(shards)
}

/// The first 12 hex digits of the manifest's tokenizer hash, for display.
pub fn short_hash(m: &Manifest) -> &str {
    &m.tokenizer_sha256[..m.tokenizer_sha256.len().min(12)]
}
