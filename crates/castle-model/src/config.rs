//! The model's shape, as the `[model]` section of a run's TOML file.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttentionKind {
    Baseline,
    Castle,
    CastleSwl,
}

impl std::fmt::Display for AttentionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Baseline => "baseline",
            Self::Castle => "castle",
            Self::CastleSwl => "castle-swl",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// `baseline`, `castle` or `castle-swl`.
    pub attention: AttentionKind,
    pub layers: usize,
    pub d_model: usize,
    pub head_dim: usize,
    /// Heads of the *baseline* at this size. CASTLE gets `round(4/7 heads)` heads of the same
    /// dimension (parameter parity, docs/castle.md, section 5) unless `castle_heads` is set.
    pub heads: usize,
    #[serde(default)]
    pub castle_heads: Option<usize>,
    /// CASTLE-SWL's lookahead window `W` (eq. 9); required for, and only for, `castle-swl`.
    #[serde(default)]
    pub window: Option<usize>,
    /// Block size of the chunked lookahead form (docs/castle.md, section 3).
    #[serde(default = "default_block_size")]
    pub block_size: usize,
    /// Longest sequence the model is built for (training `seq_len`, prompt plus generation).
    #[serde(default = "default_max_seq_len")]
    pub max_seq_len: usize,
    /// LM head shares the token embedding's weights (the paper's parameter counts imply it).
    #[serde(default = "default_true")]
    pub tie_embeddings: bool,
    /// SwiGLU hidden width; default `ceil(8/3 d_model)`.
    #[serde(default)]
    pub mlp_hidden: Option<usize>,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
}

fn default_block_size() -> usize {
    64
}
fn default_max_seq_len() -> usize {
    2048
}
fn default_true() -> bool {
    true
}
fn default_rope_theta() -> f64 {
    10_000.0
}

/// A config value that cannot work, named by its TOML key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key} = {value}: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub value: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(key: &str, value: impl std::fmt::Display, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// Parameters by part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamSummary {
    pub embedding: usize,
    pub attention: usize,
    pub mlp: usize,
    pub norms: usize,
    pub lm_head: usize,
    pub total: usize,
}

impl ParamSummary {
    /// Everything but the token embedding and the LM head.
    pub fn non_embedding(&self) -> usize {
        self.attention + self.mlp + self.norms
    }
}

/// `round(4/7 * baseline_heads)`: CASTLE's head count at parameter parity (docs/castle.md, section 5).
pub fn parity_heads(baseline_heads: usize) -> usize {
    ((4 * baseline_heads) as f64 / 7.0).round().max(1.0) as usize
}

impl ModelConfig {
    /// A baseline shape; set `attention` (and `window`) for the CASTLE variants.
    pub fn new(layers: usize, d_model: usize, heads: usize, head_dim: usize) -> Self {
        Self {
            attention: AttentionKind::Baseline,
            layers,
            d_model,
            head_dim,
            heads,
            castle_heads: None,
            window: None,
            block_size: default_block_size(),
            max_seq_len: default_max_seq_len(),
            tie_embeddings: true,
            mlp_hidden: None,
            rope_theta: default_rope_theta(),
        }
    }

    pub fn with_attention(mut self, attention: AttentionKind, window: Option<usize>) -> Self {
        self.attention = attention;
        self.window = window;
        self
    }

    /// Heads of this model's attention.
    pub fn n_heads(&self) -> usize {
        match self.attention {
            AttentionKind::Baseline => self.heads,
            _ => self
                .castle_heads
                .unwrap_or_else(|| parity_heads(self.heads)),
        }
    }

    /// The lookahead window in effect (`None` unless `castle-swl`).
    pub fn lookahead_window(&self) -> Option<usize> {
        match self.attention {
            AttentionKind::CastleSwl => self.window,
            _ => None,
        }
    }

    pub fn mlp_hidden(&self) -> usize {
        self.mlp_hidden.unwrap_or((8 * self.d_model).div_ceil(3))
    }

    /// Checks every constraint; errors name the key as `model.<key>`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("model.layers", self.layers),
            ("model.d_model", self.d_model),
            ("model.heads", self.heads),
            ("model.block_size", self.block_size),
            ("model.max_seq_len", self.max_seq_len),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::new(key, value, "must be at least 1"));
            }
        }
        if self.head_dim < 2 || !self.head_dim.is_multiple_of(2) {
            return Err(ConfigError::new(
                "model.head_dim",
                self.head_dim,
                "must be even and at least 2 (RoPE rotates pairs of dimensions)",
            ));
        }
        if self.castle_heads == Some(0) {
            return Err(ConfigError::new(
                "model.castle_heads",
                0,
                "must be at least 1",
            ));
        }
        if self.mlp_hidden == Some(0) {
            return Err(ConfigError::new(
                "model.mlp_hidden",
                0,
                "must be at least 1",
            ));
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            return Err(ConfigError::new(
                "model.rope_theta",
                self.rope_theta,
                "must be positive",
            ));
        }
        match (self.attention, self.window) {
            (AttentionKind::CastleSwl, None) => Err(ConfigError::new(
                "model.window",
                "(missing)",
                "castle-swl needs a lookahead window of at least 1 (the paper uses 128 to 512)",
            )),
            (AttentionKind::CastleSwl, Some(0)) => Err(ConfigError::new(
                "model.window",
                0,
                "must be at least 1",
            )),
            (AttentionKind::Baseline | AttentionKind::Castle, Some(w)) => Err(ConfigError::new(
                "model.window",
                w,
                format!(
                    "only castle-swl uses a window; remove it or set model.attention = \"castle-swl\" (now \"{}\")",
                    self.attention
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Parameters by part, counted from the shape (equal to the built module's count).
    pub fn param_summary(&self, vocab_size: usize) -> ParamSummary {
        let per_head = match self.attention {
            AttentionKind::Baseline => 4,
            _ => 7,
        };
        let embedding = vocab_size * self.d_model;
        let attention = self.layers * per_head * self.n_heads() * self.head_dim * self.d_model;
        let mlp = self.layers * 3 * self.d_model * self.mlp_hidden();
        let norms = (2 * self.layers + 1) * self.d_model;
        let lm_head = if self.tie_embeddings { 0 } else { embedding };
        ParamSummary {
            embedding,
            attention,
            mlp,
            norms,
            lm_head,
            total: embedding + attention + mlp + norms + lm_head,
        }
    }

    /// Approximate training FLOPs per token at `seq_len` (forward + backward = 3x forward):
    /// `6 x` the matrix parameters (LM head included) plus the attention products, whose
    /// forward per head and token is `2 L d` for causal softmax (two products over `L/2` keys on
    /// average) and about `5 L d` for CASTLE (three more: `sig`, `G` and `Qc C`; under SWL the
    /// first two cover `W` positions instead of `L/2`).
    pub fn train_flops_per_token(&self, vocab_size: usize, seq_len: usize) -> f64 {
        let p = self.param_summary(vocab_size);
        let matrices = (p.attention + p.mlp + vocab_size * self.d_model) as f64;
        let (l, d) = (seq_len as f64, self.head_dim as f64);
        let per_head = match (self.attention, self.lookahead_window()) {
            (AttentionKind::Baseline, _) => 2.0 * l * d,
            (_, None) => 5.0 * l * d,
            (_, Some(w)) => 3.0 * l * d + 4.0 * (w as f64).min(l / 2.0) * d,
        };
        6.0 * matrices + 3.0 * (self.layers * self.n_heads()) as f64 * per_head
    }
}
