//! The fused AdamW against burn's: the same parameters bit for bit, step after step, and the
//! same records on disk, so checkpoints written before the fused update still resume.

use burn::backend::{Autodiff, Flex};
use burn::module::Module;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use castle_model::{CastleLm, ModelConfig};
use castle_train::optim::FusedAdamW;

type B = Autodiff<Flex>;

const VOCAB: usize = 37;

fn tiny_model(attention: &str) -> CastleLm<B> {
    let config: ModelConfig = toml::from_str(&format!(
        "attention = \"{attention}\"\nlayers = 2\nd_model = 24\nhead_dim = 8\nheads = 3\nblock_size = 4\nmax_seq_len = 16"
    ))
    .expect("a valid model config");
    let model = config.init::<B>(VOCAB, &Default::default());
    // burn initialises parameters lazily, and a clone made before that draws its own values.
    params(&model);
    model
}

/// Gradients of the mean token NLL of a fixed batch (2 rows of 11 tokens, varying with `seed`).
fn grads(model: &CastleLm<B>, seed: usize) -> GradientsParams {
    let device = Default::default();
    let ids = |offset: usize| {
        let v: Vec<i64> = (0..22)
            .map(|i| ((i * 7 + seed * 13 + offset) % VOCAB) as i64)
            .collect();
        Tensor::<B, 1, Int>::from_ints(v.as_slice(), &device).reshape([2, 11])
    };
    let loss = model.token_nll(ids(0), ids(1)).mean();
    GradientsParams::from_grads(loss.backward(), model)
}

/// Every parameter of `model`, flattened, in the module's order.
fn params(model: &CastleLm<B>) -> Vec<f32> {
    let mut all = vec![];
    model.visit(&mut Collect(&mut all));
    all
}

struct Collect<'a>(&'a mut Vec<f32>);

impl burn::module::ModuleVisitor<B> for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
        let v = param
            .val()
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .unwrap();
        self.0.extend(v);
    }
}

fn assert_bitwise_equal(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len());
    let differ = a
        .iter()
        .zip(b)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count();
    assert_eq!(differ, 0, "{what}: {differ} of {} values differ", a.len());
}

#[test]
fn fused_adamw_takes_burns_steps_bit_for_bit() {
    for (attention, weight_decay) in [("castle", 0.1), ("baseline", 0.0)] {
        let mut fused_model = tiny_model(attention);
        let mut burn_model = fused_model.clone();
        assert_bitwise_equal(&params(&fused_model), &params(&burn_model), "init");
        let mut fused = OptimizerAdaptor::from(FusedAdamW::new(0.9, 0.95, weight_decay));
        let mut burn = AdamWConfig::new()
            .with_beta_1(0.9)
            .with_beta_2(0.95)
            .with_epsilon(1e-8)
            .with_weight_decay(weight_decay as f32)
            .init::<B, CastleLm<B>>();
        let before = params(&fused_model);
        for (step, lr) in [3e-3, 2e-3, 1e-3].into_iter().enumerate() {
            let g = grads(&fused_model, step);
            fused_model = fused.step(lr, fused_model, g);
            let g = grads(&burn_model, step);
            burn_model = burn.step(lr, burn_model, g);
            let what = format!("{attention} after step {}", step + 1);
            assert_bitwise_equal(&params(&fused_model), &params(&burn_model), &what);
        }
        // The steps moved the parameters, so the comparison above compared updates.
        let moved = before
            .iter()
            .zip(params(&fused_model))
            .filter(|(a, b)| **a != *b)
            .count();
        assert!(moved > before.len() / 2, "only {moved} parameters moved");
    }
}

#[test]
fn burns_optimizer_records_resume_the_fused_optimizer_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    let burn_adamw = || {
        AdamWConfig::new()
            .with_beta_1(0.9)
            .with_beta_2(0.95)
            .with_epsilon(1e-8)
            .with_weight_decay(0.1)
            .init::<B, CastleLm<B>>()
    };
    // Two steps with burn's AdamW, its record saved as an old checkpoint would hold it.
    let mut model = tiny_model("castle");
    let mut burn = burn_adamw();
    for step in 0..2 {
        let g = grads(&model, step);
        model = burn.step(1e-3, model, g);
    }
    recorder
        .record(burn.to_record(), dir.path().join("burn"))
        .unwrap();
    // The third step three ways: burn's optimizer as it is, the fused one loaded from burn's
    // record, and burn's again loaded from the fused one's record.
    let g = grads(&model, 2);
    let want = params(&burn.step(1e-3, model.clone(), g));
    let fused = OptimizerAdaptor::from(FusedAdamW::new(0.9, 0.95, 0.1));
    let mut fused = fused.load_record(
        recorder
            .load(dir.path().join("burn"), &Default::default())
            .unwrap(),
    );
    recorder
        .record(fused.to_record(), dir.path().join("fused"))
        .unwrap();
    let g = grads(&model, 2);
    assert_bitwise_equal(
        &params(&fused.step(1e-3, model.clone(), g)),
        &want,
        "fused from burn's record",
    );
    let mut burn_again = burn_adamw().load_record(
        recorder
            .load(dir.path().join("fused"), &Default::default())
            .unwrap(),
    );
    let g = grads(&model, 2);
    assert_bitwise_equal(
        &params(&burn_again.step(1e-3, model, g)),
        &want,
        "burn's from the fused record",
    );
}
