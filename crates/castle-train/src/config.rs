//! The run's TOML file: `[run]`, `[model]`, `[data]`, `[train]`, `[eval]`, `[checkpoint]`,
//! `[backend]`. Unknown keys are rejected by name; [`RunConfig::validate`] checks every
//! constraint before any work starts and names the key at fault.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// burn's `ndarray` CPU backend.
    Ndarray,
    /// burn's `flex` CPU backend: the default, it trains faster here (`docs/benchmarks.md`).
    #[default]
    Flex,
    /// burn's CUDA backend (build with `--features cuda`).
    Cuda,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    pub kind: BackendKind,
    /// Floating-point type of parameters and activations; only `f32` for now.
    pub dtype: String,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            kind: BackendKind::default(),
            dtype: "f32".into(),
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
        if self.backend.dtype != "f32" {
            bail!(
                "backend.dtype = \"{}\": only \"f32\" is supported",
                self.backend.dtype
            );
        }
        if self.backend.kind == BackendKind::Cuda && !cfg!(feature = "cuda") {
            bail!("backend.kind = \"cuda\" needs a build with `--features cuda`; on CPU use \"ndarray\" or \"flex\"");
        }
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a RunConfig always serializes")
    }
}

/// `key.path=value`: `value` is read as a TOML value (`3e-4`, `true`, `"x"`), or else as a string.
fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<()> {
    let Some((path, raw)) = assignment.split_once('=') else {
        bail!("--set {assignment}: expected key.path=value, e.g. --set train.lr=3e-4");
    };
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let keys: Vec<&str> = path.trim().split('.').collect();
    let (last, parents) = keys.split_last().expect("split yields at least one key");
    let mut node = table;
    for key in parents {
        node = node
            .entry(key.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()))
            .as_table_mut()
            .with_context(|| format!("--set {assignment}: {key} is not a table"))?;
    }
    node.insert(last.to_string(), value);
    Ok(())
}
