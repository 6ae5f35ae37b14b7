//! The LLaMA-style decoder LM (docs/castle.md, section 6): token embedding, blocks of
//! pre-RMSNorm -> attention -> residual and pre-RMSNorm -> SwiGLU -> residual, final RMSNorm,
//! LM head (tied to the embedding by default). Only the attention differs between kinds.

use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear};
use burn::prelude::*;
use burn::tensor::DType;

use castle_kernels::precision::{project, to_dtype};
use castle_kernels::rope::{Rope, RopeTables};
use castle_kernels::KernelBackend;

use crate::attention::{AttentionCache, CastleAttention, CausalSelfAttention};
use crate::config::{AttentionKind, ModelConfig};
use crate::layers::{linear, RmsNorm, SwiGlu};

const NORM_EPS: f64 = 1e-5;

#[derive(Module, Debug)]
pub enum Attention<B: Backend> {
    Baseline(CausalSelfAttention<B>),
    Castle(CastleAttention<B>),
}

#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub attn_norm: RmsNorm<B>,
    pub attn: Attention<B>,
    pub mlp_norm: RmsNorm<B>,
    pub mlp: SwiGlu<B>,
}

#[derive(Module, Debug)]
pub struct CastleLm<B: Backend> {
    pub embed: Embedding<B>,
    pub blocks: Vec<Block<B>>,
    pub norm: RmsNorm<B>,
    /// `None` when tied to `embed`.
    pub lm_head: Option<Linear<B>>,
    #[module(skip)]
    pub config: ModelConfig,
    /// RoPE's cos/sin tables of every position, computed once.
    #[module(skip)]
    pub rope: Rope,
    /// The float type of the forward pass (`castle_kernels::precision`); `None`: the parameters' own.
    #[module(skip)]
    pub compute_dtype: Option<DType>,
}

/// Decoding state: one cache per layer and the number of positions seen.
#[derive(Debug, Clone)]
pub struct LmCache<B: Backend> {
    pub(crate) layers: Vec<AttentionCache<B>>,
    len: usize,
}

impl<B: Backend> LmCache<B> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl ModelConfig {
    /// Builds the LM with GPT-2's initialisation: N(0, 0.02), residual projections scaled by
    /// `1/sqrt(2 layers)`. Call [`ModelConfig::validate`] first.
    pub fn init<B: Backend>(&self, vocab_size: usize, device: &B::Device) -> CastleLm<B> {
        let (d_model, heads, head_dim) = (self.d_model, self.n_heads(), self.head_dim);
        let out_std = 0.02 / (2.0 * self.layers as f64).sqrt();
        let blocks = (0..self.layers)
            .map(|_| Block {
                attn_norm: RmsNorm::new(d_model, NORM_EPS, device),
                attn: match self.attention {
                    AttentionKind::Baseline => Attention::Baseline(CausalSelfAttention::new(
                        d_model,
                        heads,
                        head_dim,
                        self.block_size,
                        out_std,
                        device,
                    )),
                    AttentionKind::Castle | AttentionKind::CastleSwl => {
                        Attention::Castle(CastleAttention::new(
                            d_model,
                            heads,
                            head_dim,
                            self.lookahead_window(),
                            self.block_size,
                            out_std,
                            device,
                        ))
                    }
                },
                mlp_norm: RmsNorm::new(d_model, NORM_EPS, device),
                mlp: SwiGlu::new(d_model, self.mlp_hidden(), out_std, device),
            })
            .collect();
        CastleLm {
            embed: EmbeddingConfig::new(vocab_size, d_model)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: 0.02,
                })
                .init(device),
            blocks,
            norm: RmsNorm::new(d_model, NORM_EPS, device),
            lm_head: (!self.tie_embeddings).then(|| linear(d_model, vocab_size, 0.02, device)),
            config: self.clone(),
            rope: Rope::new(self.max_seq_len, self.head_dim, self.rope_theta),
            compute_dtype: None,
        }
    }
}

impl<B: KernelBackend> CastleLm<B> {
    pub fn vocab_size(&self) -> usize {
        self.embed.weight.dims()[0]
    }

    /// Logits `[batch, len, vocab]` for `tokens: [batch, len]`.
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.logits(self.hidden(tokens, None))
    }

    /// Per-token negative log-likelihood `[batch, len]` of `targets` after `inputs`
    /// (`[batch, len]` each): `token_nll(self.forward(inputs), targets)`, with the LM head and
    /// the loss one fused op ([`KernelBackend::lm_head_nll`]; on CPU it never holds the
    /// `tokens x vocab` logits).
    pub fn token_nll(&self, inputs: Tensor<B, 2, Int>, targets: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let x = self.hidden(inputs, None);
        // The head as `[vocab, d]`; the loss in the parameters' type, as `logits` returns it.
        let w = match &self.lm_head {
            Some(head) => head.weight.val().transpose(),
            None => self.embed.weight.val(),
        };
        let x = to_dtype(self.norm.forward(x), w.dtype());
        B::lm_head_nll(x, w, targets)
    }

    /// Forward over a prompt `[batch, len]` that also returns the decoding cache.
    pub fn prefill(&self, tokens: Tensor<B, 2, Int>) -> (Tensor<B, 3>, LmCache<B>) {
        let mut cache = LmCache {
            layers: vec![AttentionCache::Empty; self.blocks.len()],
            len: 0,
        };
        let logits = self.logits(self.hidden(tokens, Some(&mut cache)));
        (logits, cache)
    }

    /// Logits `[batch, n, vocab]` for new tokens `[batch, n]` after the cached positions.
    pub fn decode(&self, tokens: Tensor<B, 2, Int>, cache: &mut LmCache<B>) -> Tensor<B, 3> {
        self.logits(self.hidden(tokens, Some(cache)))
    }

    /// The residual stream after the last block, before the final norm, for `tokens` at the
    /// positions after those `cache` holds (from 0 without one).
    fn hidden(
        &self,
        tokens: Tensor<B, 2, Int>,
        mut cache: Option<&mut LmCache<B>>,
    ) -> Tensor<B, 3> {
        let start = cache.as_ref().map_or(0, |c| c.len);
        let len = tokens.dims()[1];
        let rope = self.rope(start, len, &tokens.device());
        let mut x = self.embed_tokens(tokens);
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(x, &rope, cache.as_mut().map(|c| &mut c.layers[i]));
        }
        if let Some(cache) = cache {
            cache.len += len;
        }
        x
    }

    fn rope(&self, start: usize, len: usize, device: &B::Device) -> RopeTables<B> {
        self.rope.tables(start, len, device)
    }

    /// Token embeddings in the compute type.
    fn embed_tokens(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let x = self.embed.forward(tokens);
        match self.compute_dtype {
            Some(dtype) => to_dtype(x, dtype),
            None => x,
        }
    }

    /// Logits in the parameters' type (f32 under bf16 compute, for the loss).
    fn logits(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = self.norm.forward(x);
        let weight = self.embed.weight.val();
        let dtype = weight.dtype();
        let logits = match &self.lm_head {
            Some(head) => project(head, x),
            None => {
                let w = to_dtype(weight, x.dtype());
                x.matmul(w.transpose().unsqueeze())
            }
        };
        to_dtype(logits, dtype)
    }
}

impl<B: KernelBackend> Block<B> {
    /// Pre-norm residual block: `x + attn(norm(x))`, then `x + mlp(norm(x))`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        cache: Option<&mut AttentionCache<B>>,
    ) -> Tensor<B, 3> {
        let h = self.attn_norm.forward(x.clone());
        let x = x + match &self.attn {
            Attention::Baseline(attn) => attn.forward(h, rope, cache),
            Attention::Castle(attn) => attn.forward(h, rope, cache),
        };
        x.clone() + self.mlp.forward(self.mlp_norm.forward(x))
    }
}
