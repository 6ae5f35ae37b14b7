//! Shared test helpers: castle-kernels' (random tensors, the independent slow reference of
//! docs/castle.md, section 1) and the attention paths and tiny models of castle-model's tests.
#![allow(dead_code)] // each test binary uses a different subset

#[path = "../../../../castle-kernels/tests/kernels/common.rs"]
mod kernels;

pub use kernels::*;

use burn::prelude::*;
use castle_kernels::reference::{
    attend, lookahead_scores_chunked, lookahead_scores_naive, CastleHeads,
};
use castle_model::attention::UqKvCache;
use castle_model::AttentionBackend;
use rand::Rng;

/// Which way to compute the attention output.
#[derive(Debug, Clone, Copy)]
pub enum Path {
    Naive,
    Chunked(usize),
    /// Prefill this many positions, then decode the rest one at a time.
    Cached(usize),
    /// The backend's fused kernel (`AttentionBackend::castle_attention`) with this block size.
    Fused(usize),
}

pub fn run_path<B: AttentionBackend>(x: &RawHeads, window: Option<usize>, path: Path) -> Vec<f64> {
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

pub fn check_against_reference<B: AttentionBackend>(
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
