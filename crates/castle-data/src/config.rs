//! The `[data]` section of the trainer's TOML file.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::tokenizer::MIN_VOCAB_SIZE;

/// Where the default corpus lives once `scripts/fetch_sotu.sh` has run.
pub const DEFAULT_SOURCE: &str = "data/sotu";

/// How documents are read from `data.source`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    /// Chosen per file by extension: `.txt`/`.text`/`.md` → text,
    /// `.jsonl`/`.ndjson` (optionally `.gz`) → jsonl, `.parquet` → parquet.
    #[default]
    Auto,
    /// A UTF-8 file is one document (split further at literal `<|endoftext|>`).
    Text,
    /// One JSON object per line; the document is its `data.text_field` string.
    /// Gzip-compressed when the file name ends in `.gz`.
    Jsonl,
    /// A Parquet file; every row's `data.text_field` column is a document.
    Parquet,
    /// Pre-tokenized llm.c / modded-nanogpt shards (`.bin`: 256 little-endian int32 header with
    /// magic 20240520, version 1, token count; then u16 ids), read in place. Needs
    /// `data.tokenizer`; files whose name contains `val` are the validation split.
    Llmc,
}

/// The `[data]` table. Every key is optional; unknown keys are rejected.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// A file or a folder (walked recursively, hidden entries skipped).
    pub source: PathBuf,
    /// Input format; `auto` picks by file extension.
    pub format: InputFormat,
    /// JSON Lines field or Parquet column holding the text.
    pub text_field: String,
    /// Output folder for `tokenizer.json`, the shards and `prepared.json`.
    /// Default: `data/prepared/<source name>-<vocab_size>` (or
    /// `<source name>-pretrained` when `tokenizer` is set).
    pub dir: Option<PathBuf>,
    /// Vocabulary size of the byte-level BPE trained on the training split.
    pub vocab_size: usize,
    /// Use this existing `tokenizer.json` instead of training one.
    pub tokenizer: Option<PathBuf>,
    /// Holdout rule: after sorting files by path, document `i` (counting from 0
    /// across all files, in file order) goes to validation when
    /// `i % val_every == val_every - 1`, until `val_documents` are held out. Whole documents only.
    pub val_every: usize,
    /// Most documents held out for validation (bounds the split at any corpus size).
    pub val_documents: usize,
    /// A shard is closed after the first document that brings it to this many tokens.
    pub shard_tokens: usize,
    /// The BPE is trained on a seeded sample of at most this many bytes of training documents
    /// (all of them when the training split is smaller).
    pub tokenizer_sample_bytes: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            source: PathBuf::from(DEFAULT_SOURCE),
            format: InputFormat::Auto,
            text_field: "text".into(),
            dir: None,
            vocab_size: 4096,
            tokenizer: None,
            val_every: 10,
            val_documents: 10_000,
            shard_tokens: 100_000_000,
            tokenizer_sample_bytes: 100_000_000,
        }
    }
}

impl DataConfig {
    /// Checks every key; errors name the key and the fix.
    pub fn validate(&self) -> Result<()> {
        if self.source.as_os_str().is_empty() {
            bail!("data.source is empty: set it to a file or folder of documents");
        }
        if self.text_field.is_empty() {
            bail!("data.text_field is empty: set it to the JSON field / Parquet column holding the text (usually \"text\")");
        }
        if self.tokenizer.is_none() && self.vocab_size < MIN_VOCAB_SIZE {
            bail!(
                "data.vocab_size = {} is too small: a byte-level BPE needs at least {MIN_VOCAB_SIZE} \
                 (256 byte tokens + <|endoftext|>); use e.g. 4096",
                self.vocab_size
            );
        }
        if self.tokenizer.is_none() && self.vocab_size > u32::MAX as usize {
            bail!(
                "data.vocab_size = {} does not fit in u32 token ids",
                self.vocab_size
            );
        }
        if self.val_every < 2 {
            bail!(
                "data.val_every = {} must be at least 2 (every val_every-th document is held out for validation)",
                self.val_every
            );
        }
        for (key, value) in [
            ("val_documents", self.val_documents),
            ("shard_tokens", self.shard_tokens),
            ("tokenizer_sample_bytes", self.tokenizer_sample_bytes),
        ] {
            if value == 0 {
                bail!("data.{key} = 0 must be at least 1");
            }
        }
        if self.format == InputFormat::Llmc && self.tokenizer.is_none() {
            bail!(
                "data.format = \"llmc\" reads pre-tokenized shards: set data.tokenizer to the \
                 tokenizer.json that made them (GPT-2's for llm.c / modded-nanogpt FineWeb shards)"
            );
        }
        Ok(())
    }

    /// The output folder: `data.dir`, or the documented default.
    pub fn out_dir(&self) -> PathBuf {
        if let Some(dir) = &self.dir {
            return dir.clone();
        }
        let name = self
            .source
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "corpus".into());
        let suffix = match self.tokenizer {
            Some(_) => "pretrained".to_string(),
            None => self.vocab_size.to_string(),
        };
        Path::new("data/prepared").join(format!("{name}-{suffix}"))
    }

    /// Whether `source` is the default corpus (used to suggest the fetch script).
    pub fn is_default_source(&self) -> bool {
        self.source == Path::new(DEFAULT_SOURCE)
    }
}
