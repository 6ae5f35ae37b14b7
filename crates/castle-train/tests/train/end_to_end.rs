//! End to end on `configs/tiny.toml` through the `castle-train` binary: outputs, exact resume
//! after SIGKILL, fallback from a corrupt checkpoint, tokenizer mismatch, divergence, a shard
//! damaged mid-run.

use crate::common;

use std::path::Path;
use std::process::{Command, Stdio};

use castle_train::checkpoint;
use castle_train::memory_estimate::{largest_micro_batch, training_memory, MemoryPlan};
use castle_train::metrics::{read_metrics, StepMetrics};
use common::{castle_train, kill_after_logged_steps, tiny_args, with, write_corpus};

fn metrics(run: &Path) -> Vec<StepMetrics> {
    read_metrics(&run.join("metrics.jsonl")).unwrap()
}

fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "castle-train failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn tiny_run_writes_metrics_summary_and_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    write_corpus(tmp.path(), 30);
    let out = castle_train(&tiny_args(tmp.path(), "run"));
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("validation perplexity:"), "{stdout}");

    let run = tmp.path().join("run");
    let m = metrics(&run);
    assert_eq!(
        m.iter().map(|m| m.step).collect::<Vec<_>>(),
        (1..=12).collect::<Vec<_>>()
    );
    assert!(m
        .iter()
        .all(|m| m.train_loss.is_finite() && m.tokens_per_s > 0.0));
    let vals: Vec<f64> = m.iter().filter_map(|m| m.val_loss).collect();
    assert_eq!(vals.len(), 3, "validation at steps 4, 8, 12");
    assert!(vals[2] < vals[0], "validation loss falls: {vals:?}");
    assert!((m[3].val_ppl.unwrap() / vals[0].exp() - 1.0).abs() < 1e-12);

    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["final_val_loss"].as_f64(), Some(vals[2]));
    assert!(run.join("config.toml").exists());
    // keep_last = 2, plus the best by validation loss (here also the last).
    let names: Vec<String> = checkpoint::list(&run)
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["step-0000010", "step-0000012"]);
    for file in [
        "model.mpk",
        "optim-decayed.mpk",
        "state.json",
        "config.toml",
        "tokenizer.json",
    ] {
        assert!(
            run.join("checkpoints/step-0000012").join(file).exists(),
            "{file}"
        );
    }
}

#[test]
fn resume_after_sigkill_reproduces_the_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    write_corpus(tmp.path(), 30);
    assert_success(&castle_train(&tiny_args(tmp.path(), "straight")));

    // Kill a second run at an arbitrary moment after step 7, then run the same command again.
    let interrupted = tmp.path().join("interrupted");
    let child = Command::new(env!("CARGO_BIN_EXE_castle-train"))
        .args(tiny_args(tmp.path(), "interrupted"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    kill_after_logged_steps(child, &interrupted, 7);
    assert_success(&castle_train(&tiny_args(tmp.path(), "interrupted")));

    let a = metrics(&tmp.path().join("straight"));
    let b = metrics(&interrupted);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.step, y.step);
        assert!(
            (x.train_loss - y.train_loss).abs() < 1e-5,
            "step {}: {} vs {}",
            x.step,
            x.train_loss,
            y.train_loss
        );
        assert_eq!(x.val_loss.is_some(), y.val_loss.is_some());
        if let (Some(u), Some(v)) = (x.val_loss, y.val_loss) {
            assert!((u - v).abs() < 1e-5, "step {} val: {u} vs {v}", x.step);
        }
    }
}

#[test]
fn corrupt_checkpoint_falls_back_to_the_previous_one() {
    let tmp = tempfile::tempdir().unwrap();
    write_corpus(tmp.path(), 30);
    let args = tiny_args(tmp.path(), "run");
    assert_success(&castle_train(&args));
    let run = tmp.path().join("run");
    let model = run.join("checkpoints/step-0000012/model.mpk");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap(); // truncated

    let out = castle_train(&with(args, &["train.steps=14"]));
    assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("step-0000012"), "{stderr}");
    assert!(
        stderr.contains("falling back to the previous checkpoint"),
        "{stderr}"
    );
    let steps: Vec<usize> = metrics(&run).iter().map(|m| m.step).collect();
    assert_eq!(
        steps,
        (1..=14).collect::<Vec<_>>(),
        "steps 11.. rerun from step 10"
    );
}

#[test]
fn checkpoint_from_another_tokenizer_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    write_corpus(tmp.path(), 30);
    let args = tiny_args(tmp.path(), "run");
    assert_success(&castle_train(&args));
    let out = castle_train(&with(
        args,
        &[
            "data.vocab_size=320",
            &format!("data.dir=\"{}\"", tmp.path().join("other").display()),
        ],
    ));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tokenizer sha256"), "{stderr}");
    assert!(stderr.contains("none of the 2 checkpoints"), "{stderr}");
}

#[test]
fn resume_never_rebuilds_the_prepared_data_under_its_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    write_corpus(tmp.path(), 30);
    let data = tmp.path().join("shared-data");
    let args = with(
        tiny_args(tmp.path(), "run"),
        &[&format!("data.dir=\"{}\"", data.display())],
    );
    assert_success(&castle_train(&args));
    let manifest = std::fs::read(data.join("prepared.json")).unwrap();
    let out = castle_train(&with(args, &["data.val_every=3"]));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("other [data] settings"), "{stderr}");
    assert_eq!(
        std::fs::read(data.join("prepared.json")).unwrap(),
        manifest,
        "the prepared data is untouched"
    );
}

#[test]
fn divergence_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    write_corpus(tmp.path(), 30);
    let out = castle_train(&with(
        tiny_args(tmp.path(), "run"),
        &[
            "train.lr=1e12",
            "train.grad_clip=1e30",
            "checkpoint.every=1",
            "train.warmup_steps=0",
        ],
    ));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("training diverged"), "{stderr}");
    assert!(stderr.contains("Last good checkpoint"), "{stderr}");
    assert!(!tmp.path().join("run/summary.json").exists());
}

#[test]
fn a_shard_damaged_mid_run_stops_it_by_name_or_is_rewritten_from_the_corpus() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = write_corpus(tmp.path(), 30);
    let args = tiny_args(tmp.path(), "run");
    assert_success(&castle_train(&with(args.clone(), &["train.steps=6"])));

    // One flipped payload byte, as a bad disk or a partial copy leaves it; without the corpus
    // castle-train cannot rewrite the shard, so the run stops.
    let shard = tmp.path().join("prepared/train-000000.bin");
    let good = std::fs::read(&shard).unwrap();
    let mut bytes = good.clone();
    bytes[castle_data::shard::HEADER_LEN + 100] ^= 0x10;
    std::fs::write(&shard, &bytes).unwrap();
    std::fs::rename(&corpus, tmp.path().join("corpus-away")).unwrap();
    let out = castle_train(&args);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    for expected in [
        "step 7: ",
        "train-000000.bin",
        "tokens 0..",
        "step-0000006) is intact",
        "castle-data prepare",
    ] {
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
    let run = tmp.path().join("run");
    let last = checkpoint::list(&run).unwrap().pop().unwrap();
    let ckpt = checkpoint::read(&last).unwrap();
    assert_eq!(ckpt.state.step, 6);
    let vocab = ckpt.tokenizer().unwrap().vocab_size();
    ckpt.load_model::<burn::backend::Flex>(vocab, &Default::default())
        .unwrap();

    // With the corpus back, castle-train rewrites the shard, byte for byte, says so and resumes.
    std::fs::rename(tmp.path().join("corpus-away"), &corpus).unwrap();
    let out = castle_train(&args);
    assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("castle-train rewrites") && stderr.contains("train-000000.bin"),
        "{stderr}"
    );
    assert!(
        std::fs::read(&shard).unwrap() == good,
        "the shard as written"
    );
    assert_eq!(metrics(&run).last().unwrap().step, 12);

    // A corpus that changed since cannot give the same tokens back: an error, not another run.
    std::fs::write(&shard, &bytes).unwrap();
    std::fs::write(corpus.join("doc-000.txt"), "a document written since").unwrap();
    let out = castle_train(&with(args, &["train.steps=14"]));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the corpus changed"), "{stderr}");
}

#[test]
fn dry_run_prints_the_paper_parameter_count() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/paper");
    for (file, expected) in [
        ("m-castle.toml", "parameters: 352"),
        ("s-baseline.toml", "parameters: 160"),
    ] {
        let out = castle_train(&[
            "--config".into(),
            root.join(file).display().to_string(),
            "--dry-run".into(),
        ]);
        // The paper configs name the CUDA backend: a CPU build still inspects them.
        assert_success(&out);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(expected), "{file}: {stdout}");
        assert!(stdout.contains("backend: cuda f32"), "{stdout}");
        assert!(
            stdout.contains("schedule: 95367 steps x 524288 tokens"),
            "{stdout}"
        );
    }
}

#[test]
fn dry_run_prints_training_memory_and_the_largest_micro_batch_that_fits() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/paper");
    let path = root.join("xl-castle.toml");
    let sets = [
        "backend.memory_gib=141",
        "backend.checkpointing=\"balanced\"",
    ];
    let mut args = vec![
        "--config".into(),
        path.display().to_string(),
        "--dry-run".into(),
    ];
    for s in sets {
        args.extend(["--set".to_string(), s.to_string()]);
    }
    let out = castle_train(&args);
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let overrides: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let config = castle_train::RunConfig::load(&path, &overrides).unwrap();
    let plan = castle_train::memory::memory_plan(&config, config.data.vocab_size);
    let model = &config.model;
    let total = training_memory(model, &plan).total() as f64 / (1u64 << 30) as f64;
    let budget = 141 * (1u64 << 30);
    let largest = [false, true].map(|checkpointing| {
        largest_micro_batch(
            model,
            &MemoryPlan {
                checkpointing,
                ..plan
            },
            budget,
        )
    });
    for expected in [
        "memory per device (cuda f32, attention in device kernels, O(L d) per head, checkpointing balanced), micro-batch 16 x 2048:".to_string(),
        format!("  total {total:.2} GiB"),
        format!(
            "largest micro-batch that fits 141 GiB (backend.memory_gib): {} with checkpointing none, {} with checkpointing balanced",
            largest[0], largest[1]
        ),
    ] {
        assert!(stdout.contains(&expected), "{expected}\n{stdout}");
    }
}
