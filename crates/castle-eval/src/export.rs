//! `castle-eval --ckpt DIR --export OUT`: the checkpoint's model as `OUT/model.safetensors`
//! (PyTorch LLaMA-style names, `[out, in]` weights), `OUT/config.json` and its
//! `OUT/tokenizer.json`; names and layout are documented in [`castle_model::safetensors`].

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use castle_model::safetensors::{self, ExportConfig, ExportTokenizer};
use castle_model::TrainBackend;
use castle_train::backend::{dispatch, OnBackend};
use castle_train::checkpoint::Checkpoint;
use castle_train::config::BackendKind;
use serde::Serialize;

use crate::load::{resolve, Loaded};

#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub checkpoint: PathBuf,
    pub step: usize,
    pub dir: PathBuf,
    pub params: usize,
    pub config: ExportConfig,
}

impl ExportReport {
    pub fn table(&self) -> String {
        let c = &self.config;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "exported {} (step {}) to {}",
            self.checkpoint.display(),
            self.step,
            self.dir.display()
        );
        let _ = writeln!(
            out,
            "{} parameters: {}, {} layers, d_model {}, {} heads of {}, tied embeddings {}",
            self.params,
            c.attention,
            c.num_hidden_layers,
            c.hidden_size,
            c.num_attention_heads,
            c.head_dim,
            c.tie_word_embeddings
        );
        let _ = writeln!(
            out,
            "files: {}, {}, {}",
            safetensors::WEIGHTS_FILE,
            safetensors::CONFIG_FILE,
            safetensors::TOKENIZER_FILE
        );
        out
    }
}

/// Resolves `ckpt` as the other evaluations do and exports it into `out` (which must not exist
/// or be empty), on `backend` or the checkpoint's own (any CPU backend when that one is not
/// compiled in: exporting computes nothing).
pub fn export(
    ckpt: &Path,
    best: bool,
    backend: Option<BackendKind>,
    out: &Path,
) -> Result<ExportReport> {
    let checkpoint = resolve(ckpt, best)?;
    let kind = backend.unwrap_or(checkpoint.config.backend.kind);
    let kind = if kind.compiled_in() {
        kind
    } else {
        BackendKind::Flex
    };
    dispatch(
        kind,
        Job {
            checkpoint,
            out: out.to_path_buf(),
        },
    )
}

struct Job {
    checkpoint: Checkpoint,
    out: PathBuf,
}

impl OnBackend for Job {
    type Output = ExportReport;
    fn run<B: TrainBackend>(self, device: B::Device) -> Result<ExportReport> {
        let loaded = Loaded::<B::InnerBackend>::load(self.checkpoint, &device)?;
        let file = loaded.checkpoint.dir.join(safetensors::TOKENIZER_FILE);
        let sha256 = loaded.tokenizer.hash_hex();
        let tokenizer = ExportTokenizer {
            file: &file,
            sha256: &sha256,
            eot_id: loaded.tokenizer.eot_id(),
        };
        let config = safetensors::export(&loaded.model, Some(tokenizer), &self.out)?;
        Ok(ExportReport {
            checkpoint: loaded.checkpoint.dir.clone(),
            step: loaded.checkpoint.state.step,
            dir: self.out,
            params: loaded.params(),
            config,
        })
    }
}
