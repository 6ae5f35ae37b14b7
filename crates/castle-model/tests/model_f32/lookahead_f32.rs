//! The attention paths in float32 on both CPU backends against the float64 reference, and the
//! chunked and fused paths' gradients against the naive path's.

use crate::common;

use burn::backend::ndarray::NdArray;
use burn::backend::{Autodiff, Flex};
use common::check_against_reference;

#[test]
fn all_paths_match_reference_in_f32_batch_one() {
    check_against_reference::<NdArray<f32>>(1e-4, 1, 3, 16);
}

#[test]
fn all_paths_match_reference_on_flex_backend() {
    check_against_reference::<Flex>(1e-4, 1, 2, 8);
}

#[test]
fn autodiff_backend_forward_matches_reference() {
    check_against_reference::<Autodiff<NdArray<f32>>>(1e-4, 1, 1, 8);
}

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use castle_model::{AttentionKind, KernelBackend};
use common::{random_tokens, reference_logits, tiny_config, values, with_block, Scores};

/// Every parameter's gradient, flattened, in visiting order.
struct Gradients<'a, B: AutodiffBackend> {
    grads: &'a B::Gradients,
    collected: Vec<Vec<f64>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Gradients<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let grad = param
            .val()
            .grad(self.grads)
            .expect("every parameter gets a gradient");
        self.collected.push(values(grad));
    }
}

#[test]
fn chunked_and_fused_gradients_match_naive_for_every_parameter() {
    type B = Autodiff<NdArray<f32>>;
    let device = Default::default();
    let kinds = [
        AttentionKind::Baseline,
        AttentionKind::Castle,
        AttentionKind::CastleSwl,
    ];
    // `None`: the model's own forward (its kernels).
    for (kind, path) in kinds
        .into_iter()
        .flat_map(|k| [(k, Some(Scores::Chunked(5))), (k, None)])
    {
        let model = with_block(tiny_config(kind).init::<B>(53, &device), 5);
        let tokens = random_tokens::<B>(2, 14, 53, 5, &device);
        let gradients = |path: Option<Scores>| {
            let inputs = tokens.clone().slice([0..2, 0..13]);
            let targets = tokens.clone().slice([0..2, 1..14]);
            let logits = match path {
                None => model.forward(inputs),
                Some(scores) => reference_logits(&model, inputs, scores),
            };
            let loss = B::token_nll(logits, targets).mean();
            let grads = loss.backward();
            let mut visitor = Gradients::<B> {
                grads: &grads,
                collected: vec![],
            };
            model.visit(&mut visitor);
            visitor.collected
        };
        let naive = gradients(Some(Scores::Naive));
        let other = gradients(path);
        // embedding + 2 x (2 norms + 2 attention + 3 MLP matrices) + final norm
        assert_eq!(naive.len(), 16);
        for (i, (n, c)) in naive.iter().zip(&other).enumerate() {
            let norm = n.iter().map(|x| x * x).sum::<f64>().sqrt();
            let diff = n
                .iter()
                .zip(c)
                .map(|(x, y)| (x - y).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!(norm > 0.0, "{kind}: parameter {i} has a zero gradient");
            assert!(
                diff / norm < 1e-3,
                "{kind} {path:?}: parameter {i} relative gradient error {:e}",
                diff / norm
            );
        }
    }
}
