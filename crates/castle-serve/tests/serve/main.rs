//! castle-serve end to end: tiny checkpoints trained in-process (baseline, CASTLE, CASTLE-SWL),
//! the `castle-serve` binary on an ephemeral port of 127.0.0.1, and a real HTTP client (ureq).
//! Numbers are compared with castle-eval's own log-likelihood and greedy generation.

#[path = "../../../castle-train/tests/train/common/corpus.rs"]
mod corpus;

mod api;
mod lifecycle;
mod numbers;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use burn::backend::{Autodiff, Flex, NdArray};
use castle_eval::load::{resolve, Loaded};
use castle_train::RunConfig;
use serde_json::Value;

/// The backend the server runs a tiny checkpoint on (its `backend.kind`).
pub type B = Flex;

pub const KINDS: [&str; 3] = ["baseline", "castle", "castle-swl"];

/// A tiny trained run per attention kind, in one temporary directory.
pub struct Trained {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Trained {
    pub fn run(&self, kind: &str) -> PathBuf {
        self.root.join(kind)
    }

    /// The run's latest checkpoint, loaded in-process as castle-eval loads it.
    pub fn load(&self, kind: &str) -> Loaded<B> {
        Loaded::<B>::load(
            resolve(&self.run(kind), false).unwrap(),
            &Default::default(),
        )
        .unwrap()
    }
}

pub fn trained() -> &'static Trained {
    static TRAINED: OnceLock<Trained> = OnceLock::new();
    TRAINED.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        corpus::write_corpus(&root, 30);
        let config_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/tiny.toml");
        for kind in KINDS {
            let mut overrides = vec![
                format!("data.source=\"{}\"", root.join("corpus").display()),
                format!("data.dir=\"{}\"", root.join("prepared").display()),
                format!("run.dir=\"{}\"", root.join(kind).display()),
                format!("model.attention=\"{kind}\""),
                "train.steps=6".into(),
            ];
            if kind == "castle-swl" {
                overrides.push("model.window=5".into());
            }
            let config = RunConfig::load(&config_path, &overrides).unwrap();
            castle_train::trainer::train::<Autodiff<NdArray<f32>>>(
                &config,
                false,
                &Default::default(),
            )
            .unwrap();
        }
        Trained { _dir: dir, root }
    })
}

/// A running `castle-serve`, killed when dropped.
pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Server {
    /// Starts `castle-serve --ckpt path --port 0 ARGS` and waits for the line with its URL.
    pub fn start(path: &Path, args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_castle-serve"))
            .arg("--ckpt")
            .arg(path)
            .args(["--port", "0"])
            .args(args)
            .env("RUST_LOG", "warn")
            .env_remove("CASTLE_API_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("castle-serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("castle-serve: listening on ")
            .unwrap_or_else(|| {
                let mut err = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).ok();
                panic!("no URL line: {line:?}\nstderr: {err}")
            })
            .to_string();
        Server { child, url }
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        reply(ureq::post(&format!("{}{path}", self.url)).send_json(body.clone()))
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        reply(ureq::get(&format!("{}{path}", self.url)).call())
    }

    /// `POST /v1/completions` that must succeed.
    pub fn complete(&self, body: &Value) -> Value {
        let (status, value) = self.post("/v1/completions", body);
        assert_eq!(status, 200, "{body} -> {value}");
        value
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Status and JSON body, error statuses included.
pub fn reply(result: Result<ureq::Response, ureq::Error>) -> (u16, Value) {
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("HTTP failed: {e}"),
    };
    let status = response.status();
    let text = response.into_string().unwrap();
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status {status}: body is not JSON ({e}): {text}"));
    (status, value)
}
