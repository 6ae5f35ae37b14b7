//! Export to, and import from, a directory other frameworks read: `model.safetensors` (tensors
//! named as in PyTorch LLaMA checkpoints, linear weights in PyTorch's `[out, in]` layout) and
//! `config.json` (the architecture, every dimension, attention kind and parity, RoPE).
//!
//! The file is written and read by burn-store: its `SafetensorsStore`, its PyTorch adapters
//! (which transpose `Linear` weights between burn's `[in, out]` and PyTorch's `[out, in]`) and
//! its key remapping (burn's module paths to the names below). castle holds each layer's
//! attention projections in one fused `Linear`; the file holds one tensor per projection, so the
//! model is first split into [`layout::SplitLm`], whose projections are `Linear`s of their own.
//!
//! Names and PyTorch shapes (`V` vocabulary, `D` `hidden_size`, `n d` heads x `head_dim`,
//! `H` `intermediate_size`; `{i}` the layer):
//!
//! | tensor | shape | castle |
//! |---|---|---|
//! | `model.embed_tokens.weight` | `[V, D]` | token embedding |
//! | `model.layers.{i}.input_layernorm.weight` | `[D]` | RMSNorm gain before attention |
//! | `model.layers.{i}.self_attn.q_proj.weight` | `[n d, D]` | `W_Q` (baseline) / `W_CQ` (CASTLE) |
//! | `model.layers.{i}.self_attn.k_proj.weight` | `[n d, D]` | `W_K` / `W_CK` |
//! | `model.layers.{i}.self_attn.v_proj.weight` | `[n d, D]` | `W_V` / `W_CV` |
//! | `model.layers.{i}.self_attn.uq_proj.weight` | `[n d, D]` | `W_UQ` (CASTLE only) |
//! | `model.layers.{i}.self_attn.uk_proj.weight` | `[n d, D]` | `W_UK` (CASTLE only) |
//! | `model.layers.{i}.self_attn.uv_proj.weight` | `[n d, D]` | `W_UV` (CASTLE only) |
//! | `model.layers.{i}.self_attn.o_proj.weight` | `[D, n d]` | `W_O` |
//! | `model.layers.{i}.post_attention_layernorm.weight` | `[D]` | RMSNorm gain before the MLP |
//! | `model.layers.{i}.mlp.gate_proj.weight` | `[H, D]` | SwiGLU gate |
//! | `model.layers.{i}.mlp.up_proj.weight` | `[H, D]` | SwiGLU up |
//! | `model.layers.{i}.mlp.down_proj.weight` | `[D, H]` | SwiGLU down |
//! | `model.norm.weight` | `[D]` | final RMSNorm gain |
//! | `lm_head.weight` | `[V, D]` | only when `tie_word_embeddings` is false |
//!
//! Rows of a projection are head-major (`head * head_dim + j`), as in LLaMA; RoPE is the
//! "rotate half" form of Hugging Face's LLaMA, applied to `q, k, uq, uk` (see [`castle_kernels::rope`]).

mod config;
mod error;
mod layout;

pub use config::{ExportConfig, TOKENIZER_FILE};
pub use error::SafetensorsError;

use error::file_error;

use std::fs;
use std::path::Path;

use burn::prelude::*;
use burn_store::{
    BurnToPyTorchAdapter, KeyRemapper, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore,
};

use crate::config::ModelConfig;
use crate::lm::CastleLm;

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.json";

/// burn module path -> file name; the reverse of [`TO_BURN`].
const TO_PYTORCH: [(&str, &str); 6] = [
    (r"^embed\.weight$", "model.embed_tokens.weight"),
    (
        r"^blocks\.(\d+)\.attn_norm\.gamma$",
        "model.layers.$1.input_layernorm.weight",
    ),
    (
        r"^blocks\.(\d+)\.mlp_norm\.gamma$",
        "model.layers.$1.post_attention_layernorm.weight",
    ),
    (r"^blocks\.(\d+)\.attn\.", "model.layers.$1.self_attn."),
    (
        r"^blocks\.(\d+)\.mlp\.(gate|up|down)\.",
        "model.layers.$1.mlp.${2}_proj.",
    ),
    (r"^norm\.gamma$", "model.norm.weight"),
];

/// File name -> burn module path.
const TO_BURN: [(&str, &str); 6] = [
    (r"^model\.embed_tokens\.weight$", "embed.weight"),
    (
        r"^model\.layers\.(\d+)\.input_layernorm\.weight$",
        "blocks.$1.attn_norm.gamma",
    ),
    (
        r"^model\.layers\.(\d+)\.post_attention_layernorm\.weight$",
        "blocks.$1.mlp_norm.gamma",
    ),
    (r"^model\.layers\.(\d+)\.self_attn\.", "blocks.$1.attn."),
    (
        r"^model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.",
        "blocks.$1.mlp.$2.",
    ),
    (r"^model\.norm\.weight$", "norm.gamma"),
];

fn remapper(rules: &[(&str, &str)]) -> KeyRemapper {
    KeyRemapper::from_patterns(rules.to_vec()).expect("the name rules are valid regexes")
}

/// Writes `model`'s weights to `path` in the documented names and layout (replacing a file
/// already there only once the new one is complete).
pub fn save_weights<B: Backend>(model: &CastleLm<B>, path: &Path) -> Result<(), SafetensorsError> {
    let name = path
        .file_name()
        .map_or("weights".into(), |n| n.to_string_lossy());
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut store = SafetensorsStore::from_file(&tmp)
        .with_to_adapter(BurnToPyTorchAdapter)
        .remap(remapper(&TO_PYTORCH))
        .metadata("format", "pt")
        .overwrite(true);
    layout::split(model)
        .save_into(&mut store)
        .map_err(|e| file_error(&tmp, e))?;
    fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|e| file_error(path, e))
}

/// Builds the model `config` describes and loads its weights from `path`. Every tensor the model
/// has must be in the file with its shape, and the file must hold no other tensor.
pub fn load_weights<B: Backend>(
    config: &ModelConfig,
    vocab_size: usize,
    path: &Path,
    device: &B::Device,
) -> Result<CastleLm<B>, SafetensorsError> {
    load_into(config.init::<B>(vocab_size, device), path)
}

/// Replaces every weight of `model` by the file's.
fn load_into<B: Backend>(model: CastleLm<B>, path: &Path) -> Result<CastleLm<B>, SafetensorsError> {
    let mut split = layout::split(&model);
    let mut store = SafetensorsStore::from_file(path)
        .with_from_adapter(PyTorchToBurnAdapter)
        .remap(remapper(&TO_BURN));
    let result = split
        .load_from(&mut store)
        .map_err(|e| file_error(path, e))?;
    if !result.unused.is_empty() {
        let mut names = result.unused;
        names.sort();
        return Err(file_error(
            path,
            format!(
                "holds tensors this model has no place for (burn paths after renaming): {}",
                names.join(", ")
            ),
        ));
    }
    Ok(layout::fuse(split, model))
}

/// The tokenizer an export carries.
#[derive(Debug, Clone, Copy)]
pub struct ExportTokenizer<'a> {
    /// Its `tokenizer.json`, copied into the export.
    pub file: &'a Path,
    pub sha256: &'a str,
    /// The end-of-text id (`bos_token_id` and `eos_token_id` in `config.json`).
    pub eot_id: u32,
}

/// Writes `dir/model.safetensors`, `dir/config.json` and, with a tokenizer, a copy of it as
/// `dir/tokenizer.json`. Everything is written into a hidden sibling directory renamed to `dir`
/// at the end, so a crash leaves no partial export. `dir` must not exist or be empty.
pub fn export<B: Backend>(
    model: &CastleLm<B>,
    tokenizer: Option<ExportTokenizer>,
    dir: &Path,
) -> Result<ExportConfig, SafetensorsError> {
    if dir.exists() {
        let empty = fs::read_dir(dir)
            .map_err(|e| file_error(dir, e))?
            .next()
            .is_none();
        if !empty {
            return Err(file_error(
                dir,
                "already exists and is not empty: export into a new or empty directory",
            ));
        }
    }
    let name = dir
        .file_name()
        .ok_or_else(|| file_error(dir, "names no directory to export into"))?;
    let tmp = dir.with_file_name(format!(".{}.tmp-export", name.to_string_lossy()));
    let written = (|| -> Result<ExportConfig, SafetensorsError> {
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| file_error(&tmp, e))?;
        }
        fs::create_dir_all(&tmp).map_err(|e| file_error(&tmp, e))?;
        save_weights(model, &tmp.join(WEIGHTS_FILE))?;
        let config = ExportConfig {
            bos_token_id: tokenizer.map(|t| t.eot_id),
            eos_token_id: tokenizer.map(|t| t.eot_id),
            ..ExportConfig::of(model, tokenizer.map(|t| t.sha256))
        };
        let config_path = tmp.join(CONFIG_FILE);
        fs::write(&config_path, config.to_json()).map_err(|e| file_error(&config_path, e))?;
        if let Some(t) = tokenizer {
            fs::copy(t.file, tmp.join(TOKENIZER_FILE)).map_err(|e| file_error(t.file, e))?;
        }
        for entry in fs::read_dir(&tmp).map_err(|e| file_error(&tmp, e))? {
            let path = entry.map_err(|e| file_error(&tmp, e))?.path();
            fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| file_error(&path, e))?;
        }
        if dir.exists() {
            fs::remove_dir(dir).map_err(|e| file_error(dir, e))?;
        }
        fs::rename(&tmp, dir).map_err(|e| file_error(dir, e))?;
        Ok(config)
    })();
    if written.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    written
}

/// Loads an export directory as the network its `config.json` describes (for serving and
/// evaluation, where no run config says what to expect). Returns the config with the model.
pub fn load_export<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(CastleLm<B>, ExportConfig), SafetensorsError> {
    let config_path = dir.join(CONFIG_FILE);
    let saved = ExportConfig::read(&config_path)?;
    let model = load_weights(
        &saved.model_config(&config_path)?,
        saved.vocab_size,
        &dir.join(WEIGHTS_FILE),
        device,
    )?;
    Ok((model, saved))
}

/// Loads an export for a run whose `[model]` is `config` with a vocabulary of `vocab_size`:
/// `path` is the export directory or its `model.safetensors` (with `config.json` beside it).
/// The file's `config.json` must describe the same network as the run (see
/// [`ExportConfig::check_matches`]), with the same tokenizer when both record its sha256.
pub fn import<B: Backend>(
    path: &Path,
    config: &ModelConfig,
    vocab_size: usize,
    tokenizer_sha256: Option<&str>,
    device: &B::Device,
) -> Result<CastleLm<B>, SafetensorsError> {
    let (weights, config_path) = if path.is_dir() {
        (path.join(WEIGHTS_FILE), path.join(CONFIG_FILE))
    } else {
        (path.to_path_buf(), path.with_file_name(CONFIG_FILE))
    };
    let saved = ExportConfig::read(&config_path)?;
    let model = config.init::<B>(vocab_size, device);
    saved.check_matches(&ExportConfig::of(&model, tokenizer_sha256), &config_path)?;
    load_into(model, &weights)
}
