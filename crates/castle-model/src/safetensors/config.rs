//! `config.json` of an export: Hugging Face LLaMA's keys where they exist, castle's own beside.
//! A baseline export declares itself a LLaMA (`model_type` `llama`, `LlamaForCausalLM`), which
//! it is, so transformers' `AutoModelForCausalLM` loads it as it is (it ignores castle's keys);
//! CASTLE and CASTLE-SWL exports declare `castle`, which needs an attention module of its own.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::DType;
use serde::{Deserialize, Serialize};

use super::error::{file_error, SafetensorsError};
use crate::config::{AttentionKind, ModelConfig};
use crate::lm::CastleLm;

/// Version of this file's layout; bumped when a name or a meaning changes.
pub const FORMAT_VERSION: u32 = 1;

/// The tokenizer's file name in an export.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Everything needed to rebuild the network from `model.safetensors`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportConfig {
    /// `["LlamaForCausalLM"]` for a baseline, `["CastleForCausalLM"]` for CASTLE(-SWL).
    pub architectures: Vec<String>,
    /// `"llama"` for a baseline, `"castle"` for CASTLE(-SWL).
    pub model_type: String,
    pub castle_format_version: u32,
    /// `baseline`, `castle` or `castle-swl`.
    pub attention: AttentionKind,
    /// CASTLE-SWL's lookahead window `W`; `null` otherwise.
    pub lookahead_window: Option<usize>,
    pub vocab_size: usize,
    /// `d_model`.
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    /// Heads of this model's attention (CASTLE's after parity).
    pub num_attention_heads: usize,
    /// Equal to `num_attention_heads` (no grouped-query attention).
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    /// The SwiGLU width.
    pub intermediate_size: usize,
    /// `"silu"` (SwiGLU: `down(silu(gate x) * up x)`).
    pub hidden_act: String,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// `"rotate_half"`: Hugging Face LLaMA's RoPE; castle applies it to `q, k, uq, uk`.
    pub rope_style: String,
    /// `[model] max_seq_len` at export.
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// `false`: no projection has a bias (LLaMA's default, written out).
    #[serde(default)]
    pub attention_bias: bool,
    /// `false`: no MLP bias.
    #[serde(default)]
    pub mlp_bias: bool,
    /// The baseline's head count at this size (`[model] heads`): CASTLE's
    /// `num_attention_heads` is `round(4/7 parity_heads)` unless `castle_heads` was set.
    pub parity_heads: usize,
    /// Dtype of every tensor in the file (`"float32"`).
    pub torch_dtype: String,
    /// `tokenizer.json` beside this file, when the export carries one.
    pub tokenizer_file: Option<String>,
    pub tokenizer_sha256: Option<String>,
    /// The tokenizer's end-of-text id, which ends every document; also the `bos_token_id`, as in
    /// GPT-2 (castle prepends nothing). Without them transformers would assume LLaMA's 1 and 2.
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

/// Keys [`ExportConfig::check_matches`] compares, with the run setting each one comes from
/// (`model_type` follows `attention`; [`ExportConfig::read`] checks it).
const CHECKED: [(&str, &str); 13] = [
    ("castle_format_version", "format version"),
    ("attention", "model.attention"),
    ("lookahead_window", "model.window"),
    ("vocab_size", "tokenizer vocabulary"),
    ("hidden_size", "model.d_model"),
    ("num_hidden_layers", "model.layers"),
    ("num_attention_heads", "model.heads (or model.castle_heads)"),
    ("head_dim", "model.head_dim"),
    ("intermediate_size", "model.mlp_hidden"),
    ("rms_norm_eps", "RMSNorm epsilon"),
    ("rope_theta", "model.rope_theta"),
    ("rope_style", "RoPE form"),
    ("tie_word_embeddings", "model.tie_embeddings"),
];

/// `model_type` and architecture of an export: a baseline is a LLaMA, CASTLE is castle's own.
fn model_type(attention: AttentionKind) -> (&'static str, &'static str) {
    match attention {
        AttentionKind::Baseline => ("llama", "LlamaForCausalLM"),
        AttentionKind::Castle | AttentionKind::CastleSwl => ("castle", "CastleForCausalLM"),
    }
}

fn torch_dtype(dtype: DType) -> String {
    match dtype {
        DType::F64 => "float64".into(),
        DType::F32 => "float32".into(),
        DType::F16 => "float16".into(),
        DType::BF16 => "bfloat16".into(),
        other => format!("{other:?}"),
    }
}

impl ExportConfig {
    /// The config of `model`, recording the tokenizer's hash when given.
    pub fn of<B: Backend>(model: &CastleLm<B>, tokenizer_sha256: Option<&str>) -> Self {
        let c = &model.config;
        let heads = c.n_heads();
        let (model_type, architecture) = model_type(c.attention);
        Self {
            architectures: vec![architecture.into()],
            model_type: model_type.into(),
            castle_format_version: FORMAT_VERSION,
            attention: c.attention,
            lookahead_window: c.lookahead_window(),
            vocab_size: model.embed.weight.dims()[0],
            hidden_size: c.d_model,
            num_hidden_layers: c.layers,
            num_attention_heads: heads,
            num_key_value_heads: heads,
            head_dim: c.head_dim,
            intermediate_size: c.mlp_hidden(),
            hidden_act: "silu".into(),
            rms_norm_eps: model.norm.eps,
            rope_theta: c.rope_theta,
            rope_style: "rotate_half".into(),
            max_position_embeddings: c.max_seq_len,
            tie_word_embeddings: c.tie_embeddings,
            attention_bias: false,
            mlp_bias: false,
            parity_heads: c.heads,
            torch_dtype: torch_dtype(model.embed.weight.val().dtype()),
            tokenizer_file: tokenizer_sha256.map(|_| TOKENIZER_FILE.into()),
            tokenizer_sha256: tokenizer_sha256.map(str::to_string),
            bos_token_id: None,
            eos_token_id: None,
        }
    }

    /// The `[model]` that rebuilds this network (the chunk block size is not part of an export:
    /// the default). Errors name the key that describes no valid model.
    pub fn model_config(&self, path: &Path) -> Result<ModelConfig, SafetensorsError> {
        let castle = self.attention != AttentionKind::Baseline;
        let config = ModelConfig {
            castle_heads: castle.then_some(self.num_attention_heads),
            mlp_hidden: Some(self.intermediate_size),
            max_seq_len: self.max_position_embeddings,
            tie_embeddings: self.tie_word_embeddings,
            rope_theta: self.rope_theta,
            ..ModelConfig::new(
                self.num_hidden_layers,
                self.hidden_size,
                if castle {
                    self.parity_heads
                } else {
                    self.num_attention_heads
                },
                self.head_dim,
            )
            .with_attention(self.attention, self.lookahead_window)
        };
        config
            .validate()
            .map_err(|e| file_error(path, format!("describes no valid model: {e}")))?;
        Ok(config)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a plain struct serializes") + "\n"
    }

    /// Reads `path`; errors name it and the key at fault.
    pub fn read(path: &Path) -> Result<Self, SafetensorsError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            file_error(
                path,
                format!("cannot read it ({e}); an export directory holds config.json beside model.safetensors"),
            )
        })?;
        let config: Self = serde_json::from_str(&text).map_err(|e| file_error(path, e))?;
        // Baseline exports written before they declared `llama` say `castle`: both are read.
        let (expected, _) = model_type(config.attention);
        if config.model_type != expected && config.model_type != "castle" {
            return Err(file_error(
                path,
                format!(
                    "model_type = {:?} with attention = {}: castle reads its own exports, which \
                     declare {expected:?} for this attention",
                    config.model_type, config.attention
                ),
            ));
        }
        Ok(config)
    }

    /// Fails on the first key of [`CHECKED`] where this (the file's, read from `path`) differs
    /// from `run`'s, naming both; and on different tokenizers when both record a hash.
    /// `max_position_embeddings` and `parity_heads` may differ: they do not change the weights.
    pub fn check_matches(&self, run: &Self, path: &Path) -> Result<(), SafetensorsError> {
        let (file, now) = (
            serde_json::to_value(self).expect("serializes"),
            serde_json::to_value(run).expect("serializes"),
        );
        let mut checked = CHECKED.to_vec();
        if self.tokenizer_sha256.is_some() && run.tokenizer_sha256.is_some() {
            checked.push(("tokenizer_sha256", "tokenizer (data.tokenizer)"));
        }
        for (field, key) in checked {
            if file[field] != now[field] {
                return Err(SafetensorsError::Mismatch {
                    path: path.to_path_buf(),
                    field,
                    key,
                    file: file[field].to_string(),
                    run: now[field].to_string(),
                });
            }
        }
        Ok(())
    }
}
