//! Training on wgpu (lavapipe in CI) through the `castle-train` binary: from the same checkpoint,
//! the baseline and CASTLE (each attention running its CubeCL kernel) take the same steps on
//! wgpu, under burn's fusion and without it, as on the CPU's `flex`, to float tolerance.
#![cfg(feature = "wgpu")]

use crate::common;

use std::path::Path;
use std::process::Command;

use castle_train::metrics::{read_metrics, StepMetrics};
use common::{castle_train, tiny_args, with, write_corpus};

/// `configs/tiny.toml` with `attention` on `backend` (`fusion` or not) up to step `steps` in
/// `dir/run`; the steps logged there.
fn train(
    dir: &Path,
    run: &str,
    (backend, fusion): (&str, bool),
    attention: &str,
    steps: usize,
) -> Vec<StepMetrics> {
    let args = with(
        tiny_args(dir, run),
        &[
            &format!("backend.kind=\"{backend}\""),
            &format!("backend.fusion={fusion}"),
            &format!("model.attention=\"{attention}\""),
            &format!("train.steps={steps}"),
            "eval.every=3",
            "checkpoint.every=2",
        ],
    );
    let out = castle_train(&args);
    assert!(
        out.status.success(),
        "castle-train on {backend} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = std::fs::read_to_string(dir.join(run).join("config.toml")).unwrap();
    assert!(
        config.contains(&format!("kind = \"{backend}\""))
            && config.contains(&format!("fusion = {fusion}")),
        "{config}"
    );
    read_metrics(&dir.join(run).join("metrics.jsonl")).unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp").arg("-r").arg(from).arg(to).status();
    assert!(status.unwrap().success(), "cp -r {}", from.display());
}

fn assert_same_losses(gpu: &[StepMetrics], cpu: &[StepMetrics], what: &str) {
    assert_eq!(gpu.len(), 6, "{what}: six steps logged");
    assert_eq!(gpu.len(), cpu.len());
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-4 * b.abs();
    for (g, c) in gpu.iter().zip(cpu).skip(2) {
        assert!(
            close(g.train_loss, c.train_loss),
            "{what} step {}: train loss {} on wgpu, {} on flex",
            g.step,
            g.train_loss,
            c.train_loss
        );
        assert_eq!(g.val_loss.is_some(), c.val_loss.is_some());
        if let (Some(a), Some(b)) = (g.val_loss, c.val_loss) {
            assert!(close(a, b), "{what} step {}: val loss {a} vs {b}", g.step);
        }
    }
}

/// The backends draw different initial weights from the same seed, so every run resumes from a
/// step-2 checkpoint of one `flex` run and takes steps 3 to 6.
#[test]
fn wgpu_training_matches_flex() {
    let tmp = tempfile::tempdir().unwrap();
    write_corpus(tmp.path(), 30);
    for attention in ["baseline", "castle"] {
        let start = format!("{attention}-start");
        train(tmp.path(), &start, ("flex", true), attention, 2);
        let mut runs = Vec::new();
        for (name, backend) in [
            ("fused", ("wgpu", true)),
            ("bare", ("wgpu", false)),
            ("flex", ("flex", true)),
        ] {
            let run = format!("{attention}-{name}");
            copy_dir(&tmp.path().join(&start), &tmp.path().join(&run));
            runs.push(train(tmp.path(), &run, backend, attention, 6));
        }
        let what = |name: &str| format!("{attention} on wgpu {name}");
        assert_same_losses(&runs[0], &runs[2], &what("under fusion"));
        assert_same_losses(&runs[1], &runs[2], &what("without fusion"));
    }
}
