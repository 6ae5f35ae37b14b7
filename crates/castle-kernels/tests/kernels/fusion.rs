//! The CubeCL attention kernels under burn's `Fusion` wrapper (`FusedWgpu`, or `FusedCuda` in
//! scripts/gpu-check.sh), where each kernel call, forward or backward, is one custom operation
//! in fusion's stream: the output and every input gradient, through autodiff, equal bit for bit
//! those of the same kernels on the bare `CubeBackend`, for both attentions.
#![cfg(any(feature = "wgpu", feature = "cuda"))]

use crate::common;

use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
#[cfg(not(feature = "wgpu"))]
use castle_kernels::cube::{Cuda as Plain, FusedCuda as Fused};
#[cfg(feature = "wgpu")]
use castle_kernels::cube::{FusedWgpu as Fused, Wgpu as Plain};
use castle_kernels::reference::CastleHeads;
use castle_kernels::{AttentionOp, KernelBackend};
use common::{random_vec, rng, values, RawHeads};

/// The output, then the gradients of the inputs (`CastleHeads`' order; `qc, kc, vc` for the
/// causal attention), of `attention` on `B` with `loss = sum(out * w)`.
fn output_and_gradients<B: AutodiffBackend + KernelBackend>(
    attention: AttentionOp,
    x: &RawHeads,
    w: &[f64],
) -> Vec<Vec<f64>> {
    let device = Default::default();
    let h = x.to_tensors::<B>(&device);
    let xs = [h.qu, h.ku, h.vu, h.qc, h.kc, h.vc, h.qc_nope].map(Tensor::require_grad);
    let [qu, ku, vu, qc, kc, vc, qc_nope] = xs.clone();
    let (out, used) = match attention {
        AttentionOp::Causal => (B::causal_attention(qc, kc, vc, 4), &xs[3..6]),
        AttentionOp::Castle { window } => {
            let heads = CastleHeads {
                qu,
                ku,
                vu,
                qc,
                kc,
                vc,
                qc_nope,
            };
            (B::castle_attention(&heads, window, 4), &xs[..])
        }
    };
    let weights = Tensor::<B, 4>::from_data(TensorData::new(w.to_vec(), x.shape), &device);
    let grads = (out.clone() * weights).sum().backward();
    let mut result = vec![values(out)];
    for x in used {
        result.push(values(x.grad(&grads).expect("a gradient for every input")));
    }
    result
}

#[test]
fn kernels_under_fusion_match_the_bare_cube_backend_bitwise() {
    let attentions = [
        AttentionOp::Causal,
        AttentionOp::Castle { window: None },
        AttentionOp::Castle { window: Some(5) },
    ];
    for (seed, shape) in [[1, 1, 1, 8], [2, 3, 21, 16], [1, 2, 40, 32]]
        .into_iter()
        .enumerate()
    {
        let x = RawHeads::random(shape, seed as u64);
        let w = random_vec(&mut rng(seed as u64 + 100), shape.iter().product(), 1.0);
        for attention in attentions {
            let plain = output_and_gradients::<Autodiff<Plain>>(attention, &x, &w);
            let fused = output_and_gradients::<Autodiff<Fused>>(attention, &x, &w);
            assert_eq!(plain.len(), fused.len());
            for (i, (a, b)) in plain.iter().zip(&fused).enumerate() {
                let what = if i == 0 {
                    "output".into()
                } else {
                    format!("gradient {i}")
                };
                // One token has no lookahead and a softmax of 1: zero gradients are right there.
                assert!(
                    shape[2] == 1 || a.iter().any(|&v| v != 0.0),
                    "{attention:?} {shape:?}: {what} is all zero"
                );
                assert_eq!(a, b, "{attention:?} {shape:?}: {what} differs under fusion");
            }
        }
    }
}
