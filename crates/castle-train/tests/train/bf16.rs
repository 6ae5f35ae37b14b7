//! `backend.dtype = "bf16"` on `configs/tiny.toml` (CPU, `flex`): the loss falls, the curve
//! follows the f32 run's within bf16's precision, and the checkpoints hold f32 parameters close
//! to the f32 run's.

use crate::common;

use common::runs::{assert_success, final_params, metrics};
use common::{castle_train, tiny_args, with, write_corpus};

#[test]
fn bf16_training_follows_the_f32_curve() {
    let tmp = tempfile::tempdir().unwrap();
    write_corpus(tmp.path(), 30);
    for attention in ["castle", "baseline"] {
        let run = |dtype: &str| {
            let name = format!("{attention}-{dtype}");
            let args = with(
                tiny_args(tmp.path(), &name),
                &[
                    &format!("model.attention=\"{attention}\""),
                    &format!("backend.dtype=\"{dtype}\""),
                ],
            );
            assert_success(&castle_train(&args));
            tmp.path().join(name)
        };
        let (full, half) = (run("f32"), run("bf16"));
        let (a, b) = (metrics(&full), metrics(&half));
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            let rel = (x.train_loss - y.train_loss).abs() / x.train_loss;
            assert!(
                rel < 2e-2,
                "{attention} step {}: f32 {} bf16 {}",
                x.step,
                x.train_loss,
                y.train_loss
            );
        }
        // Computed in bf16, training and validation alike: not the f32 numbers.
        let differs = |f: fn(&castle_train::metrics::StepMetrics) -> Option<f64>| {
            a.iter().zip(&b).any(|(x, y)| f(x) != f(y))
        };
        assert!(
            differs(|m| Some(m.train_loss)) && differs(|m| m.val_loss),
            "{attention}"
        );
        let val: Vec<f64> = b.iter().filter_map(|m| m.val_loss).collect();
        assert!(
            val.last() < val.first(),
            "{attention}: bf16 validation loss falls: {val:?}"
        );
        assert!(b.last().unwrap().train_loss < b[0].train_loss);
        // final_params reads the checkpoint as f32: the bf16 run stored f32 parameters.
        let (p, q) = (final_params(&full), final_params(&half));
        let scale = p.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = p
            .iter()
            .zip(&q)
            .fold(0f32, |m, (u, v)| m.max((u - v).abs()));
        assert!(
            worst < 5e-2 * scale,
            "{attention}: parameters differ by {worst} (scale {scale})"
        );
    }
}
