//! `prepare`: corpus → holdout split → tokenizer → token shards, reusing
//! valid existing output.
//!
//! Output folder (`DataConfig::out_dir`):
//! `tokenizer.json`, `train.bin`, `val.bin` (see [`crate::shard`]) and
//! `prepared.json` (a [`Manifest`]). It is built in a hidden staging folder
//! beside it and renamed into place, so a failed or interrupted run leaves
//! no folder that looks complete.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::atomic::write_atomic;
use crate::config::{DataConfig, InputFormat};
use crate::corpus::read_documents;
use crate::shard::{write_shard, Shard};
use crate::tokenizer::Tok;

/// File names inside the output folder.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const TRAIN_FILE: &str = "train.bin";
pub const VAL_FILE: &str = "val.bin";
pub const MANIFEST_FILE: &str = "prepared.json";
const MANIFEST_VERSION: u32 = 1;

/// Size of one split.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct SplitStats {
    pub documents: usize,
    pub tokens: usize,
    /// UTF-8 bytes of text before tokenizing.
    pub bytes: usize,
}

/// `prepared.json`: what the output was made from, checked before reuse.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u32,
    pub source: PathBuf,
    pub format: InputFormat,
    pub text_field: String,
    pub val_every: usize,
    /// Requested vocabulary size when the tokenizer was trained here.
    pub trained_vocab_size: Option<usize>,
    /// `data.tokenizer` when an existing tokenizer was used.
    pub tokenizer_source: Option<PathBuf>,
    /// SHA-256 (hex) of `tokenizer.json`.
    pub tokenizer_sha256: String,
    pub train: SplitStats,
    pub val: SplitStats,
}

/// Wall-clock seconds of a fresh build.
#[derive(Clone, Debug, Default)]
pub struct Timing {
    pub read_s: f64,
    pub tokenizer_s: f64,
    pub tokenize_s: f64,
}

/// An opened, verified output folder.
#[derive(Debug)]
pub struct Prepared {
    pub dir: PathBuf,
    pub tokenizer: Tok,
    pub train: Shard,
    pub val: Shard,
    pub manifest: Manifest,
    /// `Some` when this call built the output, `None` when it was reused.
    pub timing: Option<Timing>,
}

/// Returns the prepared data for `cfg`, building it when missing, stale or
/// corrupt. Never downloads anything.
pub fn prepare(cfg: &DataConfig) -> Result<Prepared> {
    cfg.validate()?;
    match open_prepared(cfg) {
        Ok(prepared) => {
            tracing::info!(dir = %prepared.dir.display(), "reusing prepared data");
            Ok(prepared)
        }
        Err(why) => {
            tracing::info!("preparing data: {why:#}");
            build(cfg)
        }
    }
}

/// Opens existing output for `cfg`; errors unless it exists, matches the
/// config and passes every check (tokenizer hash, shard checksums).
pub fn open_prepared(cfg: &DataConfig) -> Result<Prepared> {
    let dir = cfg.out_dir();
    let manifest_path = dir.join(MANIFEST_FILE);
    let text = fs::read_to_string(&manifest_path)
        .with_context(|| format!("no prepared data at {}", dir.display()))?;
    let manifest: Manifest = serde_json::from_str(&text)
        .with_context(|| format!("{} is unreadable", manifest_path.display()))?;
    let expected = Manifest {
        train: manifest.train.clone(),
        val: manifest.val.clone(),
        tokenizer_sha256: manifest.tokenizer_sha256.clone(),
        ..manifest_for(cfg)
    };
    if manifest != expected {
        bail!(
            "{} was prepared with different [data] settings",
            dir.display()
        );
    }
    let tokenizer = Tok::load(dir.join(TOKENIZER_FILE))?;
    if tokenizer.hash_hex() != manifest.tokenizer_sha256 {
        bail!(
            "{} does not match {}",
            dir.join(TOKENIZER_FILE).display(),
            manifest_path.display()
        );
    }
    if let Some(source) = &cfg.tokenizer {
        if Tok::load(source)?.hash() != tokenizer.hash() {
            bail!(
                "data.tokenizer {} changed since {} was prepared",
                source.display(),
                dir.display()
            );
        }
    }
    let train = Shard::open(dir.join(TRAIN_FILE))?;
    let val = Shard::open(dir.join(VAL_FILE))?;
    for (shard, stats) in [(&train, &manifest.train), (&val, &manifest.val)] {
        shard.check_tokenizer(&tokenizer.hash())?;
        if shard.len() != stats.tokens {
            bail!(
                "{} has {} tokens, {} says {}",
                shard.path().display(),
                shard.len(),
                MANIFEST_FILE,
                stats.tokens
            );
        }
    }
    Ok(Prepared {
        dir,
        tokenizer,
        train,
        val,
        manifest,
        timing: None,
    })
}

/// The manifest fields that come from the config.
fn manifest_for(cfg: &DataConfig) -> Manifest {
    Manifest {
        version: MANIFEST_VERSION,
        source: cfg.source.clone(),
        format: cfg.format,
        text_field: cfg.text_field.clone(),
        val_every: cfg.val_every,
        trained_vocab_size: cfg.tokenizer.is_none().then_some(cfg.vocab_size),
        tokenizer_source: cfg.tokenizer.clone(),
        tokenizer_sha256: String::new(),
        train: SplitStats::default(),
        val: SplitStats::default(),
    }
}

/// Splits documents by the holdout rule: index `i` is validation when
/// `i % val_every == val_every - 1`.
pub fn split_documents(docs: Vec<String>, val_every: usize) -> (Vec<String>, Vec<String>) {
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, doc) in docs.into_iter().enumerate() {
        if i % val_every == val_every - 1 {
            &mut val
        } else {
            &mut train
        }
        .push(doc);
    }
    (train, val)
}

fn build(cfg: &DataConfig) -> Result<Prepared> {
    let dir = cfg.out_dir();
    check_replaceable(&dir)?;
    if !cfg.source.exists() {
        if cfg.is_default_source() {
            bail!(
                "data.source = {} does not exist: run `scripts/fetch_sotu.sh` to download the default \
                 corpus (State of the Union addresses), or set data.source to your own files",
                cfg.source.display()
            );
        }
        bail!(
            "data.source = {} does not exist: set data.source to a file or folder of documents",
            cfg.source.display()
        );
    }

    let t = Instant::now();
    let docs = read_documents(&cfg.source, cfg.format, &cfg.text_field)?;
    let total = docs.len();
    let (train_docs, val_docs) = split_documents(docs, cfg.val_every);
    if val_docs.is_empty() {
        bail!(
            "{} has only {total} document(s), so data.val_every = {} holds out none for validation; \
             add documents or lower data.val_every (minimum 2)",
            cfg.source.display(),
            cfg.val_every
        );
    }
    let read_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let tokenizer = match &cfg.tokenizer {
        Some(path) => {
            Tok::load(path).with_context(|| format!("data.tokenizer = {}", path.display()))?
        }
        None => {
            tracing::info!(
                documents = train_docs.len(),
                vocab_size = cfg.vocab_size,
                "training byte-level BPE"
            );
            Tok::train(&train_docs, cfg.vocab_size)?
        }
    };
    let tokenizer_s = t.elapsed().as_secs_f64();
    tracing::info!(
        seconds = tokenizer_s,
        vocab_size = tokenizer.vocab_size(),
        "tokenizer ready"
    );

    let t = Instant::now();
    let bytes = |d: &[String]| d.iter().map(String::len).sum::<usize>();
    let bar = progress_bar((bytes(&train_docs) + bytes(&val_docs)) as u64);
    let train_tokens = tokenize(&tokenizer, &train_docs, &bar)?;
    let val_tokens = tokenize(&tokenizer, &val_docs, &bar)?;
    bar.finish_and_clear();
    let tokenize_s = t.elapsed().as_secs_f64();

    let manifest = Manifest {
        tokenizer_sha256: tokenizer.hash_hex(),
        train: SplitStats {
            documents: train_docs.len(),
            tokens: train_tokens.len(),
            bytes: bytes(&train_docs),
        },
        val: SplitStats {
            documents: val_docs.len(),
            tokens: val_tokens.len(),
            bytes: bytes(&val_docs),
        },
        ..manifest_for(cfg)
    };
    write_output(&dir, &tokenizer, &train_tokens, &val_tokens, &manifest)?;
    let mut prepared = open_prepared(cfg).context("the output just written does not verify")?;
    prepared.timing = Some(Timing {
        read_s,
        tokenizer_s,
        tokenize_s,
    });
    Ok(prepared)
}

/// Refuses to replace a folder that is not (only) castle-data output.
fn check_replaceable(dir: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    const OURS: [&str; 4] = [TOKENIZER_FILE, TRAIN_FILE, VAL_FILE, MANIFEST_FILE];
    for entry in entries {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if !OURS.contains(&name.as_ref()) && !name.ends_with(".tmp") {
            bail!(
                "data.dir {} holds {name}, which castle-data did not write; choose another data.dir \
                 or empty that folder",
                dir.display()
            );
        }
    }
    Ok(())
}

fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("tokenizing {bar:40} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}")
            .expect("valid template"),
    );
    bar
}

/// Encodes `docs` in parallel batches, appending `<|endoftext|>` after each document.
fn tokenize(tok: &Tok, docs: &[String], bar: &ProgressBar) -> Result<Vec<u32>> {
    const BATCH_BYTES: usize = 4 << 20;
    let mut tokens = Vec::new();
    let mut start = 0;
    while start < docs.len() {
        let mut end = start;
        let mut size = 0;
        while end < docs.len() && (end == start || size < BATCH_BYTES) {
            size += docs[end].len();
            end += 1;
        }
        let batch: Vec<&str> = docs[start..end].iter().map(String::as_str).collect();
        for ids in tok.encode_batch(&batch)? {
            tokens.extend(ids);
            tokens.push(tok.eot_id());
        }
        bar.inc(size as u64);
        start = end;
    }
    Ok(tokens)
}

/// Writes everything into a staging folder, then swaps it into `dir`.
fn write_output(
    dir: &Path,
    tok: &Tok,
    train: &[u32],
    val: &[u32],
    manifest: &Manifest,
) -> Result<()> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    let result = (|| {
        fs::create_dir(&staging).with_context(|| format!("cannot create {}", staging.display()))?;
        tok.save(staging.join(TOKENIZER_FILE))?;
        write_shard(staging.join(TRAIN_FILE), train, &tok.hash())?;
        write_shard(staging.join(VAL_FILE), val, &tok.hash())?;
        let json = serde_json::to_string_pretty(manifest)?;
        write_atomic(&staging.join(MANIFEST_FILE), json.as_bytes())?;
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("cannot replace {}", dir.display()))?;
        }
        fs::rename(&staging, dir)
            .with_context(|| format!("cannot rename {} to {}", staging.display(), dir.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result
}

/// The first 12 hex digits of the manifest's tokenizer hash, for display.
pub fn short_hash(m: &Manifest) -> &str {
    &m.tokenizer_sha256[..m.tokenizer_sha256.len().min(12)]
}
