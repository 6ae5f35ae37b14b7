//! A small synthetic corpus and a tiny config for end-to-end tests.
#![allow(dead_code)]

mod corpus;

use std::path::Path;
use std::process::{Command, Output};

pub use corpus::write_corpus;

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
