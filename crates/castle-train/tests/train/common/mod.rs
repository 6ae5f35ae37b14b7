//! A small synthetic corpus and a tiny config for end-to-end tests.

mod corpus;
pub mod runs;

use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

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

/// Waits until the run in `run_dir` has logged `steps` lines of `metrics.jsonl`, then SIGKILLs
/// `child`, and checks that it did not finish.
pub fn kill_after_logged_steps(mut child: Child, run_dir: &Path, steps: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let logged = || {
        castle_train::metrics::read_metrics(&run_dir.join("metrics.jsonl")).map_or(0, |m| m.len())
    };
    while logged() < steps {
        assert!(
            Instant::now() < deadline,
            "the run never reached step {steps}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !run_dir.join("summary.json").exists(),
        "killed before the end"
    );
}
