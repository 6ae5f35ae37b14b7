//! The run's TOML file: `[run]`, `[model]`, `[data]`, `[train]`, `[eval]`, `[checkpoint]`,
//! `[backend]`. Unknown keys are rejected by name; [`RunConfig::validate`] checks every
//! constraint before any work starts and names the key at fault.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use castle_data::overrides::apply_override;
use castle_data::DataConfig;
use castle_model::ModelConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub run: RunSection,
    pub model: ModelConfig,
    #[serde(default)]
    pub data: DataConfig,
    pub train: TrainConfig,
    #[serde(default)]
    pub eval: EvalConfig,
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    #[serde(default)]
    pub backend: BackendConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// Run directory: resolved config, checkpoints, `metrics.jsonl`, `summary.json`.
    pub dir: PathBuf,
    #[serde(default)]
    pub seed: u64,
    /// Start from the weights of a safetensors export (`castle-eval --export`; the directory or
    /// its `model.safetensors`) instead of a random initialisation; ignored when `dir` already
    /// holds checkpoints (the run resumes from them). Set by `castle-train --init-from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Tokens per training sequence (the model sees `seq_len`, predicts `seq_len` targets).
    pub seq_len: usize,
    /// Sequences per micro-batch (one forward/backward).
    pub batch_size: usize,
    /// Tokens per optimizer step; a multiple of `batch_size * seq_len`, reached by gradient
    /// accumulation. Default: one micro-batch.
    #[serde(default)]
    pub tokens_per_step: Option<usize>,
    /// Optimizer steps.
    pub steps: usize,
    /// Peak learning rate.
    pub lr: f64,
    #[serde(default)]
    pub warmup_steps: usize,
    /// Cosine decay ends at `min_lr_ratio * lr`.
    #[serde(default = "default_min_lr_ratio")]
    pub min_lr_ratio: f64,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    /// Global-norm gradient clipping threshold.
    #[serde(default = "default_grad_clip")]
    pub grad_clip: f64,
    /// Log a `metrics.jsonl` line every this many steps.
    #[serde(default = "default_log_every")]
    pub log_every: usize,
}

fn default_min_lr_ratio() -> f64 {
    0.1
}
fn default_weight_decay() -> f64 {
    0.1
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.95
}
fn default_grad_clip() -> f64 {
    1.0
}
fn default_log_every() -> usize {
    10
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Validate every this many steps (and after the last).
    pub every: usize,
    /// Validation tokens: non-overlapping windows from the start of the validation split.
    pub tokens: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            every: 100,
            tokens: 65_536,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Checkpoint every this many steps (and after the last).
    pub every: usize,
    /// Checkpoints kept besides the best by validation loss.
    pub keep_last: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            every: 100,
            keep_last: 2,
        }
    }
}

/// `backend.kind`; also the value of the binaries' `--backend` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// burn's `ndarray` CPU backend.
    Ndarray,
    /// burn's `flex` CPU backend: the default, it trains faster here (`docs/benchmarks.md`).
    #[default]
    Flex,
    /// burn's CUDA backend (build with `--features cuda`).
    Cuda,
    /// burn's wgpu backend: Vulkan, Metal, DirectX 12 (build with `--features wgpu`).
    Wgpu,
}

impl BackendKind {
    /// Whether this build can run the backend (CUDA and wgpu need their cargo feature).
    pub fn compiled_in(self) -> bool {
        match self {
            Self::Ndarray | Self::Flex => true,
            Self::Cuda => cfg!(feature = "cuda"),
            Self::Wgpu => cfg!(feature = "wgpu"),
        }
    }

    /// The error for a backend this build cannot run, naming the build that can.
    pub fn not_compiled_in(self) -> String {
        format!(
            "backend.kind = \"{self}\" needs a build with `--features {self}` \
             (cargo run --release --features {self} --bin ...); on CPU use \"flex\" or \"ndarray\""
        )
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ndarray => "ndarray",
            Self::Flex => "flex",
            Self::Cuda => "cuda",
            Self::Wgpu => "wgpu",
        })
    }
}

/// `backend.dtype`: the floating-point type of the forward and backward pass. Parameters, their
/// gradients and AdamW's moments are f32 either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[default]
    F32,
    /// Mixed precision (`castle_kernels::precision`): bf16 activations and weight copies, softmax
    /// statistics, lookahead prefix sums and the loss in f32.
    Bf16,
}

impl Dtype {
    /// Bytes per element of the activations.
    pub fn bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::Bf16 => 2,
        }
    }

    /// The model's compute type (`CastleLm::compute_dtype`); `None` computes in f32.
    pub fn compute_dtype(self) -> Option<burn::tensor::DType> {
        match self {
            Self::F32 => None,
            Self::Bf16 => Some(burn::tensor::DType::BF16),
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        })
    }
}

/// `backend.checkpointing`: burn's activation checkpointing strategy for the backward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Checkpointing {
    /// `NoCheckpointing`: every op keeps what its backward pass reads.
    #[default]
    None,
    /// `BalancedCheckpointing`: elementwise outputs are recomputed in the backward pass. Pays on
    /// the GPU backends; on the CPU backends it costs memory (README, "Training memory").
    Balanced,
}

impl std::fmt::Display for Checkpointing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Balanced => "balanced",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    pub kind: BackendKind,
    pub dtype: Dtype,
    pub checkpointing: Checkpointing,
    /// Device memory in GiB that `--dry-run` fits the micro-batch to; default
    /// [`crate::memory::default_memory_gib`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_gib: Option<f64>,
    /// `wgpu` and `cuda`: run under burn's `Fusion` wrapper, which fuses the elementwise ops
    /// around the attention kernels into few GPU kernels (default); `false` runs the bare
    /// `CubeBackend`, one GPU kernel per op. The CPU backends ignore it.
    pub fusion: bool,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            kind: BackendKind::default(),
            dtype: Dtype::default(),
            checkpointing: Checkpointing::default(),
            memory_gib: None,
            fusion: true,
        }
    }
}

impl RunConfig {
    /// Reads `path`, applies `--set key.path=value` overrides, and validates.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let mut table: toml::Table = toml::from_str(&text)
            .with_context(|| format!("{} is not valid TOML", path.display()))?;
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        let config: Self = toml::Table::try_into(table)
            .with_context(|| format!("invalid config {}", path.display()))?;
        config.validate()?;
        Ok(config)
    }

    /// Micro-batches accumulated per optimizer step.
    pub fn accumulation(&self) -> usize {
        let micro = self.train.batch_size * self.train.seq_len;
        self.train.tokens_per_step.unwrap_or(micro) / micro
    }

    pub fn tokens_per_step(&self) -> usize {
        self.accumulation() * self.train.batch_size * self.train.seq_len
    }

    /// Every constraint, each error naming its key and what would be valid.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.data.validate()?;
        let t = &self.train;
        if self.run.dir.as_os_str().is_empty() {
            bail!("run.dir is empty: name the run directory, e.g. \"runs/small\"");
        }
        for (key, value) in [
            ("train.seq_len", t.seq_len),
            ("train.batch_size", t.batch_size),
            ("train.steps", t.steps),
            ("train.log_every", t.log_every),
            ("eval.every", self.eval.every),
            ("checkpoint.every", self.checkpoint.every),
            ("checkpoint.keep_last", self.checkpoint.keep_last),
        ] {
            if value == 0 {
                bail!("{key} = 0: must be at least 1");
            }
        }
        if t.seq_len > self.model.max_seq_len {
            bail!(
                "train.seq_len = {} exceeds model.max_seq_len = {}, the longest sequence the model (RoPE) is built for; lower it or raise model.max_seq_len",
                t.seq_len,
                self.model.max_seq_len
            );
        }
        let micro = t.batch_size * t.seq_len;
        if let Some(tokens) = t.tokens_per_step {
            if tokens == 0 || !tokens.is_multiple_of(micro) {
                bail!(
                    "train.tokens_per_step = {tokens}: must be a positive multiple of train.batch_size * train.seq_len = {micro} (e.g. {})",
                    micro * (tokens / micro).max(1)
                );
            }
        }
        if !(t.lr.is_finite() && t.lr > 0.0) {
            bail!("train.lr = {}: must be a positive number", t.lr);
        }
        if t.warmup_steps > t.steps {
            bail!(
                "train.warmup_steps = {} exceeds train.steps = {}",
                t.warmup_steps,
                t.steps
            );
        }
        if !(0.0..=1.0).contains(&t.min_lr_ratio) {
            bail!("train.min_lr_ratio = {}: must be in [0, 1]", t.min_lr_ratio);
        }
        for (key, beta) in [("train.beta1", t.beta1), ("train.beta2", t.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                bail!("{key} = {beta}: must be in [0, 1)");
            }
        }
        if t.weight_decay.is_nan() || t.weight_decay < 0.0 {
            bail!("train.weight_decay = {}: must be >= 0", t.weight_decay);
        }
        if t.grad_clip.is_nan() || t.grad_clip <= 0.0 {
            bail!("train.grad_clip = {}: must be positive", t.grad_clip);
        }
        if self.eval.tokens < t.seq_len + 1 {
            bail!(
                "eval.tokens = {}: must be at least train.seq_len + 1 = {} (one validation window)",
                self.eval.tokens,
                t.seq_len + 1
            );
        }
        if let Some(gib) = self.backend.memory_gib {
            if !(gib.is_finite() && gib > 0.0) {
                bail!("backend.memory_gib = {gib}: must be a positive number of GiB (e.g. 80 for an 80 GB GPU)");
            }
        }
        if self.backend.kind == BackendKind::Wgpu && self.backend.dtype == Dtype::Bf16 {
            bail!(
                "backend.dtype = \"bf16\" cannot run on backend.kind = \"wgpu\": WGSL has no bf16 \
                 type; use \"f32\" on wgpu, or bf16 on \"cuda\""
            );
        }
        // A backend this build lacks is refused by `backend::dispatch`, not here, so that
        // `--dry-run` inspects every config on any build.
        Ok(())
    }

    /// The first key a resume must keep that differs between `saved` (the checkpoint's config)
    /// and `self`, as `(key, was, now)`: any `[model]` key, and the keys that fix the data order
    /// and the step (`run.seed`, `train.seq_len`, `train.batch_size`, `train.tokens_per_step`).
    /// Values are compared, not their printed forms.
    pub fn resume_mismatch(&self, saved: &RunConfig) -> Option<(String, String, String)> {
        let fixed = |c: &RunConfig| {
            // A struct of plain fields, which TOML always holds.
            let mut keys: Vec<(String, toml::Value)> = toml::Table::try_from(&c.model)
                .expect("a ModelConfig always serializes")
                .into_iter()
                .map(|(k, v)| (format!("model.{k}"), v))
                .collect();
            let number = |n: usize| toml::Value::Integer(n as i64);
            keys.push(("run.seed".into(), toml::Value::Integer(c.run.seed as i64)));
            keys.push(("train.seq_len".into(), number(c.train.seq_len)));
            keys.push(("train.batch_size".into(), number(c.train.batch_size)));
            keys.push(("train.tokens_per_step".into(), number(c.tokens_per_step())));
            keys
        };
        let (was, now) = (fixed(saved), fixed(self));
        let absent = || "absent".to_string();
        let value_of = |keys: &[(String, toml::Value)], key: &str| {
            keys.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
        };
        let mut names: Vec<&String> = was.iter().chain(&now).map(|(k, _)| k).collect();
        names.sort();
        names.dedup();
        names.into_iter().find_map(|key| {
            let (a, b) = (value_of(&was, key), value_of(&now, key));
            (a != b).then(|| {
                let show = |v: Option<toml::Value>| v.map_or_else(absent, |v| v.to_string());
                (key.clone(), show(a), show(b))
            })
        })
    }

    pub fn to_toml(&self) -> String {
        // Tables of plain fields (no `None` in an array, no non-string keys): always serializes.
        toml::to_string_pretty(self).expect("a RunConfig always serializes")
    }
}
