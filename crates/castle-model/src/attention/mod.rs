//! Attention layers: the causal-softmax baseline and CASTLE, with their decoding caches.

pub mod baseline;
pub mod cache;
pub mod castle;
pub mod heads;
pub mod path;
pub mod uq_kv;

pub use baseline::{CausalSelfAttention, KvCache};
pub use castle::CastleAttention;
pub use path::AttentionPath;
pub use uq_kv::UqKvCache;

use burn::prelude::*;

/// One layer's decoding cache.
#[derive(Debug, Clone)]
pub enum AttentionCache<B: Backend> {
    Kv(KvCache<B>),
    UqKv(UqKvCache<B>),
}
