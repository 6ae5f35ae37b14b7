//! The CASTLE attention layer: six projections per head (docs/castle.md, section 1), output projection.

use burn::nn::Linear;
use burn::prelude::*;

use castle_kernels::backend::castle_heads;
use castle_kernels::reference::merge_heads;
use castle_kernels::rope::RopeTables;
use castle_kernels::KernelBackend;

use super::uq_kv::UqKvCache;
use super::AttentionCache;
use crate::layers::linear;

#[derive(Module, Debug)]
pub struct CastleAttention<B: Backend> {
    /// `W_UQ, W_UK, W_UV, W_CQ, W_CK, W_CV` of all heads, `d_model -> 6 n d`.
    pub in_proj: Linear<B>,
    /// `W_O`, `n d -> d_model`.
    pub out: Linear<B>,
    #[module(skip)]
    pub n_heads: usize,
    /// CASTLE-SWL's lookahead window `W` (eq. 9); `None` for plain CASTLE.
    #[module(skip)]
    pub window: Option<usize>,
    /// Positions per block of the chunked form (`model.block_size`).
    #[module(skip)]
    pub block: usize,
}

impl<B: Backend> CastleAttention<B> {
    pub fn new(
        d_model: usize,
        n_heads: usize,
        head_dim: usize,
        window: Option<usize>,
        block: usize,
        out_std: f64,
        device: &B::Device,
    ) -> Self {
        Self {
            in_proj: linear(d_model, 6 * n_heads * head_dim, 0.02, device),
            out: linear(n_heads * head_dim, d_model, out_std, device),
            n_heads,
            window,
            block,
        }
    }
}

impl<B: KernelBackend> CastleAttention<B> {
    /// `x: [batch, len, d_model]` at the positions `rope` covers. With no cache, a full
    /// sequence from position 0; with an empty cache, a prompt whose UQ-KV cache it fills
    /// (eq. 3-4 at its last position); with a filled one, each new position in turn (eq. 13).
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        cache: Option<&mut AttentionCache<B>>,
    ) -> Tensor<B, 3> {
        let y = B::project(&self.in_proj, x);
        let Some(cache) = cache else {
            let o = B::castle_attention_projected(y, self.n_heads, self.window, self.block, rope);
            return B::project(&self.out, o);
        };
        let h = castle_heads(y, self.n_heads, rope);
        let o = match cache {
            AttentionCache::Empty => {
                let o = B::castle_attention(&h, self.window, self.block);
                *cache = AttentionCache::UqKv(UqKvCache::prefill(&h, self.window));
                o
            }
            AttentionCache::UqKv(cache) => cache.step(&h, self.window),
            // A programming error, not a user's: only `CastleLm::prefill` builds caches, one per
            // layer of its own model; this is another model's cache passed to `decode`.
            AttentionCache::Kv(_) => panic!("a CASTLE layer was given a baseline layer's cache"),
        };
        B::project(&self.out, merge_heads(o))
    }
}
