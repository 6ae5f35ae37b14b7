//! Attention layers: the causal-softmax baseline and CASTLE, with their decoding caches.

pub mod baseline;
pub mod cache;
pub mod castle;
pub mod lookahead;

pub use baseline::{CausalSelfAttention, KvCache};
pub use castle::CastleAttention;
pub use lookahead::{CastleHeads, UqKvCache};

use burn::prelude::*;

/// How a full-sequence forward computes attention. All three are exact; tests compare them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionPath {
    /// burn tensor ops; CASTLE by Theorem 1's O(L^3) parallel form: the reference.
    Naive,
    /// burn tensor ops; CASTLE by the O(L^2 d) chunked form with this block size.
    Chunked { block: usize },
    /// The backend's attention kernel ([`crate::kernels::AttentionBackend`]) with this block size:
    /// the fused CPU kernels on `flex` and `ndarray`; on CUDA, until its own kernels exist, the
    /// chunked tensor-op form. The training path.
    Kernel { block: usize },
}

/// One layer's decoding cache.
#[derive(Debug, Clone)]
pub enum AttentionCache<B: Backend> {
    Kv(KvCache<B>),
    UqKv(UqKvCache<B>),
}

/// `[batch, len, heads * d]` -> `heads` tensors of `[batch, heads, len, d]`, in projection order.
pub(crate) fn split_heads<B: Backend>(
    y: Tensor<B, 3>,
    parts: usize,
    heads: usize,
) -> Vec<Tensor<B, 4>> {
    let [b, l, width] = y.dims();
    let d = width / (parts * heads);
    let y = y.reshape([b, l, parts * heads, d]).swap_dims(1, 2);
    (0..parts)
        .map(|p| {
            y.clone()
                .slice([0..b, p * heads..(p + 1) * heads, 0..l, 0..d])
        })
        .collect()
}

/// `[batch, heads, len, d]` -> `[batch, len, heads * d]`.
pub(crate) fn merge_heads<B: Backend>(o: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, h, l, d] = o.dims();
    o.swap_dims(1, 2).reshape([b, l, h * d])
}
