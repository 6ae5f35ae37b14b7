//! The model: CASTLE attention (arXiv 2509.07301), the baseline causal attention it is compared
//! with, and the LLaMA-style decoder both plug into. Generic over any burn backend that implements
//! [`KernelBackend`]; the kernels live below, in `castle-kernels`.
//!
//! Tensor layout inside attention is `[batch, heads, len, head_dim]`, rows are positions.

pub mod attention;
pub mod config;
pub mod decode;
pub mod layers;
pub mod lm;
pub mod safetensors;

pub use attention::AttentionCache;
pub use castle_kernels::{AttentionOp, KernelBackend, TrainBackend};
pub use config::{AttentionKind, ConfigError, ModelConfig, ParamSummary};
pub use decode::{DecodeError, Decoder, PromptLogits};
pub use lm::{CastleLm, LmCache};
