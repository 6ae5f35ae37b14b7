//! bf16 mixed precision on `Flex` (`castle_kernels::precision`): a bf16 forward matches the f32
//! one within bf16's precision on every attention path (fused kernels and both tensor-op forms),
//! the tensor-op layers take bf16 inputs, and gradients land in the f32 parameters close to the
//! f32 gradients, at awkward sizes.

use crate::common;

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::DType;
use castle_kernels::precision::{project, to_dtype};
use castle_kernels::reference::{rms_norm, swiglu_gate};
use castle_kernels::KernelBackend;
use castle_model::{AttentionKind, CastleLm};
use common::{random_tokens, random_vec, reference_logits, rng, tiny_config, values, Scores};

type B = Autodiff<Flex>;

const VOCAB: usize = 53;
const KINDS: [AttentionKind; 3] = [
    AttentionKind::Baseline,
    AttentionKind::Castle,
    AttentionKind::CastleSwl,
];

/// `max |a - b| / max |a|`.
fn relative_error(a: &[f64], b: &[f64]) -> f64 {
    let scale = a.iter().fold(0f64, |m, v| m.max(v.abs()));
    common::max_abs_diff(a, b) / scale
}

/// `model` computing in `dtype`. Its parameters are read first: burn initialises them lazily,
/// and a clone of an unread parameter would draw its own random values.
fn computing_in<B: KernelBackend>(model: &CastleLm<B>, dtype: DType) -> CastleLm<B> {
    struct Read;
    impl<B: Backend> ModuleVisitor<B> for Read {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let _ = param.val();
        }
    }
    model.visit(&mut Read);
    let mut m = model.clone();
    m.compute_dtype = Some(dtype);
    m
}

fn bf16(model: &CastleLm<B>) -> CastleLm<B> {
    computing_in(model, DType::BF16)
}

#[test]
fn bf16_forward_matches_f32_within_bf16_precision_on_every_path() {
    let device = Default::default();
    for kind in KINDS {
        let model = tiny_config(kind).init::<B>(VOCAB, &device);
        let half = bf16(&model);
        for (batch, len) in [(1, 1), (2, 13), (1, 21)] {
            let tokens = random_tokens::<B>(batch, len, VOCAB, 5, &device);
            for path in [None, Some(Scores::Chunked(4)), Some(Scores::Naive)] {
                let logits = |m: &CastleLm<B>| match path {
                    None => m.forward(tokens.clone()),
                    Some(scores) => reference_logits(m, tokens.clone(), scores),
                };
                let (full, mixed) = (logits(&model), logits(&half));
                assert_eq!(mixed.dtype(), DType::F32, "logits return to f32");
                let err = relative_error(&values(full), &values(mixed));
                println!("{kind} {batch}x{len} {path:?}: logits error {err:.2e}");
                assert!(err < 1e-2, "{kind} {batch}x{len} {path:?}: {err}");
                assert!(err > 0.0, "{kind} {path:?}: the bf16 model computed in f32");
            }
        }
    }
}

#[test]
fn tensor_op_layers_take_bf16_inputs() {
    let device = Default::default();
    let model = tiny_config(AttentionKind::Castle).init::<B>(VOCAB, &device);
    let block = &model.blocks[0];
    let mut r = rng(3);
    let x = Tensor::<B, 3>::from_data(
        TensorData::new(random_vec(&mut r, 2 * 5 * 32, 1.0), [2, 5, 32]),
        &device,
    );
    let xh = to_dtype(x.clone(), DType::BF16);
    let norm = |x| rms_norm(x, block.attn_norm.gamma.val(), block.attn_norm.eps);
    let mlp = &block.mlp;
    let swiglu = |x: Tensor<B, 3>| {
        let h = swiglu_gate(project(&mlp.gate, x.clone()), project(&mlp.up, x));
        project(&mlp.down, h)
    };
    for (name, full, mixed) in [
        ("rmsnorm", norm(x.clone()), norm(xh.clone())),
        ("swiglu", swiglu(x.clone()), swiglu(xh.clone())),
    ] {
        assert_eq!(mixed.dtype(), DType::BF16, "{name}");
        let err = relative_error(&values(full), &values(mixed));
        assert!(err < 2e-2, "{name}: {err}");
    }
    let rope = model.rope.tables::<B>(0, 5, &device);
    let heads = x.reshape([2, 5, 4, 8]).swap_dims(1, 2);
    let full = rope.apply_reference(heads.clone());
    let mixed = rope.apply_reference(to_dtype(heads, DType::BF16));
    assert_eq!(mixed.dtype(), DType::BF16);
    assert!(relative_error(&values(full), &values(mixed)) < 2e-2);
}

/// Every parameter's gradient, flattened, with its float type.
fn gradients<B: AutodiffBackend + KernelBackend>(
    model: &CastleLm<B>,
    grads: &B::Gradients,
) -> Vec<(DType, Vec<f64>)> {
    struct Collect<'a, B: AutodiffBackend>(&'a B::Gradients, Vec<(DType, Vec<f64>)>);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let g = param
                .val()
                .grad(self.0)
                .expect("every parameter gets a gradient");
            self.1.push((g.dtype(), values(g)));
        }
    }
    let mut collect = Collect::<B>(grads, vec![]);
    model.visit(&mut collect);
    collect.1
}

/// `model`'s and `half`'s parameter gradients on one batch: f32 both, and within `tolerance`.
fn gradients_agree<B: AutodiffBackend + KernelBackend>(
    kind: AttentionKind,
    model: &CastleLm<B>,
    half: &CastleLm<B>,
    tokens: Tensor<B, 2, Int>,
    tolerance: f64,
) {
    let [batch, len] = tokens.dims();
    let (input, target) = (
        tokens.clone().slice([0..batch, 0..len - 1]),
        tokens.slice([0..batch, 1..len]),
    );
    let grads_of = |m: &CastleLm<B>| {
        let loss = B::token_nll(m.forward(input.clone()), target.clone()).mean();
        assert_eq!(loss.dtype(), DType::F32, "the loss is f32");
        gradients(m, &loss.backward())
    };
    let (full, mixed) = (grads_of(model), grads_of(half));
    assert_eq!(full.len(), mixed.len());
    for (i, ((_, f), (dtype, m))) in full.iter().zip(&mixed).enumerate() {
        assert_eq!(*dtype, DType::F32, "{kind} parameter {i}");
        let err = relative_error(f, m);
        println!("{kind} parameter {i}: gradient error {err:.2e}");
        assert!(
            err < tolerance,
            "{kind} parameter {i}: gradient error {err}"
        );
    }
}

#[test]
fn bf16_gradients_land_in_f32_parameters_close_to_f32_gradients() {
    let device = Default::default();
    for kind in KINDS {
        let model = tiny_config(kind).init::<B>(VOCAB, &device);
        let tokens = random_tokens::<B>(2, 12, VOCAB, 9, &device);
        gradients_agree(kind, &model, &bf16(&model), tokens, 5e-2);
    }
}

/// The same mixed precision on wgpu (lavapipe in CI), where both attentions run the CubeCL
/// kernels in the 16-bit type: f16 here, since WGSL has no bf16 (on CUDA, `backend.dtype =
/// "bf16"` runs the same kernels in bf16).
#[cfg(feature = "wgpu")]
#[test]
fn f16_on_wgpu_runs_the_cube_kernels_close_to_f32() {
    type W = Autodiff<castle_kernels::cube::Wgpu>;
    let device = Default::default();
    for kind in KINDS {
        let model = tiny_config(kind).init::<W>(VOCAB, &device);
        let half = computing_in(&model, DType::F16);
        let tokens = random_tokens::<W>(2, 12, VOCAB, 9, &device);
        let input = tokens.clone().slice([0..2, 0..11]);
        let (full, mixed) = (model.forward(input.clone()), half.forward(input));
        assert_eq!(mixed.dtype(), DType::F32, "logits return to f32");
        let err = relative_error(&values(full), &values(mixed));
        println!("{kind} wgpu f16: logits error {err:.2e}");
        assert!(err < 5e-3, "{kind} wgpu f16: logits error {err}");
        assert!(err > 0.0, "{kind}: the f16 model computed in f32");
        gradients_agree(kind, &model, &half, tokens, 2e-2);
    }
}
