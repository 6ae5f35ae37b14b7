//! [`CastleLm`] with its fused attention projections split into one `Linear` each: the module
//! tree the safetensors file is written from and read into.

use burn::module::{ModuleVisitor, Param};
use burn::nn::{Embedding, Linear};
use burn::prelude::*;

use crate::layers::{RmsNorm, SwiGlu};
use crate::lm::{Attention, CastleLm};

#[derive(Module, Debug)]
pub struct SplitLm<B: Backend> {
    pub embed: Embedding<B>,
    pub blocks: Vec<SplitBlock<B>>,
    pub norm: RmsNorm<B>,
    pub lm_head: Option<Linear<B>>,
}

#[derive(Module, Debug)]
pub struct SplitBlock<B: Backend> {
    pub attn_norm: RmsNorm<B>,
    pub attn: SplitAttention<B>,
    pub mlp_norm: RmsNorm<B>,
    pub mlp: SwiGlu<B>,
}

/// One layer's projections; `uq/uk/uv_proj` only for CASTLE, whose `q/k/v_proj` are the causal
/// `W_CQ, W_CK, W_CV`.
#[derive(Module, Debug)]
pub struct SplitAttention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub o_proj: Linear<B>,
    pub uq_proj: Option<Linear<B>>,
    pub uk_proj: Option<Linear<B>>,
    pub uv_proj: Option<Linear<B>>,
}

/// A bias-free `Linear` holding `weight` (`[in, out]`) as a fresh parameter.
fn linear<B: Backend>(weight: Tensor<B, 2>) -> Linear<B> {
    Linear {
        weight: Param::from_tensor(weight.detach()),
        bias: None,
    }
}

/// Initialises every lazily initialised parameter it visits in place.
struct Materialize;

impl<B: Backend> ModuleVisitor<B> for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        param.val();
    }
}

/// The split view of `model` (weights shared, not copied, except the sliced projections).
pub fn split<B: Backend>(model: &CastleLm<B>) -> SplitLm<B> {
    // A clone of a parameter not initialised yet would draw its own random values.
    model.visit(&mut Materialize);
    SplitLm {
        embed: model.embed.clone(),
        blocks: model
            .blocks
            .iter()
            .map(|block| SplitBlock {
                attn_norm: block.attn_norm.clone(),
                attn: split_attention(&block.attn),
                mlp_norm: block.mlp_norm.clone(),
                mlp: block.mlp.clone(),
            })
            .collect(),
        norm: model.norm.clone(),
        lm_head: model.lm_head.clone(),
    }
}

/// The fused weight's `[d_model, parts * n d]` columns are the projections in order (baseline
/// `Q, K, V`; CASTLE `UQ, UK, UV, CQ, CK, CV`), as `attention::split_heads` reads them.
fn split_attention<B: Backend>(attn: &Attention<B>) -> SplitAttention<B> {
    let (fused, parts, out) = match attn {
        Attention::Baseline(a) => (&a.qkv, 3, &a.out),
        Attention::Castle(a) => (&a.in_proj, 6, &a.out),
    };
    assert!(fused.bias.is_none(), "castle's projections have no bias");
    let weight = fused.weight.val();
    let [d_in, width] = weight.dims();
    let part = width / parts;
    let mut projections: Vec<Linear<B>> = (0..parts)
        .map(|p| linear(weight.clone().slice([0..d_in, p * part..(p + 1) * part])))
        .collect();
    let [q, k, v] = <[_; 3]>::try_from(projections.split_off(parts - 3)).expect("three");
    let mut lookahead = projections.into_iter();
    SplitAttention {
        q_proj: q,
        k_proj: k,
        v_proj: v,
        o_proj: out.clone(),
        uq_proj: lookahead.next(),
        uk_proj: lookahead.next(),
        uv_proj: lookahead.next(),
    }
}

/// Puts `split`'s weights into `model` (of the same shape), fusing the projections back.
pub fn fuse<B: Backend>(split: SplitLm<B>, mut model: CastleLm<B>) -> CastleLm<B> {
    model.embed = split.embed;
    model.norm = split.norm;
    model.lm_head = split.lm_head;
    for (block, s) in model.blocks.iter_mut().zip(split.blocks) {
        block.attn_norm = s.attn_norm;
        block.mlp_norm = s.mlp_norm;
        block.mlp = s.mlp;
        let a = s.attn;
        let parts: Vec<Tensor<B, 2>> = [a.uq_proj, a.uk_proj, a.uv_proj]
            .into_iter()
            .flatten()
            .chain([a.q_proj, a.k_proj, a.v_proj])
            .map(|l| l.weight.val())
            .collect();
        let fused = linear(Tensor::cat(parts, 1));
        match &mut block.attn {
            Attention::Baseline(attn) => (attn.qkv, attn.out) = (fused, a.o_proj),
            Attention::Castle(attn) => (attn.in_proj, attn.out) = (fused, a.o_proj),
        }
    }
    model
}
