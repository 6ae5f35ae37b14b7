//! The LLaMA-style decoder LM (docs/castle.md, section 6): token embedding, blocks of
//! pre-RMSNorm -> attention -> residual and pre-RMSNorm -> SwiGLU -> residual, final RMSNorm,
//! LM head (tied to the embedding by default). Only the attention differs between kinds.

use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::tensor::DType;

use castle_kernels::host::cross_entropy::CrossEntropyRows;
use castle_kernels::host::lm_loss::LmHeadLoss;
use castle_kernels::precision::{project, to_dtype};
use castle_kernels::rope::{Rope, RopeTables};
use castle_kernels::AttentionBackend;

use crate::attention::{AttentionCache, AttentionPath, CastleAttention, CausalSelfAttention};
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
    layers: Vec<AttentionCache<B>>,
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
                        d_model, heads, head_dim, out_std, device,
                    )),
                    AttentionKind::Castle | AttentionKind::CastleSwl => {
                        Attention::Castle(CastleAttention::new(
                            d_model,
                            heads,
                            head_dim,
                            self.lookahead_window(),
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

impl<B: AttentionBackend> CastleLm<B> {
    pub fn vocab_size(&self) -> usize {
        self.embed.weight.dims()[0]
    }

    /// Logits `[batch, len, vocab]` for `tokens: [batch, len]`, attention on the fused path.
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.forward_with(tokens, self.training_path())
    }

    fn training_path(&self) -> AttentionPath {
        AttentionPath::Kernel {
            block: self.config.block_size,
        }
    }

    /// [`CastleLm::forward`] with a chosen attention path (tests compare them).
    pub fn forward_with(&self, tokens: Tensor<B, 2, Int>, path: AttentionPath) -> Tensor<B, 3> {
        self.logits(self.hidden(tokens, path))
    }

    /// Per-token negative log-likelihood `[batch, len]` of `targets` after `inputs`
    /// (`[batch, len]` each), attention on the fused path: `token_nll(self.forward(inputs),
    /// targets)`, except that on CPU the LM head and the loss are one fused op
    /// ([`LmHeadLoss`]) that never holds the `tokens x vocab` logits.
    pub fn token_nll(&self, inputs: Tensor<B, 2, Int>, targets: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let x = self.hidden(inputs, self.training_path());
        if !B::HOST_KERNELS {
            return token_nll(self.logits(x), targets);
        }
        let [b, l, d] = x.dims();
        // The head as `[vocab, d]`; the loss in the parameters' type, as `logits` returns it.
        let w = match &self.lm_head {
            Some(head) => head.weight.val().transpose(),
            None => self.embed.weight.val(),
        };
        let x = to_dtype(self.norm.forward(x), w.dtype());
        let op = LmHeadLoss::new(d, self.vocab_size(), target_ids(targets));
        B::host_op(op, [x.reshape([-1]), w.reshape([-1])]).reshape([b, l])
    }

    /// The residual stream after the last block, before the final norm.
    fn hidden(&self, tokens: Tensor<B, 2, Int>, path: AttentionPath) -> Tensor<B, 3> {
        let len = tokens.dims()[1];
        let rope = self.rope(0, len, &tokens.device());
        let mut x = self.embed_tokens(tokens);
        for block in &self.blocks {
            let h = block.attn_norm.forward(x.clone());
            let a = match &block.attn {
                Attention::Baseline(attn) => attn.forward(h, &rope, path),
                Attention::Castle(attn) => attn.forward(h, &rope, path),
            };
            x = block.feed_forward(x + a);
        }
        x
    }

    /// Forward over a prompt `[batch, len]` that also returns the decoding cache.
    pub fn prefill(&self, tokens: Tensor<B, 2, Int>) -> (Tensor<B, 3>, LmCache<B>) {
        let len = tokens.dims()[1];
        let rope = self.rope(0, len, &tokens.device());
        let path = self.training_path();
        let mut x = self.embed_tokens(tokens);
        let mut layers = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let h = block.attn_norm.forward(x.clone());
            let (a, cache) = match &block.attn {
                Attention::Baseline(attn) => {
                    let (a, c) = attn.prefill(h, &rope, path);
                    (a, AttentionCache::Kv(c))
                }
                Attention::Castle(attn) => {
                    let (a, c) = attn.prefill(h, &rope, path);
                    (a, AttentionCache::UqKv(c))
                }
            };
            layers.push(cache);
            x = block.feed_forward(x + a);
        }
        (self.logits(x), LmCache { layers, len })
    }

    /// Logits `[batch, 1, vocab]` for one new token `[batch, 1]` after the cached positions.
    pub fn decode(&self, token: Tensor<B, 2, Int>, cache: &mut LmCache<B>) -> Tensor<B, 3> {
        let rope = self.rope(cache.len, 1, &token.device());
        let mut x = self.embed_tokens(token);
        for (block, layer_cache) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            let h = block.attn_norm.forward(x.clone());
            let a = match (&block.attn, layer_cache) {
                (Attention::Baseline(attn), AttentionCache::Kv(c)) => attn.step(h, &rope, c),
                (Attention::Castle(attn), AttentionCache::UqKv(c)) => attn.step(h, &rope, c),
                _ => unreachable!("a cache is built by its own layer's prefill"),
            };
            x = block.feed_forward(x + a);
        }
        cache.len += 1;
        self.logits(x)
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

impl<B: AttentionBackend> Block<B> {
    fn feed_forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        x.clone() + self.mlp.forward(self.mlp_norm.forward(x))
    }
}

/// Per-token negative log-likelihood `[batch, len]` of `targets` under `logits`; one fused
/// softmax cross-entropy kernel on CPU. Training calls [`CastleLm::token_nll`], which fuses the
/// LM head in too.
pub fn token_nll<B: AttentionBackend>(
    logits: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
) -> Tensor<B, 2> {
    if !B::HOST_KERNELS {
        return token_nll_reference(logits, targets);
    }
    let [b, l, vocab] = logits.dims();
    let op = CrossEntropyRows::new(vocab, target_ids(targets));
    B::host_op(op, [logits.reshape([-1])]).reshape([b, l])
}

/// `targets` as host token ids, row-major; a negative id becomes `usize::MAX`, which the ops
/// reject as outside the vocabulary.
fn target_ids<B: Backend>(targets: Tensor<B, 2, Int>) -> Vec<usize> {
    targets
        .into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .expect("targets converted to i64")
        .into_iter()
        .map(|t| usize::try_from(t).unwrap_or(usize::MAX))
        .collect()
}

/// [`token_nll`] in tensor ops (`log_softmax` and `gather`): the reference, and the GPU path.
pub fn token_nll_reference<B: Backend>(
    logits: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
) -> Tensor<B, 2> {
    let [b, l, _] = logits.dims();
    log_softmax(logits, 2)
        .gather(2, targets.reshape([b, l, 1]))
        .reshape([b, l])
        .neg()
}
