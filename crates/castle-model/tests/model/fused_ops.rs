//! The fused row-wise kernels (RMSNorm, RoPE, SwiGLU's gate, softmax cross-entropy, the linear
//! layers' projection) against their
//! burn tensor-op forms: values and gradients in float64 (relative error < 1e-10) at awkward
//! sizes (one token, batch 1, odd widths), and in float32 on `Flex` (the training path, with
//! its fast `exp`) against the float64 reference.

use crate::common;

use burn::backend::ndarray::NdArray;
use burn::backend::{Autodiff, Flex};
use burn::module::{Param, ParamId};
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use castle_kernels::precision::project;
use castle_kernels::reference::{self, rms_norm, silu, swiglu_gate};
use castle_kernels::rope::Rope;
use castle_kernels::Elem;
use castle_model::layers::{RmsNorm, SwiGlu};
use castle_model::KernelBackend;
use common::{random_vec, relative_error, rng, values};

type F64 = Autodiff<NdArray<f64>>;
type F32 = Autodiff<Flex>;

/// Shapes `[batch, len]` with one token, batch 1 and odd row counts.
const SHAPES: [[usize; 2]; 4] = [[1, 1], [1, 7], [3, 5], [2, 33]];

fn tensor<B: Backend, const D: usize>(v: &[f64], shape: [usize; D]) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), &Default::default())
}

/// The output and the gradients of `sum(weights (.) out)` with respect to `inputs`, given
/// `f(inputs) -> out`.
fn output_and_grads<B: KernelBackend + AutodiffBackend, const D: usize>(
    inputs: &[(Vec<f64>, [usize; D])],
    weights: &[f64],
    f: impl Fn(&[Tensor<B, D>]) -> Tensor<B, D>,
) -> Vec<Vec<f64>> {
    let xs: Vec<Tensor<B, D>> = inputs
        .iter()
        .map(|(v, s)| tensor::<B, D>(v, *s).require_grad())
        .collect();
    let out = f(&xs);
    let shape = out.dims();
    let grads = (out.clone() * tensor::<B, D>(weights, shape))
        .sum()
        .backward();
    let mut result = vec![values(out)];
    result.extend(
        xs.iter()
            .map(|x| values(x.grad(&grads).expect("input has a gradient"))),
    );
    result
}

/// RMSNorm of `[x, gamma]` through the module, fused or in tensor ops.
fn rmsnorm<B: KernelBackend>(xs: &[Tensor<B, 3>], fused: bool) -> Tensor<B, 3> {
    let d = xs[0].dims()[2];
    let mut norm = RmsNorm::<B>::new(d, 1e-5, &Default::default());
    norm.gamma = Param::initialized(ParamId::new(), xs[1].clone().reshape([d]));
    if fused {
        norm.forward(xs[0].clone())
    } else {
        rms_norm(xs[0].clone(), norm.gamma.val(), norm.eps)
    }
}

/// SwiGLU's gate `SiLU(g) (.) u` of `[g, u]`, fused or in tensor ops.
fn gate<B: KernelBackend>(xs: &[Tensor<B, 3>], fused: bool) -> Tensor<B, 3> {
    let (g, u) = (xs[0].clone(), xs[1].clone());
    if fused {
        B::swiglu_gate(g, u)
    } else {
        silu(g) * u
    }
}

/// RoPE at positions `start ..` of `[x]` (`[batch, heads, len, d]` flattened to rank 3 as
/// `[batch * heads, len, d]`), fused or in tensor ops.
fn rope<B: KernelBackend>(xs: &[Tensor<B, 3>], start: usize, fused: bool) -> Tensor<B, 3> {
    let [bh, l, d] = xs[0].dims();
    let tables = Rope::new(start + l, d, 10_000.0).tables::<B>(start, l, &Default::default());
    let x = xs[0].clone().reshape([1, bh, l, d]);
    let y = if fused {
        B::rope(&tables, x)
    } else {
        tables.apply_reference(x)
    };
    y.reshape([bh, l, d])
}

fn check_rope<B: KernelBackend + AutodiffBackend>() -> f64 {
    let mut worst: f64 = 0.0;
    for (case, [bh, l]) in SHAPES.into_iter().enumerate() {
        for (d, start) in [(2, 0), (6, 3), (64, 0), (8, 200)] {
            let mut r = rng(case as u64 * 77 + d as u64 + start as u64);
            let inputs = vec![(random_vec(&mut r, bh * l * d, 2.0), [bh, l, d])];
            let weights = random_vec(&mut r, bh * l * d, 1.0);
            let fused = output_and_grads::<B, 3>(&inputs, &weights, |x| rope(x, start, true));
            let reference =
                output_and_grads::<F64, 3>(&inputs, &weights, |x| rope(x, start, false));
            worst = worst.max(relative_error(&fused, &reference));
        }
    }
    worst
}

fn check_rmsnorm<B: KernelBackend + AutodiffBackend>() -> f64 {
    let mut worst: f64 = 0.0;
    for (case, [b, l]) in SHAPES.into_iter().enumerate() {
        for d in [1, 13, 64] {
            let mut r = rng(case as u64 * 100 + d as u64);
            let inputs = vec![
                (random_vec(&mut r, b * l * d, 2.0), [b, l, d]),
                (random_vec(&mut r, d, 1.5), [1, 1, d]),
            ];
            let weights = random_vec(&mut r, b * l * d, 1.0);
            let fused = output_and_grads::<B, 3>(&inputs, &weights, |x| rmsnorm(x, true));
            let reference = output_and_grads::<F64, 3>(&inputs, &weights, |x| rmsnorm(x, false));
            worst = worst.max(relative_error(&fused, &reference));
        }
    }
    worst
}

fn check_swiglu<B: KernelBackend + AutodiffBackend>() -> f64 {
    let mut worst: f64 = 0.0;
    for (case, [b, l]) in SHAPES.into_iter().enumerate() {
        // 300 wide: at 2 x 33 rows, 19,800 values, more than one of the kernel's parallel chunks.
        for h in [1, 37, 300] {
            let mut r = rng(case as u64 * 10 + h as u64);
            // Gate values out to +-40 reach both tails of the sigmoid.
            let inputs = vec![
                (random_vec(&mut r, b * l * h, 40.0), [b, l, h]),
                (random_vec(&mut r, b * l * h, 2.0), [b, l, h]),
            ];
            let weights = random_vec(&mut r, b * l * h, 1.0);
            let fused = output_and_grads::<B, 3>(&inputs, &weights, |x| gate(x, true));
            let reference = output_and_grads::<F64, 3>(&inputs, &weights, |x| gate(x, false));
            worst = worst.max(relative_error(&fused, &reference));
        }
    }
    worst
}

/// `x W` of `[x, W]` (`W` as `[1, d_in, d_out]`) through a bias-free `Linear`, fused or burn's.
fn linear<B: KernelBackend>(xs: &[Tensor<B, 3>], fused: bool) -> Tensor<B, 3> {
    let [_, d_in, d_out] = xs[1].dims();
    let layer = Linear {
        weight: Param::initialized(ParamId::new(), xs[1].clone().reshape([d_in, d_out])),
        bias: None,
    };
    if fused {
        B::project(&layer, xs[0].clone())
    } else {
        project(&layer, xs[0].clone())
    }
}

fn check_linear<B: KernelBackend + AutodiffBackend>() -> f64 {
    let mut worst: f64 = 0.0;
    for (case, [b, l]) in SHAPES.into_iter().chain([[3, 50]]).enumerate() {
        for (d_in, d_out) in [(1, 1), (13, 37), (64, 70), (70, 3)] {
            let mut r = rng(case as u64 * 500 + d_in as u64 * 3 + d_out as u64);
            let inputs = vec![
                (random_vec(&mut r, b * l * d_in, 2.0), [b, l, d_in]),
                (random_vec(&mut r, d_in * d_out, 0.5), [1, d_in, d_out]),
            ];
            let weights = random_vec(&mut r, b * l * d_out, 1.0);
            let fused = output_and_grads::<B, 3>(&inputs, &weights, |x| linear(x, true));
            let reference = output_and_grads::<F64, 3>(&inputs, &weights, |x| linear(x, false));
            worst = worst.max(relative_error(&fused, &reference));
        }
    }
    worst
}

/// The per-token NLL and the logits' gradient of `sum(weights (.) nll)`.
fn nll_and_grad<B: KernelBackend + AutodiffBackend>(
    logits: &[f64],
    targets: &[i64],
    weights: &[f64],
    [b, l, vocab]: [usize; 3],
    fused: bool,
) -> Vec<Vec<f64>> {
    let z = tensor::<B, 3>(logits, [b, l, vocab]).require_grad();
    let t = Tensor::<B, 2, Int>::from_data(
        TensorData::new(targets.to_vec(), [b, l]),
        &Default::default(),
    );
    let nll = if fused {
        B::token_nll(z.clone(), t)
    } else {
        reference::token_nll(z.clone(), t)
    };
    let grads = (nll.clone() * tensor::<B, 2>(weights, [b, l]))
        .sum()
        .backward();
    vec![
        values(nll),
        values(z.grad(&grads).expect("logits gradient")),
    ]
}

fn check_cross_entropy<B: KernelBackend + AutodiffBackend>() -> f64 {
    let mut worst: f64 = 0.0;
    for (case, [b, l]) in SHAPES.into_iter().enumerate() {
        for (vocab, scale) in [(1, 1.0), (61, 3.0), (61, 60.0), (300, 8.0)] {
            let mut r = rng(case as u64 * 1000 + vocab as u64 + scale as u64);
            let logits = random_vec(&mut r, b * l * vocab, scale);
            let targets: Vec<i64> = (0..b * l)
                .map(|i| ((i * 7 + case) % vocab) as i64)
                .collect();
            let weights = random_vec(&mut r, b * l, 1.0);
            let shape = [b, l, vocab];
            let fused = nll_and_grad::<B>(&logits, &targets, &weights, shape, true);
            let reference = nll_and_grad::<F64>(&logits, &targets, &weights, shape, false);
            worst = worst.max(relative_error(&fused, &reference));
        }
    }
    worst
}

#[test]
fn rmsnorm_matches_tensor_ops_in_f64() {
    let err = check_rmsnorm::<F64>();
    assert!(err < 1e-10, "relative error {err:e}");
}

#[test]
fn rope_matches_tensor_ops_in_f64() {
    let err = check_rope::<F64>();
    assert!(err < 1e-10, "relative error {err:e}");
}

#[test]
fn swiglu_gate_matches_tensor_ops_in_f64() {
    let err = check_swiglu::<F64>();
    assert!(err < 1e-10, "relative error {err:e}");
}

#[test]
fn linear_matches_burns_linear_in_f64() {
    let err = check_linear::<F64>();
    assert!(err < 1e-10, "relative error {err:e}");
}

#[test]
fn cross_entropy_matches_tensor_ops_in_f64() {
    let err = check_cross_entropy::<F64>();
    assert!(err < 1e-10, "relative error {err:e}");
}

#[test]
fn f32_kernels_on_flex_match_the_f64_reference() {
    for (name, err) in [
        ("rmsnorm", check_rmsnorm::<F32>()),
        ("rope", check_rope::<F32>()),
        ("swiglu", check_swiglu::<F32>()),
        ("cross-entropy", check_cross_entropy::<F32>()),
        ("linear", check_linear::<F32>()),
    ] {
        assert!(err < 1e-5, "{name}: relative error {err:e}");
    }
}

#[test]
fn sigmoid_is_exact_in_f64_and_close_in_f32_at_both_tails() {
    for x in [
        -745.0_f64, -100.0, -20.0, -1.5, -1e-8, 0.0, 1e-8, 0.7, 20.0, 100.0, 745.0,
    ] {
        let exact = 1.0 / (1.0 + (-x).exp());
        let err64 = (f64::sigmoid(x) - exact).abs() / exact.max(f64::MIN_POSITIVE);
        assert!(err64 < 1e-15, "f64 sigmoid({x}) = {}", f64::sigmoid(x));
        let got = f32::sigmoid(x as f32) as f64;
        assert!(
            (got - exact).abs() <= 1e-6 * exact + 1e-37,
            "f32 sigmoid({x}) = {got}, exact {exact}"
        );
    }
}

#[test]
fn swiglu_module_forward_matches_its_tensor_op_form() {
    let device = Default::default();
    let mlp = SwiGlu::<NdArray<f64>>::new(13, 37, 0.3, &device);
    let x = Tensor::<NdArray<f64>, 3>::from_data(
        TensorData::new(random_vec(&mut rng(5), 3 * 5 * 13, 2.0), [3, 5, 13]),
        &device,
    );
    let err = relative_error(
        &[values(mlp.forward(x.clone()))],
        &[values(project(
            &mlp.down,
            swiglu_gate(project(&mlp.gate, x.clone()), project(&mlp.up, x)),
        ))],
    );
    assert!(err < 1e-12, "relative error {err:e}");
}

#[test]
#[should_panic(expected = "outside the vocabulary of 5")]
fn cross_entropy_names_a_target_outside_the_vocabulary() {
    let logits = tensor::<F64, 3>(&[0.0; 10], [1, 2, 5]);
    let targets = Tensor::<F64, 2, Int>::from_data(
        TensorData::new(vec![1i64, 5], [1, 2]),
        &Default::default(),
    );
    let _ = F64::token_nll(logits, targets);
}
