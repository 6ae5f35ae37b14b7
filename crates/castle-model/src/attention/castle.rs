//! The CASTLE attention layer: six projections per head (docs/castle.md, section 1), output projection.

use burn::nn::Linear;
use burn::prelude::*;

use castle_kernels::host::heads::Source;
use castle_kernels::host::linear::fused_project;
use castle_kernels::host::Castle;
use castle_kernels::precision::project;
use castle_kernels::reference::{
    attend, lookahead_scores_chunked, lookahead_scores_naive, CastleHeads,
};
use castle_kernels::rope::RopeTables;
use castle_kernels::AttentionBackend;

use super::heads::{host_attention, merge_heads, split_heads};
use super::path::AttentionPath;
use super::uq_kv::UqKvCache;
use crate::layers::linear;

/// The host kernel's inputs `qu, ku, vu, qc, kc, vc, qc_nope` as parts of `in_proj`'s output,
/// rotated as [`CastleAttention::heads`] does.
pub const SOURCES: [Source; 7] = [
    Source::rotated(0),
    Source::rotated(1),
    Source::plain(2),
    Source::rotated(3),
    Source::rotated(4),
    Source::plain(5),
    Source::plain(3),
];

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
}

impl<B: AttentionBackend> CastleAttention<B> {
    /// The per-head projections of `x: [batch, len, d_model]`, RoPE applied as `castle_kernels::rope` says.
    pub fn heads(&self, x: Tensor<B, 3>, rope: &RopeTables<B>) -> CastleHeads<B> {
        let [qu, ku, vu, qc, kc, vc] =
            <[_; 6]>::try_from(split_heads(project(&self.in_proj, x), 6, self.n_heads))
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
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        path: AttentionPath,
    ) -> Tensor<B, 3> {
        match path {
            AttentionPath::Kernel { block } if B::HOST_KERNELS => {
                let kernel = Castle {
                    window: self.window,
                    block,
                };
                let y = fused_project(&self.in_proj, x);
                let o = host_attention(y, kernel, SOURCES, self.n_heads, rope);
                fused_project(&self.out, o)
            }
            _ => self.attend_all(&self.heads(x, rope), path),
        }
    }

    /// Forward over a prompt that also returns the UQ-KV cache for decoding after it.
    pub fn prefill(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        path: AttentionPath,
    ) -> (Tensor<B, 3>, UqKvCache<B>) {
        let h = self.heads(x, rope);
        (
            self.attend_all(&h, path),
            UqKvCache::prefill(&h, self.window),
        )
    }

    fn attend_all(&self, h: &CastleHeads<B>, path: AttentionPath) -> Tensor<B, 3> {
        let o = match path {
            AttentionPath::Naive => attend(h, lookahead_scores_naive(h, self.window)),
            AttentionPath::Chunked { block } => {
                attend(h, lookahead_scores_chunked(h, self.window, block))
            }
            AttentionPath::Kernel { block } => B::castle_attention(h, self.window, block),
        };
        project(&self.out, merge_heads(o))
    }

    /// One new token, `x: [batch, 1, d_model]`; `rope` covers position `cache.len()`.
    pub fn step(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        cache: &mut UqKvCache<B>,
    ) -> Tensor<B, 3> {
        let h = self.heads(x, rope);
        project(&self.out, merge_heads(cache.step(&h, self.window)))
    }
}
