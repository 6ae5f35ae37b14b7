//! Rewriting a damaged shard of castle's own from the corpus it was prepared from, so that a
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
use tracing::warn;

use crate::config::RunConfig;
use crate::trainer::prepare_data;

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
