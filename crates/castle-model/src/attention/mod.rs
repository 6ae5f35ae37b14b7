//! Attention layers: the causal-softmax baseline and CASTLE, with their decoding caches.
//!
//! Each layer has one `forward(x, rope, cache)`: with no cache, a full sequence (training);
//! with an empty cache, a prompt, whose cache it fills; with a filled one, the new positions
//! after those cached.

pub mod baseline;
pub mod cache;
pub mod castle;
pub mod uq_kv;

pub use baseline::{CausalSelfAttention, KvCache};
pub use castle::CastleAttention;
pub use uq_kv::UqKvCache;

use burn::prelude::*;

/// One layer's decoding cache: empty until the layer's first forward with it, then its kind's.
#[derive(Debug, Clone)]
pub enum AttentionCache<B: Backend> {
    Empty,
    Kv(KvCache<B>),
    UqKv(UqKvCache<B>),
}
