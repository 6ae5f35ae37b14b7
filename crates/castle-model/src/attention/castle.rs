//! The CASTLE attention layer: six projections per head (spec section 1), output projection.

use burn::nn::Linear;
use burn::prelude::*;

use super::lookahead::{
    attend, lookahead_scores_chunked, lookahead_scores_naive, CastleHeads, UqKvCache,
};
use super::{merge_heads, split_heads};
use crate::layers::linear;
use crate::rope::RopeTables;

/// How the training-time forward computes the lookahead scores; both are exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CastleMode {
    /// Theorem 1's O(L^3) parallel form: the reference.
    Naive,
    /// The O(L^2 d) chunked form with this block size: the training path.
    Chunked { block: usize },
}

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
}

impl<B: Backend> CastleAttention<B> {
    pub fn new(
        d_model: usize,
        n_heads: usize,
        head_dim: usize,
        window: Option<usize>,
        out_std: f64,
        device: &B::Device,
    ) -> Self {
        Self {
            in_proj: linear(d_model, 6 * n_heads * head_dim, 0.02, device),
            out: linear(n_heads * head_dim, d_model, out_std, device),
            n_heads,
            window,
        }
    }

    /// The per-head projections of `x: [batch, len, d_model]`, RoPE applied as `crate::rope` says.
    pub fn heads(&self, x: Tensor<B, 3>, rope: &RopeTables<B>) -> CastleHeads<B> {
        let [qu, ku, vu, qc, kc, vc] =
            <[_; 6]>::try_from(split_heads(self.in_proj.forward(x), 6, self.n_heads))
                .expect("six projections");
        CastleHeads {
            qu: rope.apply(qu),
            ku: rope.apply(ku),
            vu,
            qc: rope.apply(qc.clone()),
            kc: rope.apply(kc),
            vc,
            qc_nope: qc,
        }
    }

    /// Full-sequence forward; `rope` covers positions `0..len`.
    pub fn forward(&self, x: Tensor<B, 3>, rope: &RopeTables<B>, mode: CastleMode) -> Tensor<B, 3> {
        self.attend_all(&self.heads(x, rope), mode)
    }

    /// Forward over a prompt that also returns the UQ-KV cache for decoding after it.
    pub fn prefill(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        mode: CastleMode,
    ) -> (Tensor<B, 3>, UqKvCache<B>) {
        let h = self.heads(x, rope);
        (
            self.attend_all(&h, mode),
            UqKvCache::prefill(&h, self.window),
        )
    }

    fn attend_all(&self, h: &CastleHeads<B>, mode: CastleMode) -> Tensor<B, 3> {
        let lookahead = match mode {
            CastleMode::Naive => lookahead_scores_naive(h, self.window),
            CastleMode::Chunked { block } => lookahead_scores_chunked(h, self.window, block),
        };
        self.out.forward(merge_heads(attend(h, lookahead)))
    }

    /// One new token, `x: [batch, 1, d_model]`; `rope` covers position `cache.len()`.
    pub fn step(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        cache: &mut UqKvCache<B>,
    ) -> Tensor<B, 3> {
        let h = self.heads(x, rope);
        self.out.forward(merge_heads(cache.step(&h, self.window)))
    }
}
