//! The CubeCL CASTLE kernel (`kernels::cube::castle`) on wgpu (lavapipe in CI) or CUDA:
//! output and all seven gradients against the CPU kernel `Castle` at awkward sizes, causality
//! of the forward pass, and the `O(L d)` size of what it saves.
#![cfg(any(feature = "wgpu", feature = "cuda"))]

use crate::common;

// The GPU under test: wgpu (lavapipe in CI) in a build with it, else CUDA (scripts/gpu-check.sh).
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use burn_cubecl::kernel::cast;
use castle_kernels::cube::castle::{self, TILE};
#[cfg(not(feature = "wgpu"))]
use castle_kernels::cube::Cuda as Gpu;
#[cfg(feature = "wgpu")]
use castle_kernels::cube::Wgpu as Gpu;
use castle_kernels::host::{Castle, HeadsShape, HostKernel};
use common::{random_vec, rng, RawHeads};
#[cfg(not(feature = "wgpu"))]
use cubecl::cuda::CudaRuntime as GpuRuntime;
#[cfg(feature = "wgpu")]
use cubecl::wgpu::WgpuRuntime as GpuRuntime;

type Cube = burn_cubecl::tensor::CubeTensor<GpuRuntime>;

fn to_cube(v: &[f64], shape: [usize; 4]) -> Cube {
    let data = TensorData::new(v.iter().map(|&x| x as f32).collect::<Vec<_>>(), shape);
    Tensor::<Gpu, 4>::from_data(data, &Default::default())
        .into_primitive()
        .tensor()
}

/// `t`'s values as f32 (read in whatever float type it has).
fn from_cube<const D: usize>(t: Cube) -> Vec<f32> {
    Tensor::<Gpu, D>::from_primitive(TensorPrimitive::Float(cast(t, DType::F32)))
        .into_data()
        .to_vec::<f32>()
        .expect("f32 data")
}

/// `v` (`[b, h, L, d]`) stored as `[b, L, h, d]` and viewed through swapped dims, as the model's
/// heads are: a strided, non-contiguous tensor.
fn to_cube_strided(v: &[f64], [b, h, l, d]: [usize; 4]) -> Cube {
    let mut stored = vec![0.0f32; v.len()];
    for (e, &x) in v.iter().enumerate() {
        let (bi, hi, ti, k) = (e / (h * l * d), e / (l * d) % h, e / d % l, e % d);
        stored[((bi * l + ti) * h + hi) * d + k] = x as f32;
    }
    let data = TensorData::new(stored, [b, l, h, d]);
    Tensor::<Gpu, 4>::from_data(data, &Default::default())
        .swap_dims(1, 2)
        .into_primitive()
        .tensor()
}

fn inputs(x: &RawHeads) -> [Cube; 7] {
    [&x.qu, &x.ku, &x.vu, &x.qc, &x.kc, &x.vc, &x.qc_nope].map(|v| to_cube(v, x.shape))
}

fn as_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// `|a - b| / max(|b|, 1e-3 sqrt(n))` (Euclidean norms): relative, except for gradients that are
/// zero but for rounding (e.g. `dqc` at one token, where the softmax is constant).
fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let sq = |x: f64| x * x;
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| sq(x as f64 - y as f64))
        .sum();
    let norm: f64 = b.iter().map(|&y| sq(y as f64)).sum();
    (diff / norm.max(1e-6 * b.len() as f64)).sqrt()
}

#[test]
fn output_and_gradients_match_the_cpu_kernel() {
    const NAMES: [&str; 7] = ["qu", "ku", "vu", "qc", "kc", "vc", "qc_nope"];
    let mut seed = 100;
    for (batch, heads, l, d) in [
        (1, 2, 1, 8),
        (2, 3, 5, 8),
        (1, 2, 17, 32),
        (2, 2, 40, 8),
        (1, 1, 70, 8),
        // d = 96: the kernels stage rows in two chunks of 48 columns.
        (1, 1, 23, 96),
    ] {
        for window in [None, Some(3), Some(10)] {
            seed += 1;
            let x = RawHeads::random([batch, heads, l, d], seed);
            let d_out = random_vec(&mut rng(seed + 1000), x.qu.len(), 1.0);
            let host = [&x.qu, &x.ku, &x.vu, &x.qc, &x.kc, &x.vc, &x.qc_nope].map(|v| as_f32(v));
            let cpu = Castle { window, block: 4 };
            let shape = HeadsShape {
                heads: batch * heads,
                len: l,
                d,
            };
            let (want_out, saved) = cpu.forward(host.each_ref().map(|v| v.as_slice()), shape);
            let want_grads = cpu.backward(
                host.each_ref().map(|v| v.as_slice()),
                shape,
                &saved,
                &as_f32(&d_out),
            );

            // Segments of one tile, of two, and one segment per head (the kernels' sequential
            // form); the default is one of these at these sizes.
            for segment in [Some(1), Some(2), Some(1000), None] {
                let case = format!(
                    "batch={batch} heads={heads} L={l} d={d} window={window:?} segment={segment:?}"
                );
                let (out, saved) = castle::forward_in_segments(inputs(&x), window, segment);
                let err = relative_error(&from_cube::<4>(out.clone()), &want_out);
                assert!(err < 1e-4, "{case}: output relative error {err:e}");
                let grads = castle::backward_in_segments(
                    inputs(&x),
                    window,
                    out,
                    saved,
                    to_cube(&d_out, x.shape),
                    segment,
                );
                for ((name, got), want) in NAMES.iter().zip(grads).zip(&want_grads) {
                    let err = relative_error(&from_cube::<4>(got), want);
                    assert!(err < 1e-4, "{case}: d{name} relative error {err:e}");
                }
            }
        }
    }
}

/// The 16-bit float the kernels are tested in (`backend.dtype`): bf16 on CUDA, f16 on wgpu,
/// which has no bf16.
#[cfg(feature = "wgpu")]
const HALF: (DType, f64) = (DType::F16, 4.9e-4);
#[cfg(not(feature = "wgpu"))]
const HALF: (DType, f64) = (DType::BF16, 3.9e-3);

/// Inputs, output and gradients in a 16-bit float (`backend.dtype = "bf16"`), sums in f32:
/// against the CPU kernel on the same rounded inputs, within a few units of the type's rounding.
#[test]
fn half_precision_inputs_match_the_cpu_kernel() {
    const NAMES: [&str; 7] = ["qu", "ku", "vu", "qc", "kc", "vc", "qc_nope"];
    let (half, unit_roundoff) = HALF;
    for (shape, window, segment) in [
        ([2, 2, 21, 8], None, None),
        ([1, 1, 70, 16], Some(10), Some(2)),
    ] {
        let case = format!("{half:?} shape={shape:?} window={window:?} segment={segment:?}");
        let x = RawHeads::random(shape, 40);
        let d_out = random_vec(&mut rng(41), x.qu.len(), 1.0);
        let x_half = inputs(&x).map(|t| cast(t, half));
        let d_out_half = cast(to_cube(&d_out, shape), half);
        // The CPU kernel in f32 on the values the GPU kernel reads.
        let rounded = x_half.clone().map(from_cube::<4>);
        let cpu = Castle { window, block: 4 };
        let [b, h, l, d] = shape;
        let heads = HeadsShape {
            heads: b * h,
            len: l,
            d,
        };
        let host = rounded.each_ref().map(|v| v.as_slice());
        let (want_out, saved) = cpu.forward(host, heads);
        let want_grads = cpu.backward(host, heads, &saved, &from_cube::<4>(d_out_half.clone()));

        let (out, saved) = castle::forward_in_segments(x_half.clone(), window, segment);
        assert_eq!(out.dtype, half, "{case}: output type");
        let err = relative_error(&from_cube::<4>(out.clone()), &want_out);
        assert!(
            err < 4.0 * unit_roundoff,
            "{case}: output relative error {err:e}"
        );
        let grads = castle::backward_in_segments(x_half, window, out, saved, d_out_half, segment);
        for ((name, got), want) in NAMES.iter().zip(grads).zip(&want_grads) {
            assert_eq!(got.dtype, half, "{case}: d{name} type");
            let err = relative_error(&from_cube::<4>(got), want);
            assert!(
                err < 4.0 * unit_roundoff,
                "{case}: d{name} relative error {err:e}"
            );
        }
    }
}

#[test]
fn forward_is_causal_bitwise() {
    let (l, d) = (2 * TILE + 3, 8);
    for window in [None, Some(3)] {
        let x = RawHeads::random([1, 2, l, d], 7);
        let (out, _) = castle::forward(inputs(&x), window);
        let base = from_cube::<4>(out);
        for t in [0, TILE - 1, TILE, l - 2] {
            // Perturb every input at every position after t.
            let mut moved = x.clone();
            for field in moved.fields_mut() {
                for (e, v) in field.iter_mut().enumerate() {
                    if (e / d) % l > t {
                        *v += 0.5;
                    }
                }
            }
            let (out, _) = castle::forward(inputs(&moved), window);
            let got = from_cube::<4>(out);
            for (e, (a, b)) in got.iter().zip(&base).enumerate() {
                let pos = (e / d) % l;
                if pos <= t {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "window={window:?} t={t}: row {pos} changed"
                    );
                } else if pos == t + 1 && e % d == 0 {
                    assert_ne!(
                        a, b,
                        "window={window:?} t={t}: the perturbation reached no row"
                    );
                }
            }
        }
    }
}

#[test]
fn saved_state_is_lse_and_final_keys_and_backward_keeps_it() {
    use burn::tensor::TensorMetadata;
    let x = RawHeads::random([2, 3, 21, 8], 3);
    let window = Some(5);
    let (out, saved) = castle::forward(inputs(&x), window);
    assert_eq!(out.shape().dims::<4>(), [2, 3, 21, 8]);
    assert_eq!(saved[0].shape().dims::<3>(), [2, 3, 21], "lse");
    assert_eq!(saved[1].shape().dims::<4>(), [2, 3, 21, 8], "u_final");
    let values = |[lse, u]: [Cube; 2]| (from_cube::<3>(lse), from_cube::<4>(u));
    let before = values(saved.clone());
    // The last position's lookahead key is empty (docs/castle.md, section 1: u_t^t = 0).
    for bh in 0..6 {
        let last = (bh * 21 + 20) * 8;
        assert!(before.1[last..last + 8].iter().all(|&v| v == 0.0));
    }
    let d_out = to_cube(&random_vec(&mut rng(4), x.qu.len(), 1.0), x.shape);
    let backward = || {
        castle::backward(
            inputs(&x),
            window,
            out.clone(),
            saved.clone(),
            d_out.clone(),
        )
        .map(from_cube::<4>)
    };
    // Dense outputs: the kernels index rows as `p d + k`, and CUDA's default allocation pads
    // rows (here `lse`'s rows of 21 floats) unless asked for a contiguous layout.
    assert!(out.is_contiguous() && saved.iter().all(|t| t.is_contiguous()));
    let grads = castle::backward(
        inputs(&x),
        window,
        out.clone(),
        saved.clone(),
        d_out.clone(),
    );
    assert!(
        grads.iter().all(|t| t.is_contiguous()),
        "gradients not dense"
    );
    let first = backward();
    assert!(
        values(saved.clone()) == before,
        "the backward pass changed the saved state"
    );
    assert_eq!(backward(), first, "a second backward pass differs");
}

#[test]
fn strided_inputs_give_the_same_results() {
    let x = RawHeads::random([2, 3, 19, 8], 5);
    let strided = || {
        [&x.qu, &x.ku, &x.vu, &x.qc, &x.kc, &x.vc, &x.qc_nope].map(|v| to_cube_strided(v, x.shape))
    };
    assert!(!strided()[0].is_contiguous());
    let d_out = random_vec(&mut rng(6), x.qu.len(), 1.0);
    let run = |x: [Cube; 7], d_out: Cube| {
        let (out, saved) = castle::forward(x.clone(), Some(3));
        let grads = castle::backward(x, Some(3), out.clone(), saved, d_out);
        (from_cube::<4>(out), grads.map(from_cube::<4>))
    };
    let want = run(inputs(&x), to_cube(&d_out, x.shape));
    assert!(run(strided(), to_cube_strided(&d_out, x.shape)) == want);
}
