//! The CubeCL kernels on wgpu (lavapipe in CI) or CUDA, in f32: forward and every gradient
//! against the CPU kernels and against autodiff of the tensor-op references, at lengths that are not a
//! multiple of the tile, batch 1 and 2; bitwise causality; `O(L d)` saved state.
#![cfg(any(feature = "wgpu", feature = "cuda"))]

use crate::common;

use burn::backend::{Autodiff, Flex, NdArray};
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use castle_kernels::reference::causal_attention;
// The GPU under test: wgpu (lavapipe in CI) in a build with it, else CUDA (scripts/gpu-check.sh).
#[cfg(not(feature = "wgpu"))]
use castle_kernels::cube::Cuda as Gpu;
#[cfg(feature = "wgpu")]
use castle_kernels::cube::Wgpu as Gpu;
use castle_kernels::{AttentionOp, KernelBackend};
use common::{random_vec, rng, tensor4, values};

/// `|a - b| / max(|b|, 1)` over one tensor's values (Euclidean norms; at `L = 1` the exact
/// `dq` and `dk` are zero, and both sides hold rounding noise).
fn relative_error(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let norm: f64 = b.iter().map(|y| y * y).sum();
    diff.sqrt() / norm.sqrt().max(1.0)
}

/// `[out, dq, dk, dv]` of `sum(w (.) attention(q, k, v))` on backend `B`; `fused` runs
/// `B::causal_attention` (the backend's kernel), otherwise the tensor-op form.
fn causal_values<B: KernelBackend + burn::tensor::backend::AutodiffBackend>(
    inputs: &[Vec<f64>],
    shape: [usize; 4],
    fused: bool,
) -> [Vec<f64>; 4] {
    let device = Default::default();
    let [q, k, v] = [0, 1, 2].map(|i| tensor4::<B>(&inputs[i], shape, &device).require_grad());
    let out = if fused {
        B::causal_attention(q.clone(), k.clone(), v.clone(), 16)
    } else {
        causal_attention(q.clone(), k.clone(), v.clone())
    };
    let grads = (out.clone() * tensor4::<B>(&inputs[3], shape, &device))
        .sum()
        .backward();
    let [dq, dk, dv] = [q, k, v].map(|t| values(t.grad(&grads).expect("a gradient")));
    [values(out), dq, dk, dv]
}

#[test]
fn causal_kernel_matches_cpu_kernel_and_tensor_ops() {
    for (seed, (batch, l, d)) in [
        (1, 1, 16),
        (2, 7, 64),
        (1, 33, 16),
        (2, 100, 64),
        (1, 100, 8),
        // Tiles of 8 rows where a cube has 32 KiB of shared memory (lavapipe): 16 rows at d 64.
        (1, 41, 128),
    ]
    .into_iter()
    .enumerate()
    {
        let shape = [batch, 2, l, d];
        let n = shape.iter().product();
        let mut r = rng(seed as u64);
        let inputs: Vec<Vec<f64>> = (0..4).map(|_| random_vec(&mut r, n, 1.5)).collect();
        let gpu = causal_values::<Autodiff<Gpu>>(&inputs, shape, true);
        const {
            assert!(
                Gpu::DEVICE_KERNELS,
                "the GPU run goes through the CubeCL kernel"
            )
        };
        let cpu_kernel = causal_values::<Autodiff<Flex>>(&inputs, shape, true);
        let reference = causal_values::<Autodiff<NdArray<f64>>>(&inputs, shape, false);
        for (i, name) in ["out", "dq", "dk", "dv"].into_iter().enumerate() {
            for (against, theirs) in [("CPU kernel", &cpu_kernel), ("tensor ops", &reference)] {
                let err = relative_error(&gpu[i], &theirs[i]);
                assert!(
                    err < 1e-4,
                    "batch={batch} L={l} d={d}: {name} vs {against}: relative error {err:e}"
                );
            }
        }
    }
}

#[test]
fn causal_kernel_is_bitwise_causal() {
    let shape = [2, 2, 37, 16];
    let n: usize = shape.iter().product();
    let mut r = rng(11);
    let inputs: Vec<Vec<f64>> = (0..3).map(|_| random_vec(&mut r, n, 1.5)).collect();
    let run = |x: &[Vec<f64>]| {
        let [q, k, v] = [0, 1, 2].map(|i| tensor4::<Gpu>(&x[i], shape, &Default::default()));
        values(Gpu::causal_attention(q, k, v, 16))
    };
    let base = run(&inputs);
    let d = shape[3];
    for t in [0, 5, 15, 16, 30] {
        // Change q, k and v at every position after t, in every head.
        let mut changed = inputs.clone();
        for x in &mut changed {
            for (i, value) in x.iter_mut().enumerate() {
                if (i / d) % shape[2] > t {
                    *value = -2.0 * *value + 0.5;
                }
            }
        }
        let out = run(&changed);
        for (i, (a, b)) in base.iter().zip(&out).enumerate() {
            let pos = (i / d) % shape[2];
            if pos <= t {
                assert_eq!(a.to_bits(), b.to_bits(), "t={t}: position {pos} changed");
            } else if pos == t + 1 {
                assert_ne!(a, b, "t={t}: the change reached position {pos}");
            }
        }
    }
}

#[test]
fn causal_kernel_saves_only_row_statistics() {
    let shape = [2, 3, 45, 16];
    let n: usize = shape.iter().product();
    let mut r = rng(5);
    let device = Default::default();
    let inputs: Vec<_> = (0..3)
        .map(|_| {
            let t = tensor4::<Gpu>(&random_vec(&mut r, n, 1.0), shape, &device);
            t.into_primitive().tensor()
        })
        .collect();
    let (out, saved) = Gpu::device_forward(AttentionOp::Causal, inputs);
    // Dense: the kernels index rows as `p d + k`; CUDA's default allocation would pad `lse`'s
    // rows of 45 floats.
    assert!(out.is_contiguous() && saved.iter().all(|s| s.is_contiguous()));
    let out = Tensor::<Gpu, 4>::from_primitive(TensorPrimitive::Float(out));
    assert_eq!(out.dims(), shape);
    let saved: Vec<Vec<usize>> = saved
        .into_iter()
        .map(|s| {
            Tensor::<Gpu, 3>::from_primitive(TensorPrimitive::Float(s))
                .dims()
                .to_vec()
        })
        .collect();
    assert_eq!(
        saved,
        [vec![2, 3, 45]],
        "one logsumexp per row, nothing L x L"
    );
}
