//! `castle-eval --export` and `castle-train`'s `run.init_from` (`--init-from`) on tiny runs
//! trained in-process with `configs/tiny.toml` on a synthetic corpus (a CASTLE run and a baseline
//! run, each trained once and shared).

use crate::corpus;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use burn::backend::{Autodiff, NdArray};
use burn::prelude::*;
use castle_data::BatchSampler;
use castle_eval::load::{resolve, Loaded};
use castle_model::safetensors::{import, CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE};
use castle_model::CastleLm;
use castle_model::KernelBackend;
use castle_train::metrics::{metrics_path, read_metrics};
use castle_train::validation::inputs_and_targets;
use castle_train::RunConfig;
use corpus::write_corpus;

type B = NdArray<f32>;
type AD = Autodiff<NdArray<f32>>;

struct Exported {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Exported {
    fn run(&self) -> PathBuf {
        self.root.join("run")
    }
    fn export(&self) -> PathBuf {
        self.root.join("export")
    }
    /// The tiny config on the shared corpus, one micro-batch per step, in `run_dir`.
    fn config(&self, run_dir: &str, more: &[String]) -> RunConfig {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/tiny.toml");
        let mut overrides = vec![
            format!("data.source=\"{}\"", self.root.join("corpus").display()),
            format!("data.dir=\"{}\"", self.root.join("prepared").display()),
            format!("run.dir=\"{}\"", self.root.join(run_dir).display()),
            "train.tokens_per_step=128".to_string(),
        ];
        overrides.extend_from_slice(more);
        RunConfig::load(&path, &overrides).unwrap()
    }
}

/// The trained CASTLE run, exported.
fn exported() -> &'static Exported {
    static EXPORTED: OnceLock<Exported> = OnceLock::new();
    EXPORTED.get_or_init(|| export_run("castle"))
}

/// The trained baseline run, exported.
fn exported_baseline() -> &'static Exported {
    static EXPORTED: OnceLock<Exported> = OnceLock::new();
    EXPORTED.get_or_init(|| export_run("baseline"))
}

/// A run of `attention` trained 8 steps, exported through the `castle-eval` binary.
fn export_run(attention: &str) -> Exported {
    let dir = tempfile::tempdir().unwrap();
    let exported = Exported {
        root: dir.path().to_path_buf(),
        _dir: dir,
    };
    write_corpus(&exported.root, 30);
    let attention_key = format!("model.attention=\"{attention}\"");
    let config = exported.config("run", &["train.steps=8".into(), attention_key]);
    castle_train::trainer::train::<AD>(&config, false, &Default::default()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_castle-eval"))
        .args(["--ckpt", exported.run().to_str().unwrap(), "--export"])
        .arg(exported.export())
        .arg("--json")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "castle-eval --export failed:\n{stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["step"], 8);
    assert_eq!(report["config"]["attention"], attention);
    exported
}

fn bits<Bk: Backend>(logits: Tensor<Bk, 3>) -> Vec<u32> {
    let data = logits.into_data();
    data.as_slice::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

#[test]
fn the_export_gives_the_checkpoints_logits_bit_for_bit() {
    let e = exported();
    let device = Default::default();
    let loaded = Loaded::<B>::load(resolve(&e.run(), false).unwrap(), &device).unwrap();
    let ckpt = &loaded.checkpoint;
    let vocab = loaded.tokenizer.vocab_size();
    let sha = loaded.tokenizer.hash_hex();
    let model: CastleLm<B> =
        import(&e.export(), &ckpt.config.model, vocab, Some(&sha), &device).unwrap();
    let text = "The state of the union is strong, and the people";
    let ids: Vec<i64> = loaded
        .tokenizer
        .encode(text)
        .unwrap()
        .iter()
        .map(|&t| t as i64)
        .collect();
    let tokens =
        Tensor::<B, 2, Int>::from_data(TensorData::new(ids.clone(), [1, ids.len()]), &device);
    assert_eq!(
        bits(loaded.model.forward(tokens.clone())),
        bits(model.forward(tokens))
    );
    assert_eq!(
        std::fs::read(ckpt.dir.join("tokenizer.json")).unwrap(),
        std::fs::read(e.export().join(TOKENIZER_FILE)).unwrap()
    );
    assert!(e.export().join(WEIGHTS_FILE).is_file() && e.export().join(CONFIG_FILE).is_file());
}

#[test]
fn export_into_a_directory_with_files_fails_naming_it() {
    let e = exported();
    let out = Command::new(env!("CARGO_BIN_EXE_castle-eval"))
        .args(["--ckpt", e.run().to_str().unwrap(), "--export"])
        .arg(e.export())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not empty") && stderr.contains(e.export().to_str().unwrap()),
        "{stderr}"
    );
}

/// The loss the trainer's first step reads, for `model` on the run's first batch.
fn first_batch_loss(config: &RunConfig, model: &CastleLm<AD>) -> f64 {
    let data = castle_data::prepare(&config.data).unwrap();
    let (seq_len, batch) = (config.train.seq_len, config.train.batch_size);
    let mut sampler = BatchSampler::new(data.train.len(), seq_len, config.run.seed).unwrap();
    let tokens = sampler.next_batch(&data.train, batch).unwrap();
    let (inputs, targets) = inputs_and_targets::<AD>(&tokens, batch, &Default::default());
    AD::token_nll(model.forward(inputs), targets)
        .mean()
        .into_scalar()
        .elem::<f64>()
}

fn first_logged_loss(config: &RunConfig) -> f64 {
    read_metrics(&metrics_path(&config.run.dir)).unwrap()[0].train_loss
}

#[test]
fn init_from_starts_a_new_run_from_the_exported_weights() {
    let e = exported();
    let device = Default::default();
    let init = format!("run.init_from=\"{}\"", e.export().display());
    let config = e.config("from-export", &["train.steps=2".into(), init]);
    castle_train::trainer::train::<AD>(&config, false, &device).unwrap();
    let data = castle_data::prepare(&config.data).unwrap();
    let vocab = data.tokenizer.vocab_size();
    let model: CastleLm<AD> = import(&e.export(), &config.model, vocab, None, &device).unwrap();
    let expected = first_batch_loss(&config, &model);
    let logged = first_logged_loss(&config);
    assert!(
        (logged - expected).abs() <= 1e-6 * expected,
        "logged {logged}, exported model {expected}"
    );
    let fresh = config.model.init::<AD>(vocab, &device);
    assert!(
        (first_batch_loss(&config, &fresh) - expected).abs() > 0.05,
        "the export is trained"
    );

    // With checkpoints in run.dir the run resumes and run.init_from is not even read.
    let missing = format!("run.init_from=\"{}\"", e.root.join("nowhere").display());
    let resumed = e.config("from-export", &["train.steps=3".into(), missing]);
    let summary = castle_train::trainer::train::<AD>(&resumed, false, &device).unwrap();
    assert_eq!(summary.steps, 3);
    assert_eq!(first_logged_loss(&resumed), logged);
}

#[test]
fn init_from_an_export_of_another_shape_names_the_field() {
    let e = exported();
    let init = format!("run.init_from=\"{}\"", e.export().display());
    let config = e.config("other-shape", &["model.layers=3".into(), init]);
    let message = castle_train::trainer::train::<AD>(&config, false, &Default::default())
        .expect_err("another shape cannot start from the export")
        .to_string();
    assert!(
        message.contains("num_hidden_layers = 2") && message.contains("model.layers"),
        "{message}"
    );
}

/// The exported `config.json`.
fn config_json(e: &Exported) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(e.export().join(CONFIG_FILE)).unwrap()).unwrap()
}

#[test]
fn a_baseline_export_holds_every_key_of_transformers_llama_config() {
    let e = exported_baseline();
    let c = config_json(e);
    let loaded = Loaded::<B>::load(resolve(&e.run(), false).unwrap(), &Default::default()).unwrap();
    let model = &loaded.checkpoint.config.model;
    // `AutoModelForCausalLM.from_pretrained` picks `LlamaConfig` by `model_type`; each key it
    // reads, with the JSON type `LlamaConfig.__init__` takes and the run's value.
    assert_eq!(c["model_type"], "llama");
    assert_eq!(c["architectures"], serde_json::json!(["LlamaForCausalLM"]));
    let eot = loaded.tokenizer.eot_id() as u64;
    for (key, value) in [
        ("vocab_size", loaded.tokenizer.vocab_size() as u64),
        ("hidden_size", model.d_model as u64),
        ("intermediate_size", model.mlp_hidden() as u64),
        ("num_hidden_layers", model.layers as u64),
        ("num_attention_heads", model.heads as u64),
        ("num_key_value_heads", model.heads as u64),
        ("head_dim", model.head_dim as u64),
        ("max_position_embeddings", model.max_seq_len as u64),
        ("bos_token_id", eot),
        ("eos_token_id", eot),
    ] {
        assert_eq!(c[key].as_u64(), Some(value), "{key} = {}", c[key]);
    }
    assert!(c["rms_norm_eps"]
        .as_f64()
        .is_some_and(|e| e > 0.0 && e < 1e-3));
    assert_eq!(c["rope_theta"].as_f64(), Some(model.rope_theta));
    for (key, value) in [
        ("hidden_act", serde_json::json!("silu")),
        (
            "tie_word_embeddings",
            serde_json::json!(model.tie_embeddings),
        ),
        ("attention_bias", serde_json::json!(false)),
        ("mlp_bias", serde_json::json!(false)),
        ("torch_dtype", serde_json::json!("float32")),
    ] {
        assert_eq!(c[key], value, "{key}");
    }
    // castle's own keys stay beside them.
    assert_eq!(c["attention"], "baseline");
    assert_eq!(c["rope_style"], "rotate_half");

    // A CASTLE export declares castle's own type.
    let c = config_json(exported());
    assert_eq!(c["model_type"], "castle");
    assert_eq!(c["architectures"], serde_json::json!(["CastleForCausalLM"]));
}

#[test]
fn init_from_reads_a_baseline_export() {
    let e = exported_baseline();
    let init = format!("run.init_from=\"{}\"", e.export().display());
    let attention = "model.attention=\"baseline\"".to_string();
    let config = e.config("from-export", &["train.steps=2".into(), attention, init]);
    let summary = castle_train::trainer::train::<AD>(&config, false, &Default::default()).unwrap();
    assert_eq!(summary.steps, 2);
}
