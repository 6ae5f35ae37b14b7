//! A small synthetic corpus and a tiny config for end-to-end tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `docs` text files of pseudo-random English-like sentences, written under `dir/corpus`.
pub fn write_corpus(dir: &Path, docs: usize) -> PathBuf {
    let words = [
        "the",
        "union",
        "state",
        "of",
        "congress",
        "people",
        "nation",
        "law",
        "peace",
        "war",
        "trade",
        "public",
        "great",
        "free",
        "and",
        "to",
        "in",
        "we",
        "our",
        "shall",
        "must",
        "year",
        "government",
        "citizens",
        "country",
        "world",
        "has",
        "have",
        "been",
        "will",
    ];
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let mut x: u64 = 12345;
    for d in 0..docs {
        let mut text = String::new();
        for s in 0..60 {
            for w in 0..(6 + (s % 7)) {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let word = words[((x >> 33) as usize + w) % words.len()];
                text.push_str(word);
                text.push(' ');
            }
            text.push_str(". ");
        }
        std::fs::write(corpus.join(format!("doc-{d:03}.txt")), text).unwrap();
    }
    corpus
}

/// `configs/tiny.toml` pointed at a corpus and a run directory under `dir`.
pub fn tiny_args(dir: &Path, run: &str) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    vec![
        "--config".into(),
        root.join("configs/tiny.toml").display().to_string(),
        "--set".into(),
        format!("data.source=\"{}\"", dir.join("corpus").display()),
        "--set".into(),
        format!("data.dir=\"{}\"", dir.join("prepared").display()),
        "--set".into(),
        format!("run.dir=\"{}\"", dir.join(run).display()),
    ]
}

pub fn castle_train(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_castle-train"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("castle-train runs")
}

pub fn with(mut args: Vec<String>, extra: &[&str]) -> Vec<String> {
    for e in extra {
        args.push("--set".into());
        args.push(e.to_string());
    }
    args
}
