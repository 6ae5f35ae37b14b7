//! The fused LM head + cross-entropy (`kernels::lm_loss`) against its tensor-op form (the
//! logits `x W^T`, then `reference::token_nll`): values and the gradients of `x` and `W` in
//! float64 (relative error < 1e-10) at awkward sizes (one token; 307 rows, which no thread count
//! splits into equal chunks of at most 256; vocabularies of 1, 61, 300 and 1100 (three `dW`
//! blocks); widths 1, 5 and 13; logits out to +-60), in float32 on `Flex` against the float64
//! reference; and `CastleLm::token_nll` against `forward` + `token_nll` for every parameter's
//! gradient, tied and untied heads, batch 1 and 2.

use crate::common;

use burn::backend::ndarray::NdArray;
use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::DType;
use castle_kernels::host::lm_loss::LmHeadLoss;
use castle_kernels::reference::token_nll;
use castle_model::{AttentionKind, CastleLm, KernelBackend};
use common::{random_tokens, random_vec, relative_error, rng, tiny_config, values};

type F64 = Autodiff<NdArray<f64>>;
type F32 = Autodiff<Flex>;

/// The larger error, NaN if either is (`f64::max` would drop a NaN).
fn worse(a: f64, b: f64) -> f64 {
    if a.is_nan() || a > b {
        a
    } else {
        b
    }
}

fn tensor<B: Backend, const D: usize>(v: &[f64], shape: [usize; D]) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), &Default::default())
}

/// One case: `x: [tokens, d]`, `w: [vocab, d]`, a target and a loss weight per token.
struct Case {
    tokens: usize,
    d: usize,
    vocab: usize,
    x: Vec<f64>,
    w: Vec<f64>,
    targets: Vec<usize>,
    weights: Vec<f64>,
}

impl Case {
    /// Logits of standard deviation `std`.
    fn random(tokens: usize, d: usize, vocab: usize, std: f64, seed: u64) -> Self {
        let mut r = rng(seed);
        // Sums of d products of uniform factors in [-s, s] have standard deviation s^2 sqrt(d) / 3.
        let s = (3.0 * std / (d as f64).sqrt()).sqrt();
        Self {
            tokens,
            d,
            vocab,
            x: random_vec(&mut r, tokens * d, s),
            w: random_vec(&mut r, vocab * d, s),
            targets: (0..tokens).map(|i| (i * 7 + 3) % vocab).collect(),
            weights: random_vec(&mut r, tokens, 1.0),
        }
    }

    /// The NLL and the gradients of `sum(weights (.) nll)` with respect to `x` and `w`, fused
    /// or through materialised logits.
    fn nll_and_grads<B: KernelBackend + AutodiffBackend>(&self, fused: bool) -> Vec<Vec<f64>> {
        let (n, d, v) = (self.tokens, self.d, self.vocab);
        let x = tensor::<B, 2>(&self.x, [n, d]).require_grad();
        let w = tensor::<B, 2>(&self.w, [v, d]).require_grad();
        let ids = self.targets.iter().map(|&t| t as i64).collect();
        let t = Tensor::from_data(TensorData::new(ids, [1, n]), &Default::default());
        let nll = if fused {
            B::lm_head_nll(x.clone().reshape([1, n, d]), w.clone(), t).reshape([n])
        } else {
            let logits = x.clone().matmul(w.clone().transpose()).reshape([1, n, v]);
            token_nll(logits, t).reshape([n])
        };
        let grads = (nll.clone() * tensor::<B, 1>(&self.weights, [n]))
            .sum()
            .backward();
        vec![
            values(nll),
            values(x.grad(&grads).expect("x gradient")),
            values(w.grad(&grads).expect("W gradient")),
        ]
    }
}

/// The worst relative error of the fused op in `B` against the float64 tensor-op form.
fn check_lm_loss<B: KernelBackend + AutodiffBackend>() -> f64 {
    let mut worst: f64 = 0.0;
    let shapes = [
        (1, 13, 1.0),
        (61, 1, 20.0),
        (61, 13, 3.0),
        (300, 13, 15.0),
        (1100, 5, 4.0),
    ];
    for (seed, tokens) in [1, 7, 65, 307].into_iter().enumerate() {
        for (vocab, d, std) in shapes {
            let case = Case::random(tokens, d, vocab, std, seed as u64 * 1000 + vocab as u64);
            let fused = case.nll_and_grads::<B>(true);
            let reference = case.nll_and_grads::<F64>(false);
            let err = relative_error(&fused, &reference);
            println!("tokens {tokens} vocab {vocab} d {d} std {std}: {err:.2e}");
            worst = worse(err, worst);
        }
    }
    worst
}

#[test]
fn lm_head_loss_matches_tensor_ops_in_f64() {
    let err = check_lm_loss::<F64>();
    assert!(err < 1e-10, "relative error {err:e}");
}

#[test]
fn f32_lm_head_loss_on_flex_matches_the_f64_reference() {
    let err = check_lm_loss::<F32>();
    assert!(err < 1e-5, "relative error {err:e}");
}

#[test]
fn the_test_cases_reach_logits_of_60() {
    let case = Case::random(65, 13, 300, 15.0, 300);
    let x = tensor::<NdArray<f64>, 2>(&case.x, [65, 13]);
    let w = tensor::<NdArray<f64>, 2>(&case.w, [300, 13]);
    let max = x.matmul(w.transpose()).abs().max().into_scalar();
    assert!((50.0..100.0).contains(&max), "largest logit {max}");
}

#[test]
#[should_panic(expected = "outside the vocabulary of 5")]
fn lm_head_loss_names_a_target_outside_the_vocabulary() {
    let _ = LmHeadLoss::new(3, 5, vec![0, 5]);
}

/// Every parameter's gradient, flattened, in visiting order.
fn gradients<B: AutodiffBackend>(model: &CastleLm<B>, grads: &B::Gradients) -> Vec<Vec<f64>> {
    struct Collect<'a, B: AutodiffBackend>(&'a B::Gradients, Vec<Vec<f64>>);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let grad = param.val().grad(self.0);
            self.1
                .push(values(grad.expect("every parameter gets a gradient")));
        }
    }
    let mut collect = Collect(grads, vec![]);
    model.visit(&mut collect);
    collect.1
}

/// For a tied and an untied head at batch 1 and 2: the worst relative error of
/// `CastleLm::token_nll`'s losses and parameter gradients against `forward` + `token_nll`.
fn check_model<B: KernelBackend + AutodiffBackend>(dtype: Option<DType>) -> f64 {
    const VOCAB: usize = 67;
    let device = Default::default();
    let mut worst: f64 = 0.0;
    for tied in [true, false] {
        let mut config = tiny_config(AttentionKind::Castle);
        config.tie_embeddings = tied;
        let mut model = config.init::<B>(VOCAB, &device);
        model.compute_dtype = dtype;
        for (batch, len) in [(1, 9), (2, 5)] {
            let tokens = random_tokens::<B>(batch, len + 1, VOCAB, 11 + batch as u64, &device);
            let (input, target) = (
                tokens.clone().slice([0..batch, 0..len]),
                tokens.slice([0..batch, 1..len + 1]),
            );
            let weights = tensor::<B, 2>(&random_vec(&mut rng(3), batch * len, 1.0), [batch, len]);
            let run = |nll: Tensor<B, 2>| {
                assert_eq!(
                    nll.dtype(),
                    model.embed.weight.val().dtype(),
                    "loss in the parameters' type"
                );
                let grads = (nll.clone() * weights.clone()).sum().backward();
                let mut all = vec![values(nll)];
                all.extend(gradients(&model, &grads));
                all
            };
            let fused = run(model.token_nll(input.clone(), target.clone()));
            let reference = run(B::token_nll(model.forward(input), target));
            let err = relative_error(&fused, &reference);
            println!("tied {tied} batch {batch} {dtype:?}: {err:.2e}");
            worst = worse(err, worst);
        }
    }
    worst
}

#[test]
fn model_token_nll_matches_forward_then_token_nll_in_f64() {
    let err = check_model::<F64>(None);
    assert!(err < 1e-10, "relative error {err:e}");
}

#[test]
fn model_token_nll_on_flex_matches_forward_then_token_nll() {
    let err = check_model::<F32>(None);
    assert!(err < 1e-5, "relative error {err:e}");
}

/// Under bf16 compute the loss stays f32, as `logits` returns it; the fused head multiplies in
/// f32 where the tensor-op head rounds the logits to bf16, so they agree to bf16's precision.
#[test]
fn model_token_nll_under_bf16_is_f32_and_close_to_f32() {
    let err = check_model::<F32>(Some(DType::BF16));
    assert!(err < 5e-2, "relative error {err:e}");
}

/// burn 0.21 frees, at the end of any thread's backward pass, the steps of graphs that no live
/// tensor references; the fused ops must hold their inputs while they run (see
/// `kernels::host_op::hold_inputs`), or a concurrent backward pass (`--devices N` ranks are
/// threads) loses gradients behind them. Before that fix this failed in most runs.
#[test]
fn model_gradients_survive_concurrent_backward_passes() {
    let worst = std::thread::scope(|s| {
        let threads: Vec<_> = (0..4)
            .map(|_| s.spawn(|| (0..8).map(|_| check_model::<F32>(None)).fold(0.0, worse)))
            .collect();
        let errs = threads.into_iter().map(|t| t.join().expect("no panic"));
        errs.fold(0.0, worse)
    });
    assert!(worst < 1e-5, "relative error {worst:e}");
}
