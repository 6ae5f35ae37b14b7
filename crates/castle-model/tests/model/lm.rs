//! The whole LM in float64: cached decoding equals the full forward, all attention paths agree
//! (values, and every parameter's gradient), causality, parameter counts and config validation.

use crate::common;

use burn::backend::ndarray::NdArray;
use burn::backend::Autodiff;
use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use castle_model::config::parity_heads;
use castle_model::CastleLm;
use castle_model::{AttentionKind, KernelBackend, ModelConfig};
use common::{
    max_abs_diff, random_tokens, reference_logits, relative_error, tiny_config, values, with_block,
    Scores,
};

type B = NdArray<f64>;
const VOCAB: usize = 61;
const KINDS: [AttentionKind; 3] = [
    AttentionKind::Baseline,
    AttentionKind::Castle,
    AttentionKind::CastleSwl,
];

#[test]
fn prefill_then_decode_equals_full_forward() {
    let device = Default::default();
    for kind in KINDS {
        let model = tiny_config(kind).init::<B>(VOCAB, &device);
        let (batch, len) = (2, 13);
        let tokens = random_tokens::<B>(batch, len, VOCAB, 1, &device);
        let full = model.forward(tokens.clone());
        // Decoded one token at a time, or `step` at a time (the last step shorter).
        for (prefill, step) in [(1, 1), (6, 1), (12, 1), (4, 3)] {
            let (prompt_logits, mut cache) =
                model.prefill(tokens.clone().slice([0..batch, 0..prefill]));
            let mut logits = vec![prompt_logits];
            for t in (prefill..len).step_by(step) {
                let new = tokens.clone().slice([0..batch, t..(t + step).min(len)]);
                logits.push(model.decode(new, &mut cache));
            }
            assert_eq!(cache.len(), len);
            let err = max_abs_diff(&values(full.clone()), &values(Tensor::cat(logits, 1)));
            assert!(
                err < 1e-10,
                "{kind}, prefill {prefill}, step {step}: max abs error {err:e}"
            );
        }
    }
}

#[test]
fn forward_agrees_with_the_naive_and_chunked_references() {
    let device = Default::default();
    for kind in KINDS {
        let model = tiny_config(kind).init::<B>(VOCAB, &device);
        let tokens = random_tokens::<B>(1, 19, VOCAB, 2, &device);
        let naive = values(reference_logits(&model, tokens.clone(), Scores::Naive));
        for block in [1, 4, 7, 32] {
            let chunked = reference_logits(&model, tokens.clone(), Scores::Chunked(block));
            let model = with_block(model.clone(), block);
            for (what, other) in [
                ("chunked", chunked),
                ("fused", model.forward(tokens.clone())),
            ] {
                let err = max_abs_diff(&naive, &values(other));
                assert!(
                    err < 1e-10,
                    "{kind}, {what} block {block}: max abs error {err:e}"
                );
            }
        }
    }
}

/// Every parameter's gradient of the mean next-token loss on `tokens`, by the model's own
/// forward (`fused`) or the chunked reference, in visiting order.
fn parameter_gradients(
    model: &CastleLm<Autodiff<B>>,
    tokens: &Tensor<Autodiff<B>, 2, Int>,
    fused: bool,
) -> Vec<Vec<f64>> {
    struct Collect<'a>(
        &'a <Autodiff<B> as AutodiffBackend>::Gradients,
        Vec<Vec<f64>>,
    );
    impl ModuleVisitor<Autodiff<B>> for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Autodiff<B>, D>>) {
            let grad = param.val().grad(self.0);
            self.1
                .push(values(grad.expect("every parameter gets a gradient")));
        }
    }
    let [batch, len] = tokens.dims();
    let inputs = tokens.clone().slice([0..batch, 0..len - 1]);
    let targets = tokens.clone().slice([0..batch, 1..len]);
    let logits = match fused {
        true => model.forward(inputs),
        false => reference_logits(model, inputs, Scores::Chunked(4)),
    };
    let grads = Autodiff::<B>::token_nll(logits, targets).mean().backward();
    let mut collect = Collect(&grads, vec![]);
    model.visit(&mut collect);
    collect.1
}

#[test]
fn fused_forward_and_chunked_reference_give_every_parameter_the_same_gradient() {
    let device = Default::default();
    for kind in KINDS {
        let model = tiny_config(kind).init::<Autodiff<B>>(VOCAB, &device);
        for (batch, len) in [(1, 2), (2, 14)] {
            let tokens = random_tokens(batch, len, VOCAB, 4, &device);
            // Lengths 1 and 13 against the tiny model's block of 4.
            let chunked = parameter_gradients(&model, &tokens, false);
            let kernel = parameter_gradients(&model, &tokens, true);
            // embedding + 2 x (2 norms + 2 attention + 3 MLP matrices) + final norm
            assert_eq!(kernel.len(), 16);
            for (i, (k, c)) in kernel.iter().zip(&chunked).enumerate() {
                assert!(
                    c.iter().any(|&g| g != 0.0),
                    "{kind}: parameter {i} has no gradient"
                );
                let err = relative_error(std::slice::from_ref(k), std::slice::from_ref(c));
                assert!(
                    err < 1e-10,
                    "{kind} batch {batch} len {len}: parameter {i} relative error {err:e}"
                );
            }
        }
    }
}

#[test]
fn later_tokens_never_change_earlier_logits() {
    let device = Default::default();
    let len = 17;
    for kind in KINDS {
        let model = tiny_config(kind).init::<B>(VOCAB, &device);
        let tokens = random_tokens::<B>(1, len, VOCAB, 3, &device);
        for t in [0, 5, 15] {
            let mut ids = tokens.to_data().to_vec::<i64>().unwrap();
            for id in &mut ids[t + 1..] {
                *id = (*id + 7) % VOCAB as i64;
            }
            let changed = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, len]), &device);
            let a = values(model.forward(tokens.clone()).slice([0..1, 0..t + 1]));
            let b = values(model.forward(changed).slice([0..1, 0..t + 1]));
            assert_eq!(a, b, "{kind}: logits at or before {t} changed");
        }
    }
}

#[test]
fn analytic_parameter_count_equals_built_model() {
    let device = Default::default();
    for kind in KINDS {
        for tie in [true, false] {
            let mut config = tiny_config(kind);
            config.tie_embeddings = tie;
            let model = config.init::<B>(VOCAB, &device);
            assert_eq!(
                config.param_summary(VOCAB).total,
                model.num_params(),
                "{kind} tie={tie}"
            );
        }
    }
}

#[test]
fn paper_table_4_parameter_counts() {
    // (layers, d_model, baseline heads, d, baseline params, CASTLE params)
    let table = [
        (12, 896, 14, 64, 160e6, 160e6),
        (24, 1024, 16, 64, 353e6, 351e6),
        (24, 1536, 16, 96, 756e6, 753e6),
        (24, 2048, 16, 128, 1.310e9, 1.304e9),
    ];
    for (layers, d_model, heads, d, baseline, castle) in table {
        let config = ModelConfig::new(layers, d_model, heads, d);
        for (kind, expected) in [
            (AttentionKind::Baseline, baseline),
            (AttentionKind::Castle, castle),
        ] {
            let count = config
                .clone()
                .with_attention(kind, None)
                .param_summary(50304)
                .total;
            let rel = (count as f64 - expected).abs() / expected;
            assert!(
                rel < 0.01,
                "{kind} d_model={d_model}: {count} vs {expected:e}"
            );
        }
    }
    assert_eq!(parity_heads(14), 8);
    assert_eq!(parity_heads(16), 9);
}

#[test]
fn invalid_configs_name_the_key() {
    let base = tiny_config(AttentionKind::Castle);
    type Breakage = Box<dyn Fn(&mut ModelConfig)>;
    let cases: Vec<(&str, Breakage)> = vec![
        ("model.layers", Box::new(|c| c.layers = 0)),
        ("model.head_dim", Box::new(|c| c.head_dim = 7)),
        ("model.block_size", Box::new(|c| c.block_size = 0)),
        ("model.window", Box::new(|c| c.window = Some(8))),
        (
            "model.window",
            Box::new(|c| c.attention = AttentionKind::CastleSwl),
        ),
        (
            "model.window",
            Box::new(|c| {
                c.attention = AttentionKind::CastleSwl;
                c.window = Some(0)
            }),
        ),
        ("model.castle_heads", Box::new(|c| c.castle_heads = Some(0))),
    ];
    assert!(base.validate().is_ok());
    for (key, break_it) in cases {
        let mut config = base.clone();
        break_it(&mut config);
        let err = config.validate().expect_err(key);
        assert_eq!(err.key, key, "{err}");
        assert!(err.to_string().starts_with(key), "{err}");
    }
}

#[test]
fn unknown_keys_are_rejected_by_name() {
    let err = toml::from_str::<ModelConfig>(
        "attention = \"castle\"\nlayers = 2\nd_model = 8\nhead_dim = 4\nheads = 2\nwindw = 3\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("windw"), "{err}");
}
