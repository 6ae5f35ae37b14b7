//! `prepared.json`: the settings the output was made with, the tokenizer hash, and every
//! finished shard with its token count and block checksums. Rewritten atomically after each
//! shard, so it always describes complete files; `complete` says the corpus was read to the end.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::atomic::write_atomic;
use crate::config::{DataConfig, InputFormat};

/// File names inside the output folder.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const MANIFEST_FILE: &str = "prepared.json";
const MANIFEST_VERSION: u32 = 2;

/// How a shard file is laid out.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ShardKind {
    /// castle's format ([`crate::shard`]), written by `prepare` into the output folder.
    Castle,
    /// An llm.c / modded-nanogpt shard, read in place.
    Llmc,
}

/// One finished shard.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    /// Castle shards: a name inside the output folder; llm.c shards: the path found under
    /// `data.source`.
    pub file: PathBuf,
    pub kind: ShardKind,
    pub tokens: u64,
    /// Documents (0 for llm.c shards, whose documents are not counted).
    pub documents: u64,
    /// UTF-8 bytes of those documents.
    pub bytes: u64,
    /// Corpus index of the first document after this shard's last one.
    pub next_document: u64,
    /// CRC-32 of each [`crate::writer::BLOCK_TOKENS`]-token block of the payload.
    pub block_crc32: Vec<u32>,
}

/// Size and shards of one split.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct SplitStats {
    pub documents: usize,
    pub tokens: usize,
    /// UTF-8 bytes of text before tokenizing.
    pub bytes: usize,
    pub shards: Vec<ShardEntry>,
}

impl SplitStats {
    /// Appends a finished shard.
    pub fn push(&mut self, entry: ShardEntry) {
        self.documents += entry.documents as usize;
        self.tokens += entry.tokens as usize;
        self.bytes += entry.bytes as usize;
        self.shards.push(entry);
    }

    /// Keeps the first `n` shards.
    pub fn truncate(&mut self, n: usize) {
        let kept = std::mem::take(&mut self.shards);
        *self = Self::default();
        kept.into_iter().take(n).for_each(|e| self.push(e));
    }
}

/// The whole `prepared.json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u32,
    pub source: PathBuf,
    pub format: InputFormat,
    pub text_field: String,
    pub val_every: usize,
    pub val_documents: usize,
    pub shard_tokens: usize,
    pub tokenizer_sample_bytes: usize,
    /// Requested vocabulary size when the tokenizer was trained here.
    pub trained_vocab_size: Option<usize>,
    /// `data.tokenizer` when an existing tokenizer was used.
    pub tokenizer_source: Option<PathBuf>,
    /// SHA-256 (hex) of `tokenizer.json`.
    pub tokenizer_sha256: String,
    /// Whether the whole corpus is in the shards (false while `prepare` runs or after it stopped).
    pub complete: bool,
    pub train: SplitStats,
    pub val: SplitStats,
}

impl Manifest {
    /// An empty manifest for `cfg`, before any shard.
    pub fn new(cfg: &DataConfig, tokenizer_sha256: String) -> Self {
        Self {
            version: MANIFEST_VERSION,
            source: cfg.source.clone(),
            format: cfg.format,
            text_field: cfg.text_field.clone(),
            val_every: cfg.val_every,
            val_documents: cfg.val_documents,
            shard_tokens: cfg.shard_tokens,
            tokenizer_sample_bytes: cfg.tokenizer_sample_bytes,
            trained_vocab_size: cfg.tokenizer.is_none().then_some(cfg.vocab_size),
            tokenizer_source: cfg.tokenizer.clone(),
            tokenizer_sha256,
            complete: false,
            train: SplitStats::default(),
            val: SplitStats::default(),
        }
    }

    /// Whether this output was made from the same `[data]` settings as `cfg`.
    pub fn same_settings(&self, cfg: &DataConfig) -> bool {
        let expected = Self {
            complete: self.complete,
            train: self.train.clone(),
            val: self.val.clone(),
            ..Self::new(cfg, self.tokenizer_sha256.clone())
        };
        *self == expected
    }

    /// Reads `<dir>/prepared.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let text = fs::read_to_string(&path)
            .with_context(|| format!("no prepared data at {}", dir.display()))?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is unreadable or from another castle version",
                path.display()
            )
        })
    }

    /// Writes `<dir>/prepared.json` atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        write_atomic(&dir.join(MANIFEST_FILE), json.as_bytes())
    }

    /// Where a shard's file is.
    pub fn shard_path(dir: &Path, entry: &ShardEntry) -> PathBuf {
        match entry.kind {
            ShardKind::Castle => dir.join(&entry.file),
            ShardKind::Llmc => entry.file.clone(),
        }
    }
}
