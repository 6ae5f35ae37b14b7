//! The baseline: multi-head causal softmax attention with RoPE and a KV cache.

use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::activation::softmax;

use castle_kernels::backend::causal_heads;
use castle_kernels::reference::{merge_heads, scale};
use castle_kernels::rope::RopeTables;
use castle_kernels::KernelBackend;

use super::cache::CacheRows;
use super::AttentionCache;
use crate::layers::linear;

#[derive(Module, Debug)]
pub struct CausalSelfAttention<B: Backend> {
    /// `W_Q, W_K, W_V` of all heads, `d_model -> 3 n d`.
    pub qkv: Linear<B>,
    /// `W_O`, `n d -> d_model`.
    pub out: Linear<B>,
    #[module(skip)]
    pub n_heads: usize,
    /// Positions per block of the attention kernel (`model.block_size`).
    #[module(skip)]
    pub block: usize,
}

/// Keys and values of the positions seen so far, `[batch, heads, t, d]`.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    k: CacheRows<B>,
    v: CacheRows<B>,
}

impl<B: Backend> KvCache<B> {
    /// The cached `[k, v]`, `[batch, heads, t, d]` each.
    pub(crate) fn rows(&self) -> [Tensor<B, 4>; 2] {
        [self.k.rows(), self.v.rows()]
    }

    pub fn len(&self) -> usize {
        self.k.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `k`, `v` of new positions and attends from each one's query in `q` to every
    /// position up to its own: `[batch, heads, n, d]`.
    fn step(&mut self, q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, h, n, d] = q.dims();
        if n > 1 {
            let at = |x: &Tensor<B, 4>, t: usize| x.clone().slice([0..b, 0..h, t..t + 1, 0..d]);
            let outputs = (0..n).map(|t| self.step(at(&q, t), at(&k, t), at(&v, t)));
            return Tensor::cat(outputs.collect(), 2);
        }
        self.k.push(k);
        self.v.push(v);
        let p = softmax(q.matmul(self.k.rows().swap_dims(2, 3)) * scale(d), 3);
        p.matmul(self.v.rows())
    }
}

impl<B: Backend> CausalSelfAttention<B> {
    pub fn new(
        d_model: usize,
        n_heads: usize,
        head_dim: usize,
        block: usize,
        out_std: f64,
        device: &B::Device,
    ) -> Self {
        Self {
            qkv: linear(d_model, 3 * n_heads * head_dim, 0.02, device),
            out: linear(n_heads * head_dim, d_model, out_std, device),
            n_heads,
            block,
        }
    }
}

impl<B: KernelBackend> CausalSelfAttention<B> {
    /// `x: [batch, len, d_model]` at the positions `rope` covers. With no cache, a full
    /// sequence from position 0; with an empty cache, a prompt whose keys and values it keeps;
    /// with a filled one, the new positions after those cached.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        cache: Option<&mut AttentionCache<B>>,
    ) -> Tensor<B, 3> {
        let y = B::project(&self.qkv, x);
        let Some(cache) = cache else {
            let o = B::causal_attention_projected(y, self.n_heads, self.block, rope);
            return B::project(&self.out, o);
        };
        let [q, k, v] = causal_heads(y, self.n_heads, rope);
        let o = match cache {
            AttentionCache::Empty => {
                let o = B::causal_attention(q, k.clone(), v.clone(), self.block);
                *cache = AttentionCache::Kv(KvCache {
                    k: CacheRows::new(k),
                    v: CacheRows::new(v),
                });
                o
            }
            AttentionCache::Kv(cache) => cache.step(q, k, v),
            // A programming error, as in `CastleAttention::forward`: another model's cache.
            AttentionCache::UqKv(_) => panic!("a baseline layer was given a CASTLE layer's cache"),
        };
        B::project(&self.out, merge_heads(o))
    }
}
