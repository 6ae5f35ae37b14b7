//! Comparing finished runs: metrics, loss curves, final parameters.

use std::path::Path;
use std::process::Output;

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use castle_train::checkpoint;
use castle_train::metrics::{read_metrics, StepMetrics};

type B = Autodiff<Flex>;

/// The run's `metrics.jsonl`.
pub fn metrics(run: &Path) -> Vec<StepMetrics> {
    read_metrics(&run.join("metrics.jsonl")).unwrap()
}

pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "castle-train failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every logged step of `b` matches `a`'s: train loss to 1e-5 relative, validation alike.
pub fn assert_same_curve(a: &[StepMetrics], b: &[StepMetrics]) {
    assert_eq!(a.len(), b.len(), "logged steps");
    assert!(a.len() >= 10);
    for (x, y) in a.iter().zip(b) {
        assert_eq!((x.step, x.tokens), (y.step, y.tokens));
        let rel = (x.train_loss - y.train_loss).abs() / x.train_loss.abs();
        assert!(
            rel < 1e-5,
            "step {}: train_loss {} vs {}",
            x.step,
            x.train_loss,
            y.train_loss
        );
        assert_eq!(x.val_loss.is_some(), y.val_loss.is_some());
        if let (Some(u), Some(v)) = (x.val_loss, y.val_loss) {
            assert!((u - v).abs() / u < 1e-5, "step {} val: {u} vs {v}", x.step);
        }
    }
}

/// Every parameter of the last checkpoint, flattened, in the model's order.
pub fn final_params(run: &Path) -> Vec<f32> {
    struct Collect(Vec<f32>);
    impl ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0
                .extend(param.val().into_data().to_vec::<f32>().unwrap());
        }
    }
    let ckpt = checkpoint::read(checkpoint::list(run).unwrap().last().unwrap()).unwrap();
    let vocab = ckpt.tokenizer().unwrap().vocab_size();
    let model = ckpt.load_model::<B>(vocab, &Default::default()).unwrap();
    let mut collect = Collect(vec![]);
    model.visit(&mut collect);
    collect.0
}

/// The last checkpoints of runs `a` and `b` hold the same parameters, to 1e-5 of the largest.
pub fn assert_same_params(a: &Path, b: &Path) {
    let (x, y) = (final_params(a), final_params(b));
    assert_eq!(x.len(), y.len());
    let scale = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = x
        .iter()
        .zip(&y)
        .fold(0f32, |m, (u, v)| m.max((u - v).abs()));
    assert!(
        worst <= 1e-5 * scale,
        "largest parameter difference {worst} (scale {scale})"
    );
}

/// Copies the files of directory `from` into `to` (created).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}
