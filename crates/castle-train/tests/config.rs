//! Config errors name the key at fault, before any work starts.

use std::path::Path;

use castle_train::RunConfig;

fn tiny() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/tiny.toml")
}

fn error_for(overrides: &[&str]) -> String {
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    format!("{:#}", RunConfig::load(&tiny(), &overrides).unwrap_err())
}

#[test]
fn shipped_configs_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut files = vec![root.join("tiny.toml"), root.join("small.toml")];
    for entry in std::fs::read_dir(root.join("paper")).unwrap() {
        files.push(entry.unwrap().path());
    }
    assert!(files.len() >= 14, "tiny, small and the 12 paper configs");
    for file in files {
        // The paper configs name the CUDA backend; validate them as a CPU build would run them.
        let cpu = ["backend.kind=\"ndarray\"".to_string()];
        RunConfig::load(&file, &cpu).unwrap_or_else(|e| panic!("{}: {e:#}", file.display()));
    }
}

#[test]
fn overrides_reach_any_key() {
    let c = RunConfig::load(
        &tiny(),
        &[
            "train.lr=1e-4".into(),
            "run.dir=/tmp/x".into(),
            "model.attention=\"baseline\"".into(),
        ],
    )
    .unwrap();
    assert_eq!(c.train.lr, 1e-4);
    assert_eq!(c.run.dir, Path::new("/tmp/x"));
    assert_eq!(c.model.attention, castle_model::AttentionKind::Baseline);
}

#[test]
fn each_bad_value_names_its_key() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["train.seq_len=128"],
            "train.seq_len = 128 exceeds model.max_seq_len = 64",
        ),
        (
            &["train.tokens_per_step=100"],
            "train.tokens_per_step = 100",
        ),
        (&["train.warmup_steps=100"], "train.warmup_steps = 100"),
        (&["model.block_size=0"], "model.block_size = 0"),
        (
            &["model.attention=\"castle-swl\"", "model.window=0"],
            "model.window = 0",
        ),
        (&["model.attention=\"castle-swl\""], "model.window"),
        (&["model.head_dim=7"], "model.head_dim = 7"),
        (&["train.lr=-1"], "train.lr = -1"),
        (&["train.beta2=1.5"], "train.beta2 = 1.5"),
        (&["eval.tokens=10"], "eval.tokens = 10"),
        (&["data.vocab_size=100"], "data.vocab_size = 100"),
        (&["backend.kind=\"cuda\""], "backend.kind = \"cuda\""),
        (&["backend.dtype=\"f16\""], "backend.dtype"),
        (&["train.lrr=1"], "unknown field `lrr`"),
        (&["backend.kind=\"tpu\""], "unknown variant `tpu`"),
        (&["checkpoint.keep_last=0"], "checkpoint.keep_last = 0"),
    ];
    for (overrides, expected) in cases {
        let err = error_for(overrides);
        assert!(err.contains(expected), "{overrides:?}: {err}");
    }
}

#[test]
fn missing_config_file_is_named() {
    let err = RunConfig::load(Path::new("/nonexistent/x.toml"), &[]).unwrap_err();
    assert!(format!("{err:#}").contains("/nonexistent/x.toml"));
}
