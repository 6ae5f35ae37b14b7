//! End to end through the `castle-eval` binary on a tiny checkpoint trained in-process with
//! `configs/tiny.toml` on a synthetic corpus (trained once, shared by the tests).

use crate::corpus;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use burn::backend::{Autodiff, NdArray};
use castle_train::metrics::read_metrics;
use castle_train::RunConfig;
use corpus::write_corpus;
use serde_json::Value;

struct Trained {
    _dir: tempfile::TempDir,
    root: PathBuf,
    final_val_loss: f64,
}

fn trained() -> &'static Trained {
    static TRAINED: OnceLock<Trained> = OnceLock::new();
    TRAINED.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        write_corpus(&root, 30);
        let config_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/tiny.toml");
        let overrides = [
            format!("data.source=\"{}\"", root.join("corpus").display()),
            format!("data.dir=\"{}\"", root.join("prepared").display()),
            format!("run.dir=\"{}\"", root.join("run").display()),
        ];
        let config = RunConfig::load(&config_path, &overrides).unwrap();
        let summary = castle_train::trainer::train::<Autodiff<NdArray<f32>>>(
            &config,
            false,
            &Default::default(),
        )
        .unwrap();
        Trained {
            _dir: dir,
            root,
            final_val_loss: summary.final_val_loss,
        }
    })
}

fn castle_eval(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_castle-eval"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("castle-eval runs")
}

fn json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = castle_eval(&all);
    assert!(
        out.status.success(),
        "castle-eval {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn error(args: &[&str]) -> String {
    let out = castle_eval(args);
    assert!(!out.status.success(), "castle-eval {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn run_dir() -> String {
    trained().root.join("run").display().to_string()
}

fn tasks_file() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/tasks/tiny-mc.jsonl")
        .display()
        .to_string()
}

/// A copy of the latest checkpoint (with its run's config) to damage.
fn checkpoint_copy(name: &str) -> (tempfile::TempDir, PathBuf) {
    let src = castle_train::checkpoint::list(&trained().root.join("run"))
        .unwrap()
        .pop()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
    (dir, dst)
}

#[test]
fn perplexity_matches_the_trainers_last_validation() {
    let t = trained();
    let run = t.root.join("run");
    let last_logged = read_metrics(&run.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .rev()
        .find_map(|m| m.val_loss)
        .unwrap();
    assert_eq!(last_logged, t.final_val_loss);
    let report = json(&["--ckpt", &run_dir()]);
    let loss = report["val_loss"].as_f64().unwrap();
    assert!(
        (loss - t.final_val_loss).abs() < 1e-4,
        "{loss} vs trainer {}",
        t.final_val_loss
    );
    assert!((report["val_ppl"].as_f64().unwrap() - loss.exp()).abs() < 1e-9);
    assert_eq!(report["tokens"], 1024, "eval.tokens of configs/tiny.toml");
    assert_eq!(report["attention"], "castle");
    assert_eq!(report["step"], 12, "the latest checkpoint");
    assert!(report["params"].as_u64().unwrap() > 10_000);

    // The checkpoint directory itself, and --best (here the last one too), agree.
    let ckpt = run.join("checkpoints/step-0000012").display().to_string();
    assert_eq!(json(&["--ckpt", &ckpt])["val_loss"], report["val_loss"]);
    let best = json(&["--ckpt", &run_dir(), "--best"]);
    assert!((best["val_loss"].as_f64().unwrap() - loss).abs() < 1e-4 || best["step"] != 12);

    // Another batch size does not change the loss beyond float noise.
    let b1 = json(&["--ckpt", &run_dir(), "--batch-size", "1"]);
    assert!((b1["val_loss"].as_f64().unwrap() - loss).abs() < 1e-4);
}

#[test]
fn perplexity_on_documents_and_the_token_cap() {
    let t = trained();
    let corpus = t.root.join("corpus").display().to_string();
    let all = json(&["--ckpt", &run_dir(), "--data", &corpus]);
    assert!(all["tokens"].as_u64().unwrap() > 5000, "{all}");
    assert!(all["val_loss"].as_f64().unwrap().is_finite());
    let capped = json(&["--ckpt", &run_dir(), "--data", &corpus, "--tokens", "100"]);
    assert_eq!(
        capped["tokens"], 96,
        "whole windows of 32 within 100 tokens"
    );

    // The table names the numbers.
    let out = castle_eval(&["--ckpt", &run_dir(), "--tokens", "64"]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    for key in [
        "checkpoint",
        "attention",
        "params",
        "val_loss",
        "val_ppl",
        "tokens",
    ] {
        assert!(table.contains(key), "{table}");
    }
    let err = error(&["--ckpt", &run_dir(), "--tokens", "10"]);
    assert!(err.contains("not enough tokens for one window"), "{err}");
}

#[test]
fn greedy_generation_uses_the_cache_and_matches_recomputation() {
    let args = [
        "--ckpt",
        &run_dir(),
        "--prompt",
        "the union",
        "--max-new-tokens",
        "12",
        "--temperature",
        "0",
    ];
    let cached = json(&args);
    let mut uncached_args = args.to_vec();
    uncached_args.push("--no-cache");
    let uncached = json(&uncached_args);
    let (g, u) = (&cached["generation"], &uncached["generation"]);
    assert_eq!(g["cache"], "uq-kv");
    assert_eq!(u["cache"], "none");
    assert_eq!(g["text"], u["text"]);
    assert_eq!(g["new_tokens"], u["new_tokens"]);
    assert!(g["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(
        cached.get("val_loss").is_none(),
        "no perplexity unless asked"
    );

    // Streamed: the prompt, then the continuation, then the table; tokens/s on stderr.
    let out = castle_eval(&args);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let expected = format!("the union{}", g["text"].as_str().unwrap());
    assert!(stdout.starts_with(&expected), "{stdout:?} vs {expected:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("tokens/s"));

    // Sampling with a seed is reproducible.
    let sampled = [
        "--ckpt",
        &run_dir(),
        "--prompt",
        "we",
        "--max-new-tokens",
        "10",
        "--temperature",
        "1",
        "--top-k",
        "20",
        "--seed",
        "5",
    ];
    assert_eq!(
        json(&sampled)["generation"]["text"],
        json(&sampled)["generation"]["text"]
    );
}

#[test]
fn multiple_choice_on_the_shipped_task_file() {
    let report = json(&[
        "--ckpt",
        &run_dir(),
        "--tasks",
        &tasks_file(),
        "--perplexity",
        "--tokens",
        "64",
    ]);
    let task = &report["tasks"][0];
    assert_eq!(task["task"], "tiny-mc");
    assert_eq!(task["items"], 12);
    for key in ["acc", "acc_norm"] {
        let v = task[key].as_f64().unwrap();
        assert!(
            (0.0..=1.0).contains(&v) && (v * 12.0).fract().abs() < 1e-9,
            "{key} = {v}"
        );
    }
    assert!(report["val_loss"].is_number(), "--perplexity adds it");
}

/// Names, sizes, modification times and bytes of every file under `dir`.
fn snapshot(dir: &Path) -> Vec<(PathBuf, std::time::SystemTime, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
            (path.clone(), modified, std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn evaluation_only_reads_prepared_data() {
    let prepared = trained().root.join("prepared");
    let before = snapshot(&prepared);
    json(&["--ckpt", &run_dir()]);
    assert!(
        snapshot(&prepared) == before,
        "castle-eval changed {}",
        prepared.display()
    );

    // Data that is missing, or was prepared with other settings, is an error with the fix,
    // never prepared (or rewritten) by castle-eval.
    for (name, replacement) in [("missing", None), ("other-vocab", Some("vocab_size = 290"))] {
        let (_keep, ckpt) = checkpoint_copy("step-0000012");
        let config = ckpt.join("config.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        let elsewhere = ckpt.join(name);
        let mut text = text.replace(
            &prepared.display().to_string(),
            &elsewhere.display().to_string(),
        );
        if let Some(line) = replacement {
            std::fs::create_dir(&elsewhere).unwrap();
            for (path, _, bytes) in &before {
                std::fs::write(elsewhere.join(path.file_name().unwrap()), bytes).unwrap();
            }
            let vocab = text
                .lines()
                .find(|l| l.starts_with("vocab_size"))
                .unwrap()
                .to_string();
            text = text.replace(&vocab, line);
        }
        std::fs::write(&config, text).unwrap();
        let err = error(&["--ckpt", &ckpt.display().to_string()]);
        assert!(err.contains("castle-data prepare"), "{name}: {err}");
        match replacement {
            None => assert!(
                !elsewhere.exists(),
                "castle-eval created {}",
                elsewhere.display()
            ),
            Some(_) => {
                let bytes = |s: Vec<(PathBuf, std::time::SystemTime, Vec<u8>)>| {
                    s.into_iter()
                        .map(|(p, _, b)| (p.file_name().unwrap().to_owned(), b))
                        .collect::<Vec<_>>()
                };
                assert!(
                    bytes(snapshot(&elsewhere)) == bytes(before.clone()),
                    "castle-eval changed {}",
                    elsewhere.display()
                )
            }
        }
    }
}

#[test]
fn a_damaged_validation_shard_is_named() {
    // A copy of the run's prepared data, one byte of its validation shard flipped.
    let prepared = trained().root.join("prepared");
    let (_keep, ckpt) = checkpoint_copy("step-0000012");
    let copy = ckpt.join("prepared-copy");
    std::fs::create_dir(&copy).unwrap();
    for entry in std::fs::read_dir(&prepared).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, copy.join(path.file_name().unwrap())).unwrap();
    }
    let config = ckpt.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace(&prepared.display().to_string(), &copy.display().to_string());
    std::fs::write(&config, text).unwrap();
    let shard = copy.join("val-000000.bin");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[castle_data::shard::HEADER_LEN + 3] ^= 0x01;
    std::fs::write(&shard, bytes).unwrap();

    let out = castle_eval(&["--ckpt", &ckpt.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("val-000000.bin") && stderr.contains("tokens 0.."),
        "{stderr}"
    );
}

#[test]
fn clear_errors() {
    let err = error(&["--ckpt", "/nonexistent/run"]);
    assert!(err.contains("/nonexistent/run does not exist"), "{err}");

    let empty = tempfile::tempdir().unwrap();
    let err = error(&["--ckpt", &empty.path().display().to_string()]);
    assert!(
        err.contains("is not a checkpoint (no state.json) nor a run directory"),
        "{err}"
    );

    let (_keep, ckpt) = checkpoint_copy("step-0000012");
    let model = ckpt.join("model.mpk");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    let err = error(&["--ckpt", &ckpt.display().to_string()]);
    assert!(
        err.contains("model.mpk") && err.contains("cannot load weights"),
        "{err}"
    );

    let (_keep, ckpt) = checkpoint_copy("step-0000012");
    let tok = ckpt.join("tokenizer.json");
    let mut replaced = std::fs::read(&tok).unwrap();
    replaced.extend_from_slice(b"\n "); // same tokenizer, other bytes: another hash
    std::fs::write(&tok, replaced).unwrap();
    let err = error(&["--ckpt", &ckpt.display().to_string()]);
    assert!(err.contains("tokenizer does not match"), "{err}");

    let (_keep, ckpt) = checkpoint_copy("step-0000012");
    std::fs::write(ckpt.join("state.json"), b"{\"format_version\": 1, \"step\"").unwrap();
    let err = error(&["--ckpt", &ckpt.display().to_string()]);
    assert!(err.contains("state.json is corrupt"), "{err}");

    let long = "the union of the people ".repeat(40);
    let err = error(&["--ckpt", &run_dir(), "--prompt", &long]);
    assert!(
        err.contains("longer than the model's context of 64 tokens"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"context\": \"a\", \"choices\": [\" b\"], \"gold\": 0}\n{\"context\": \"a\", \"gold\": 0}\n").unwrap();
    let err = error(&["--ckpt", &run_dir(), "--tasks", &bad.display().to_string()]);
    assert!(
        err.contains(&format!("{}:2", bad.display())) && err.contains("missing field `choices`"),
        "{err}"
    );
}
