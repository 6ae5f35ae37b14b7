//! The fused kernels' gradients in float64: against autodiff through the tensor-op references
//! (Theorem 1 for CASTLE, plain causal softmax for the baseline) at awkward sizes, and along a
//! random direction against finite differences of the recurrent definition itself.

use crate::common;

use burn::backend::ndarray::NdArray;
use burn::backend::Autodiff;
use castle_kernels::reference::causal_attention;
use castle_kernels::reference::{attend, lookahead_scores_naive, CastleHeads};
use castle_kernels::KernelBackend;
use common::{random_vec, reference_output, relative_error, rng, tensor4, values, RawHeads};

type B = Autodiff<NdArray<f64>>;

fn tracked(x: &RawHeads) -> CastleHeads<B> {
    let h = x.to_tensors::<B>(&Default::default());
    CastleHeads {
        qu: h.qu.require_grad(),
        ku: h.ku.require_grad(),
        vu: h.vu.require_grad(),
        qc: h.qc.require_grad(),
        kc: h.kc.require_grad(),
        vc: h.vc.require_grad(),
        qc_nope: h.qc_nope.require_grad(),
    }
}

/// Gradients of `sum(weights (.) out)` with respect to the seven inputs; `block = None` runs
/// the naive tensor-op form, `Some(b)` the fused kernel.
fn castle_gradients(
    x: &RawHeads,
    window: Option<usize>,
    block: Option<usize>,
    weights: &[f64],
) -> Vec<Vec<f64>> {
    let h = tracked(x);
    let out = match block {
        None => attend(&h, lookahead_scores_naive(&h, window)),
        Some(block) => B::castle_attention(&h, window, block),
    };
    let grads = (out * tensor4::<B>(weights, x.shape, &Default::default()))
        .sum()
        .backward();
    [h.qu, h.ku, h.vu, h.qc, h.kc, h.vc, h.qc_nope]
        .iter()
        .map(|t| values(t.grad(&grads).expect("every input gets a gradient")))
        .collect()
}

#[test]
fn fused_castle_gradients_match_autodiff_of_theorem_1() {
    let mut seed = 0;
    // Head counts (batch x heads) 2, 4, 3 and 4: the backward pass gives heads that share out
    // evenly over rayon's threads one worker each, and the others several (`workers_per_head`).
    for (batch, heads, l) in [(1, 2, 1), (2, 2, 7), (1, 3, 64), (2, 2, 100)] {
        for window in [None, Some(1), Some(5), Some(40)] {
            seed += 1;
            let x = RawHeads::random([batch, heads, l, 8], seed);
            let weights = random_vec(&mut rng(seed + 1000), x.qu.len(), 1.0);
            let naive = castle_gradients(&x, window, None, &weights);
            for block in [1, 3, 16, 64] {
                let fused = castle_gradients(&x, window, Some(block), &weights);
                let err = relative_error(&fused, &naive);
                assert!(
                    err < 1e-10,
                    "L={l} window={window:?} block={block}: relative error {err:e}"
                );
            }
        }
    }
}

#[test]
fn fused_causal_gradients_match_autodiff_of_tensor_ops() {
    let device = Default::default();
    for (seed, (batch, l, block)) in [
        (1, 1, 64),
        (2, 7, 3),
        (1, 64, 16),
        (2, 100, 64),
        (1, 100, 1),
    ]
    .into_iter()
    .enumerate()
    {
        let shape = [batch, 3, l, 16];
        let n = shape.iter().product();
        let mut r = rng(seed as u64);
        let inputs: Vec<Vec<f64>> = (0..4).map(|_| random_vec(&mut r, n, 1.5)).collect();
        let gradients = |fused: bool| {
            let [q, k, v] =
                [0, 1, 2].map(|i| tensor4::<B>(&inputs[i], shape, &device).require_grad());
            let out = if fused {
                B::causal_attention(q.clone(), k.clone(), v.clone(), block)
            } else {
                causal_attention(q.clone(), k.clone(), v.clone())
            };
            let grads = (out * tensor4::<B>(&inputs[3], shape, &device))
                .sum()
                .backward();
            [q, k, v].map(|t| values(t.grad(&grads).unwrap())).to_vec()
        };
        let err = relative_error(&gradients(true), &gradients(false));
        assert!(err < 1e-10, "L={l} block={block}: relative error {err:e}");
    }
}

#[test]
fn fused_castle_gradient_matches_finite_differences_of_the_recurrent_definition() {
    for window in [None, Some(2)] {
        let x = RawHeads::random([1, 1, 9, 4], 11);
        let weights = random_vec(&mut rng(12), x.qu.len(), 1.0);
        let grads = castle_gradients(&x, window, Some(4), &weights);
        // Directional derivative along a random direction `v` of all seven inputs.
        let v: Vec<Vec<f64>> = (0..7)
            .map(|i| random_vec(&mut rng(20 + i), x.qu.len(), 1.0))
            .collect();
        let analytic: f64 = grads
            .iter()
            .zip(&v)
            .flat_map(|(g, v)| g.iter().zip(v).map(|(a, b)| a * b))
            .sum();
        let loss_at = |eps: f64| {
            let mut moved = x.clone();
            for (field, dir) in moved.fields_mut().into_iter().zip(&v) {
                field.iter_mut().zip(dir).for_each(|(a, b)| *a += eps * b);
            }
            reference_output(&moved, window)
                .iter()
                .zip(&weights)
                .map(|(o, w)| o * w)
                .sum::<f64>()
        };
        let eps = 1e-5;
        let numeric = (loss_at(eps) - loss_at(-eps)) / (2.0 * eps);
        let err = (analytic - numeric).abs() / numeric.abs().max(1e-3);
        assert!(
            err < 1e-7,
            "window={window:?}: analytic {analytic} numeric {numeric}"
        );
    }
}
