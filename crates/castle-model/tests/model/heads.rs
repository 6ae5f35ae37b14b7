//! The fused head layout (`KernelBackend::castle_attention_projected` and
//! `causal_attention_projected` on CPU: gathering heads from the projection with RoPE, the
//! host kernel, merging heads, as one op) against the tensor-op route it replaces (`split_heads`,
//! `RopeTables::apply_reference`, the reference attention, `merge_heads`): the output and the
//! projection's gradient, in float64 (relative error < 1e-10) at awkward sizes, and in float32
//! on `Flex` against the float64 reference.

use crate::common;

use burn::backend::ndarray::NdArray;
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use castle_kernels::reference::{
    attend, causal_attention, lookahead_scores_naive, merge_heads, split_heads, CastleHeads,
};
use castle_kernels::rope::Rope;
use castle_model::KernelBackend;
use common::{random_vec, relative_error, rng, values};

type F64 = Autodiff<NdArray<f64>>;
type F32 = Autodiff<Flex>;

/// Which attention: the baseline, or CASTLE with this lookahead window.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Baseline,
    Castle(Option<usize>),
}

const KINDS: [Kind; 4] = [
    Kind::Baseline,
    Kind::Castle(None),
    Kind::Castle(Some(1)),
    Kind::Castle(Some(3)),
];

impl Kind {
    /// Parts of the projection: `q, k, v` or `qu, ku, vu, qc, kc, vc`.
    fn parts(self) -> usize {
        match self {
            Kind::Baseline => 3,
            Kind::Castle(_) => 6,
        }
    }
}

/// The attention of the projection `y: [batch, len, parts * heads * d]`, merged to
/// `[batch, len, heads * d]`: fused, or by the tensor-op route.
fn attention<B: KernelBackend>(
    y: Tensor<B, 3>,
    kind: Kind,
    heads: usize,
    block: usize,
    fused: bool,
) -> Tensor<B, 3> {
    let [_, len, width] = y.dims();
    let d = width / (kind.parts() * heads);
    let rope = Rope::new(len, d, 10_000.0).tables::<B>(0, len, &y.device());
    let rotate = |x| rope.apply_reference(x);
    match (kind, fused) {
        (Kind::Baseline, true) => B::causal_attention_projected(y, heads, block, &rope),
        (Kind::Castle(window), true) => {
            B::castle_attention_projected(y, heads, window, block, &rope)
        }
        (Kind::Baseline, false) => {
            let [q, k, v] = split_heads(y, heads);
            merge_heads(causal_attention(rotate(q), rotate(k), v))
        }
        (Kind::Castle(window), false) => {
            let [qu, ku, vu, qc, kc, vc] = split_heads(y, heads);
            let h = CastleHeads {
                qu: rotate(qu),
                ku: rotate(ku),
                vu,
                qc: rotate(qc.clone()),
                kc: rotate(kc),
                vc,
                qc_nope: qc,
            };
            merge_heads(attend(&h, lookahead_scores_naive(&h, window)))
        }
    }
}

/// The output and the gradient of `sum(weights (.) out)` with respect to the projection `y`.
fn output_and_grad<B: KernelBackend + AutodiffBackend>(
    y: &[f64],
    shape: [usize; 3],
    weights: &[f64],
    f: impl Fn(Tensor<B, 3>) -> Tensor<B, 3>,
) -> Vec<Vec<f64>> {
    let device = Default::default();
    let y = Tensor::<B, 3>::from_data(TensorData::new(y.to_vec(), shape), &device).require_grad();
    let out = f(y.clone());
    let w = Tensor::<B, 3>::from_data(TensorData::new(weights.to_vec(), out.dims()), &device);
    let grads = (out.clone() * w).sum().backward();
    vec![
        values(out),
        values(y.grad(&grads).expect("the projection has a gradient")),
    ]
}

/// The worst relative error of the fused op on `B` against the float64 tensor-op route, over
/// every kind, one token and lengths not a multiple of the block, batch 1 and 2, 1 and 3 heads,
/// head dimension 2 and 8.
fn worst_error<B: KernelBackend + AutodiffBackend>() -> f64 {
    let mut worst: f64 = 0.0;
    let mut seed = 0;
    for kind in KINDS {
        for (len, block) in [(1, 4), (7, 4), (13, 4), (13, 16)] {
            for (batch, heads, d) in [(1, 1, 2), (2, 3, 8), (1, 3, 8), (2, 1, 2)] {
                seed += 1;
                let shape = [batch, len, kind.parts() * heads * d];
                let mut r = rng(seed);
                let y = random_vec(&mut r, shape.iter().product(), 1.5);
                let weights = random_vec(&mut r, batch * len * heads * d, 1.0);
                let fused = output_and_grad::<B>(&y, shape, &weights, |y| {
                    attention(y, kind, heads, block, true)
                });
                let reference = output_and_grad::<F64>(&y, shape, &weights, |y| {
                    attention(y, kind, heads, block, false)
                });
                let err = relative_error(&fused, &reference);
                println!(
                    "{kind:?} len {len} block {block} batch {batch} heads {heads} d {d}: {err:e}"
                );
                worst = worst.max(err);
            }
        }
    }
    worst
}

#[test]
fn fused_heads_match_the_tensor_op_route_in_f64() {
    let err = worst_error::<F64>();
    assert!(err < 1e-10, "relative error {err:e}");
}

#[test]
fn fused_heads_on_flex_in_f32_match_the_f64_reference() {
    let err = worst_error::<F32>();
    assert!(err < 1e-5, "relative error {err:e}");
}

#[test]
#[should_panic(expected = "RoPE tables for 5 positions")]
fn tables_of_another_length_are_refused() {
    let device = Default::default();
    let y = Tensor::<NdArray<f64>, 3>::zeros([1, 4, 3 * 8], &device);
    let rope = Rope::new(8, 8, 10_000.0).tables(0, 5, &device);
    let _ = NdArray::<f64>::causal_attention_projected(y, 1, 4, &rope);
}
