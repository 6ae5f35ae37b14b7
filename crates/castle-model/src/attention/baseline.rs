//! The baseline: multi-head causal softmax attention with RoPE and a KV cache.

use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::activation::softmax;

use super::cache::CacheRows;
use super::heads::{host_attention, merge_heads, split_heads};
use super::path::AttentionPath;
use castle_kernels::host::heads::Source;
use castle_kernels::host::linear::fused_project;
use castle_kernels::host::Causal;
use castle_kernels::precision::project;
use castle_kernels::reference::{causal_attention, scale};
use castle_kernels::rope::RopeTables;
use castle_kernels::AttentionBackend;

use crate::layers::linear;

/// The host kernel's inputs `q, k, v` as parts of `qkv`'s output, `q` and `k` rotated.
pub const SOURCES: [Source; 3] = [Source::rotated(0), Source::rotated(1), Source::plain(2)];

#[derive(Module, Debug)]
pub struct CausalSelfAttention<B: Backend> {
    /// `W_Q, W_K, W_V` of all heads, `d_model -> 3 n d`.
    pub qkv: Linear<B>,
    /// `W_O`, `n d -> d_model`.
    pub out: Linear<B>,
    #[module(skip)]
    pub n_heads: usize,
}

/// Keys and values of the positions seen so far, `[batch, heads, t, d]`.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    k: CacheRows<B>,
    v: CacheRows<B>,
}

impl<B: Backend> KvCache<B> {
    pub fn len(&self) -> usize {
        self.k.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<B: Backend> CausalSelfAttention<B> {
    pub fn new(
        d_model: usize,
        n_heads: usize,
        head_dim: usize,
        out_std: f64,
        device: &B::Device,
    ) -> Self {
        Self {
            qkv: linear(d_model, 3 * n_heads * head_dim, 0.02, device),
            out: linear(n_heads * head_dim, d_model, out_std, device),
            n_heads,
        }
    }
}

impl<B: AttentionBackend> CausalSelfAttention<B> {
    fn project(&self, x: Tensor<B, 3>, rope: &RopeTables<B>) -> [Tensor<B, 4>; 3] {
        let [q, k, v] = <[_; 3]>::try_from(split_heads(project(&self.qkv, x), 3, self.n_heads))
            .expect("three projections");
        [rope.apply(q), rope.apply(k), v]
    }

    /// Full-sequence forward, `x: [batch, len, d_model]`; `rope` covers positions `0..len`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        path: AttentionPath,
    ) -> Tensor<B, 3> {
        match path {
            AttentionPath::Kernel { block } if B::HOST_KERNELS => {
                let y = fused_project(&self.qkv, x);
                let o = host_attention(y, Causal { block }, SOURCES, self.n_heads, rope);
                fused_project(&self.out, o)
            }
            _ => {
                let [q, k, v] = self.project(x, rope);
                project(&self.out, merge_heads(attend(q, k, v, path)))
            }
        }
    }

    /// Forward over a prompt that also returns the cache for decoding after it.
    pub fn prefill(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        path: AttentionPath,
    ) -> (Tensor<B, 3>, KvCache<B>) {
        let [q, k, v] = self.project(x, rope);
        let out = attend(q, k.clone(), v.clone(), path);
        let cache = KvCache {
            k: CacheRows::new(k),
            v: CacheRows::new(v),
        };
        (project(&self.out, merge_heads(out)), cache)
    }

    /// One new token, `x: [batch, 1, d_model]`; `rope` covers position `cache.len()`.
    pub fn step(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 3> {
        let [q, k, v] = self.project(x, rope);
        cache.k.push(k);
        cache.v.push(v);
        let d = q.dims()[3];
        let p = softmax(q.matmul(cache.k.rows().swap_dims(2, 3)) * scale(d), 3);
        project(&self.out, merge_heads(p.matmul(cache.v.rows())))
    }
}

fn attend<B: AttentionBackend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    path: AttentionPath,
) -> Tensor<B, 4> {
    match path {
        AttentionPath::Naive | AttentionPath::Chunked { .. } => causal_attention(q, k, v),
        AttentionPath::Kernel { block } => B::causal_attention(q, k, v, block),
    }
}
