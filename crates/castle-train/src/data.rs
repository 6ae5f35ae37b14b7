//! A run's data: the corpus fetched and prepared into shards ([`prepare_data`]), and a damaged
//! shard of castle's own rewritten from the corpus it was prepared from, so that a
//! single-device run stopped by one can go on by itself (a data-parallel run stops: its nodes
//! would have to repair the same shared folder at once).
//!
//! A shard's content depends only on the documents before it ([`castle_data::build`]), and the
//! manifest keeps the checksum of every block as it was first written, so the repair is checked
//! to give back exactly the bytes the run was training on; a corpus that changed since is an
//! error, not a silently different run.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use castle_data::manifest::MANIFEST_FILE;
use castle_data::{DamagedShard, Prepared, ShardKind};
use tracing::{info, warn};

use crate::checkpoint;
use crate::config::RunConfig;

/// Fetches the default corpus when it is the configured source and missing, then prepares
/// (or reuses) the tokenizer and shards.
pub fn prepare_data(config: &RunConfig) -> Result<Prepared> {
    let data = &config.data;
    if data.is_default_source() && !data.source.exists() {
        info!("default corpus missing: running scripts/fetch_sotu.sh");
        let status = std::process::Command::new("bash")
            .arg("scripts/fetch_sotu.sh")
            .status()
            .context("cannot run `bash scripts/fetch_sotu.sh` (run castle-train from the repository root)")?;
        if !status.success() {
            bail!("scripts/fetch_sotu.sh failed ({status}); see its message above");
        }
    }
    // A run with checkpoints never rebuilds the data they were trained on: prepared data made
    // with other [data] settings is an error here, not overwritten (a missing or unfinished
    // folder is still prepared or finished, which loses nothing).
    let dir = data.out_dir();
    if !checkpoint::list(&config.run.dir)?.is_empty() && dir.join(MANIFEST_FILE).exists() {
        let manifest = castle_data::Manifest::load(&dir)?;
        if !manifest.same_settings(data) {
            bail!(
                "{}: this run's checkpoints were trained on data prepared with other [data] settings \
                 than the config's; resume with the same [data], or set data.dir to another folder",
                dir.join(MANIFEST_FILE).display()
            );
        }
    }
    castle_data::prepare(data)
}

/// The shard `error` reports damaged, when castle-train can rewrite it: castle's own, not
/// already rewritten in this run (`done`), and the corpus is still at `data.source`.
pub(crate) fn repairable(
    error: &anyhow::Error,
    config: &RunConfig,
    done: &[PathBuf],
) -> Option<PathBuf> {
    let damaged = error.downcast_ref::<DamagedShard>()?;
    let ours = damaged.kind == ShardKind::Castle && !done.contains(&damaged.path);
    (ours && config.data.source.exists()).then(|| damaged.path.clone())
}

/// Deletes `shard` (named damaged by `error`) and prepares the data again from the corpus;
/// errors unless every shard comes back as `data`'s manifest recorded it.
pub(crate) fn rewrite(
    error: &anyhow::Error,
    shard: &Path,
    config: &RunConfig,
    data: Prepared,
) -> Result<Prepared> {
    warn!(
        "{error:#}\nthe corpus {} is still there: castle-train rewrites {} from it and resumes \
         from the last checkpoint",
        config.data.source.display(),
        shard.display()
    );
    let recorded = data.manifest;
    std::fs::remove_file(shard)
        .with_context(|| format!("cannot delete the damaged shard {}", shard.display()))?;
    let data = prepare_data(config)?;
    if data.manifest.train != recorded.train || data.manifest.val != recorded.val {
        bail!(
            "rewriting {} from data.source {} gave other tokens than {} records: the corpus \
             changed since the data was prepared, so this run cannot go on with the same data; \
             prepare the corpus into another data.dir and start a new run",
            shard.display(),
            config.data.source.display(),
            data.dir.join(MANIFEST_FILE).display()
        );
    }
    Ok(data)
}
