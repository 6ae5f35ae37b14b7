//! bf16 mixed precision on `Flex` (`castle_model::precision`): a bf16 forward matches the f32
//! one within bf16's precision on every attention path (fused kernels and both tensor-op forms),
//! the tensor-op layers take bf16 inputs, and gradients land in the f32 parameters close to the
//! f32 gradients, at awkward sizes.

mod common;

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::DType;
use castle_model::lm::token_nll;
use castle_model::precision::to_dtype;
use castle_model::{AttentionKind, AttentionPath, CastleLm};
use common::{random_tokens, random_vec, rng, tiny_config, values};

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

/// `model` computing in bf16. Its parameters are read first: burn initialises them lazily, and
/// a clone of an unread parameter would draw its own random values.
fn bf16(model: &CastleLm<B>) -> CastleLm<B> {
    struct Read;
    impl ModuleVisitor<B> for Read {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let _ = param.val();
        }
    }
    model.visit(&mut Read);
    let mut m = model.clone();
    m.compute_dtype = Some(DType::BF16);
    m
}

#[test]
fn bf16_forward_matches_f32_within_bf16_precision_on_every_path() {
    let device = Default::default();
    for kind in KINDS {
        let model = tiny_config(kind).init::<B>(VOCAB, &device);
        let half = bf16(&model);
        for (batch, len) in [(1, 1), (2, 13), (1, 21)] {
            let tokens = random_tokens::<B>(batch, len, VOCAB, 5, &device);
            for path in [
                AttentionPath::Kernel { block: 4 },
                AttentionPath::Chunked { block: 4 },
                AttentionPath::Naive,
            ] {
                let full = model.forward_with(tokens.clone(), path);
                let mixed = half.forward_with(tokens.clone(), path);
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
    for (name, full, mixed) in [
        (
            "rmsnorm",
            block.attn_norm.forward_reference(x.clone()),
            block.attn_norm.forward_reference(xh.clone()),
        ),
        (
            "swiglu",
            block.mlp.forward_reference(x.clone()),
            block.mlp.forward_reference(xh.clone()),
        ),
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
fn gradients(
    model: &CastleLm<B>,
    grads: &<B as AutodiffBackend>::Gradients,
) -> Vec<(DType, Vec<f64>)> {
    struct Collect<'a>(
        &'a <B as AutodiffBackend>::Gradients,
        Vec<(DType, Vec<f64>)>,
    );
    impl ModuleVisitor<B> for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let g = param
                .val()
                .grad(self.0)
                .expect("every parameter gets a gradient");
            self.1.push((g.dtype(), values(g)));
        }
    }
    let mut collect = Collect(grads, vec![]);
    model.visit(&mut collect);
    collect.1
}

#[test]
fn bf16_gradients_land_in_f32_parameters_close_to_f32_gradients() {
    let device = Default::default();
    for kind in KINDS {
        let model = tiny_config(kind).init::<B>(VOCAB, &device);
        let (batch, len) = (2, 11);
        let tokens = random_tokens::<B>(batch, len + 1, VOCAB, 9, &device);
        let (input, target) = (
            tokens.clone().slice([0..batch, 0..len]),
            tokens.slice([0..batch, 1..len + 1]),
        );
        let grads_of = |m: &CastleLm<B>| {
            let loss = token_nll(m.forward(input.clone()), target.clone()).mean();
            assert_eq!(loss.dtype(), DType::F32, "the loss is f32");
            gradients(m, &loss.backward())
        };
        let (full, mixed) = (grads_of(&model), grads_of(&bf16(&model)));
        assert_eq!(full.len(), mixed.len());
        for (i, ((_, f), (dtype, m))) in full.iter().zip(&mixed).enumerate() {
            assert_eq!(*dtype, DType::F32, "{kind} parameter {i}");
            let err = relative_error(f, m);
            println!("{kind} parameter {i}: gradient error {err:.2e}");
            assert!(err < 5e-2, "{kind} parameter {i}: gradient error {err}");
        }
    }
}
