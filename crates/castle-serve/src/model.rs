//! What castle-serve serves: a training checkpoint (a run directory, or one of its checkpoints,
//! as `castle-eval --ckpt`) or a safetensors export directory (`castle-eval --export`), with its
//! tokenizer, loaded on a backend.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use castle_data::Tok;
use castle_eval::load::{resolve, Loaded};
use castle_model::safetensors::{self, CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE};
use castle_model::{AttentionKind, CastleLm, KernelBackend};
use castle_train::checkpoint::Checkpoint;
use castle_train::config::BackendKind;

/// Where the weights come from, before loading.
pub enum Source {
    Checkpoint(Box<Checkpoint>),
    Export(PathBuf),
}

impl Source {
    /// `path` as an export directory (it holds `config.json` and `model.safetensors`) or as
    /// `castle-eval --ckpt` reads it (`best`: the checkpoint with the lowest validation loss).
    pub fn find(path: &Path, best: bool) -> Result<Self> {
        if path.join(CONFIG_FILE).is_file() && path.join(WEIGHTS_FILE).is_file() {
            if best {
                tracing::warn!("--best ignored: {} is an export", path.display());
            }
            return Ok(Self::Export(path.to_path_buf()));
        }
        Ok(Self::Checkpoint(Box::new(
            resolve(path, best).with_context(|| {
                format!(
                    "{} is not an export directory ({CONFIG_FILE} and {WEIGHTS_FILE}) either",
                    path.display()
                )
            })?,
        )))
    }

    /// The backend a run's checkpoint trained on; `flex` for an export.
    pub fn default_backend(&self) -> BackendKind {
        match self {
            Self::Checkpoint(c) => c.config.backend.kind,
            Self::Export(_) => BackendKind::Flex,
        }
    }
}

/// What `GET /v1/models` says about the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// The run's or export's directory name.
    pub id: String,
    pub attention: AttentionKind,
    pub params: usize,
    /// The training step of a checkpoint; `None` for an export.
    pub step: Option<usize>,
    pub max_seq_len: usize,
    pub source: PathBuf,
}

/// A loaded model with its tokenizer.
pub struct Served<B: KernelBackend> {
    pub model: CastleLm<B>,
    pub tokenizer: Arc<Tok>,
    pub info: ModelInfo,
}

impl<B: KernelBackend> Served<B> {
    pub fn load(source: Source, device: &B::Device) -> Result<Self> {
        match source {
            Source::Checkpoint(ckpt) => {
                let loaded = Loaded::<B>::load(*ckpt, device)?;
                let info = ModelInfo {
                    id: run_name(&loaded.checkpoint.dir),
                    attention: loaded.checkpoint.config.model.attention,
                    params: loaded.params(),
                    step: Some(loaded.checkpoint.state.step),
                    max_seq_len: loaded.model.config.max_seq_len,
                    source: loaded.checkpoint.dir.clone(),
                };
                Ok(Self {
                    model: loaded.model,
                    tokenizer: Arc::new(loaded.tokenizer),
                    info,
                })
            }
            Source::Export(dir) => {
                let (model, config) = safetensors::load_export::<B>(&dir, device)?;
                let path = dir.join(TOKENIZER_FILE);
                let tokenizer = Tok::load(&path).with_context(|| {
                    format!(
                        "an export needs its tokenizer: {} is missing or unreadable",
                        path.display()
                    )
                })?;
                if let Some(sha) = &config.tokenizer_sha256 {
                    if &tokenizer.hash_hex() != sha {
                        bail!(
                            "{}: sha256 {} is not the {sha} that {CONFIG_FILE} records: not the tokenizer this model was trained with",
                            path.display(),
                            tokenizer.hash_hex()
                        );
                    }
                }
                if tokenizer.vocab_size() != config.vocab_size {
                    bail!(
                        "{}: {} tokens, but {CONFIG_FILE} says vocab_size = {}",
                        path.display(),
                        tokenizer.vocab_size(),
                        config.vocab_size
                    );
                }
                let info = ModelInfo {
                    id: run_name(&dir),
                    attention: config.attention,
                    params: model.config.param_summary(config.vocab_size).total,
                    step: None,
                    max_seq_len: model.config.max_seq_len,
                    source: dir,
                };
                Ok(Self {
                    model,
                    tokenizer: Arc::new(tokenizer),
                    info,
                })
            }
        }
    }
}

/// `runs/small/checkpoints/step-0000100` -> `small`; `exports/small` -> `small`.
fn run_name(dir: &Path) -> String {
    let run = match dir.parent() {
        Some(parent) if parent.file_name().is_some_and(|n| n == "checkpoints") => {
            parent.parent().unwrap_or(dir)
        }
        _ => dir,
    };
    run.canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "castle".into())
}
