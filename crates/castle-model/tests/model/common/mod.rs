//! Shared test helpers: castle-kernels' (random tensors, the independent slow reference of
//! docs/castle.md, section 1) and the attention paths and tiny models of castle-model's tests.
#![allow(dead_code)] // each test binary uses a different subset

#[path = "../../../../castle-kernels/tests/kernels/common.rs"]
mod kernels;

pub use kernels::*;

use burn::prelude::*;
use castle_kernels::precision::{project, to_dtype};
use castle_kernels::reference::{
    attend, causal_attention, lookahead_scores_chunked, lookahead_scores_naive, merge_heads,
    rms_norm, split_heads, swiglu_gate, CastleHeads,
};
use castle_model::attention::UqKvCache;
use castle_model::layers::RmsNorm;
use castle_model::lm::Attention;
use castle_model::{CastleLm, KernelBackend};
use rand::Rng;

/// Which way to compute the attention output.
#[derive(Debug, Clone, Copy)]
pub enum Path {
    Naive,
    Chunked(usize),
    /// Prefill this many positions, then decode the rest one at a time.
    Cached(usize),
    /// The backend's fused kernel (`KernelBackend::castle_attention`) with this block size.
    Fused(usize),
}

pub fn run_path<B: KernelBackend>(x: &RawHeads, window: Option<usize>, path: Path) -> Vec<f64> {
    let device = Default::default();
    let l = x.shape[2];
    let out = match path {
        Path::Naive => {
            let h = x.to_tensors::<B>(&device);
            attend(&h, lookahead_scores_naive(&h, window))
        }
        Path::Chunked(block) => {
            let h = x.to_tensors::<B>(&device);
            attend(&h, lookahead_scores_chunked(&h, window, block))
        }
        Path::Fused(block) => B::castle_attention(&x.to_tensors::<B>(&device), window, block),
        Path::Cached(prefill) => {
            let prompt: CastleHeads<B> = x.positions(0..prefill, &device);
            let mut outputs = vec![attend(&prompt, lookahead_scores_naive(&prompt, window))];
            let mut cache = UqKvCache::prefill(&prompt, window);
            for t in prefill..l {
                outputs.push(cache.step(&x.positions(t..t + 1, &device), window));
            }
            assert_eq!(cache.len(), l);
            Tensor::cat(outputs, 2)
        }
    };
    values(out)
}

/// Every (length, block, window, prefill) combination the issue asks for.
pub fn cases() -> Vec<(usize, Option<usize>, Path)> {
    let mut cases = vec![];
    for l in [1usize, 7, 64, 100] {
        for window in [None, Some(1), Some(5), Some(40)] {
            cases.push((l, window, Path::Naive));
            for block in [1, 3, 16, 64] {
                cases.push((l, window, Path::Chunked(block)));
                cases.push((l, window, Path::Fused(block)));
            }
            for prefill in [1, l.div_ceil(2), l] {
                cases.push((l, window, Path::Cached(prefill)));
            }
        }
    }
    cases
}

pub fn check_against_reference<B: KernelBackend>(
    tolerance: f64,
    batch: usize,
    heads: usize,
    d: usize,
) {
    for (seed, (l, window, path)) in cases().into_iter().enumerate() {
        let x = RawHeads::random([batch, heads, l, d], seed as u64);
        let expected = reference_output(&x, window);
        let got = run_path::<B>(&x, window, path);
        let err = max_abs_diff(&expected, &got);
        assert!(
            err < tolerance,
            "L={l} window={window:?} {path:?}: max abs error {err:e} >= {tolerance:e}"
        );
    }
}

/// A tiny model of the given kind: 2 layers, d_model 32, 4 baseline heads of dimension 8.
pub fn tiny_config(kind: castle_model::AttentionKind) -> castle_model::ModelConfig {
    let window = (kind == castle_model::AttentionKind::CastleSwl).then_some(3);
    let mut config = castle_model::ModelConfig::new(2, 32, 4, 8).with_attention(kind, window);
    config.block_size = 4;
    config.max_seq_len = 64;
    config
}

/// Random token ids `[batch, len]` below `vocab`.
pub fn random_tokens<B: Backend>(
    batch: usize,
    len: usize,
    vocab: usize,
    seed: u64,
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    let mut r = rng(seed);
    let ids: Vec<i64> = (0..batch * len)
        .map(|_| r.random_range(0..vocab as i64))
        .collect();
    Tensor::from_data(TensorData::new(ids, [batch, len]), device)
}

/// How [`reference_logits`] computes CASTLE's lookahead scores.
#[derive(Debug, Clone, Copy)]
pub enum Scores {
    /// Theorem 1's O(L^3) parallel form.
    Naive,
    /// The O(L^2 d) chunked form with this block size.
    Chunked(usize),
}

/// `model`'s logits for `tokens` from position 0, computed from its parameters with
/// castle-kernels' tensor-op references only (none of the backend's kernels): the reference
/// the model's own forward is tested against.
pub fn reference_logits<B: Backend>(
    model: &CastleLm<B>,
    tokens: Tensor<B, 2, Int>,
    scores: Scores,
) -> Tensor<B, 3> {
    let norm = |n: &RmsNorm<B>, x: Tensor<B, 3>| rms_norm(x, n.gamma.val(), n.eps);
    let rope = model
        .rope
        .tables::<B>(0, tokens.dims()[1], &tokens.device());
    let rotate = |x: &Tensor<B, 4>| rope.apply_reference(x.clone());
    let mut x = model.embed.forward(tokens);
    if let Some(dtype) = model.compute_dtype {
        x = to_dtype(x, dtype);
    }
    for block in &model.blocks {
        let h = norm(&block.attn_norm, x.clone());
        let o = match &block.attn {
            Attention::Baseline(attn) => {
                let p: [_; 3] = split_heads(project(&attn.qkv, h), attn.n_heads);
                let o = causal_attention(rotate(&p[0]), rotate(&p[1]), p[2].clone());
                project(&attn.out, merge_heads(o))
            }
            Attention::Castle(attn) => {
                let p: [_; 6] = split_heads(project(&attn.in_proj, h), attn.n_heads);
                let heads = CastleHeads {
                    qu: rotate(&p[0]),
                    ku: rotate(&p[1]),
                    vu: p[2].clone(),
                    qc: rotate(&p[3]),
                    kc: rotate(&p[4]),
                    vc: p[5].clone(),
                    qc_nope: p[3].clone(),
                };
                let s = match scores {
                    Scores::Naive => lookahead_scores_naive(&heads, attn.window),
                    Scores::Chunked(block) => lookahead_scores_chunked(&heads, attn.window, block),
                };
                project(&attn.out, merge_heads(attend(&heads, s)))
            }
        };
        x = x + o;
        let h = norm(&block.mlp_norm, x.clone());
        let mlp = &block.mlp;
        let gate = swiglu_gate(project(&mlp.gate, h.clone()), project(&mlp.up, h));
        x = x.clone() + project(&mlp.down, gate);
    }
    let x = norm(&model.norm, x);
    let weight = model.embed.weight.val();
    let dtype = weight.dtype();
    let logits = match &model.lm_head {
        Some(head) => project(head, x),
        None => x
            .clone()
            .matmul(to_dtype(weight, x.dtype()).transpose().unsqueeze()),
    };
    to_dtype(logits, dtype)
}

/// `model` with its attention layers' kernel block size set to `block`.
pub fn with_block<B: Backend>(mut model: CastleLm<B>, block: usize) -> CastleLm<B> {
    model.config.block_size = block;
    for b in &mut model.blocks {
        match &mut b.attn {
            Attention::Baseline(attn) => attn.block = block,
            Attention::Castle(attn) => attn.block = block,
        }
    }
    model
}
