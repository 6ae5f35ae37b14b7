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
        // The paper configs name the CUDA backend: they load on any build (for --dry-run).
        RunConfig::load(&file, &[]).unwrap_or_else(|e| panic!("{}: {e:#}", file.display()));
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
        (
            &["backend.dtype=\"f16\""],
            "unknown variant `f16`, expected `f32` or `bf16`",
        ),
        (
            &["backend.kind=\"wgpu\"", "backend.dtype=\"bf16\""],
            "backend.dtype = \"bf16\" cannot run on backend.kind = \"wgpu\"",
        ),
        (&["train.lrr=1"], "unknown field `lrr`"),
        (&["backend.kind=\"tpu\""], "unknown variant `tpu`"),
        (&["checkpoint.keep_last=0"], "checkpoint.keep_last = 0"),
        (
            &["backend.checkpointing=\"full\""],
            "unknown variant `full`, expected `none` or `balanced`",
        ),
        (
            &["backend.memory_gib=0"],
            "backend.memory_gib = 0: must be a positive",
        ),
        (&["backend.memory_gib=-2.5"], "backend.memory_gib = -2.5"),
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

#[test]
fn a_backend_missing_from_the_build_is_refused_when_run_not_when_loaded() {
    use castle_train::backend::{dispatch, OnBackend};
    use castle_train::config::BackendKind;
    struct Nothing;
    impl OnBackend for Nothing {
        type Output = ();
        fn run<B: castle_model::TrainBackend>(self, _: B::Device) -> anyhow::Result<()> {
            Ok(())
        }
    }
    for (name, kind, built) in [
        ("cuda", BackendKind::Cuda, cfg!(feature = "cuda")),
        ("wgpu", BackendKind::Wgpu, cfg!(feature = "wgpu")),
    ] {
        let c = RunConfig::load(&tiny(), &[format!("backend.kind=\"{name}\"")]).unwrap();
        assert_eq!(c.backend.kind, kind);
        assert_eq!(kind.compiled_in(), built);
        // Running on CUDA needs a GPU; a wgpu build runs (on lavapipe in CI).
        if built && kind == BackendKind::Cuda {
            continue;
        }
        let result = dispatch(c.backend.kind, Nothing);
        assert_eq!(result.is_ok(), built, "{name}: {result:?}");
        if let Err(e) = result {
            assert!(e.to_string().contains(&format!("--features {name}")), "{e}");
        }
    }
    assert!(dispatch(BackendKind::Flex, Nothing).is_ok());
}

#[test]
fn backend_checkpointing_picks_burns_strategy() {
    use castle_train::backend::{dispatch_training, OnBackend};
    struct Name;
    impl OnBackend for Name {
        type Output = &'static str;
        fn run<B: castle_model::TrainBackend>(self, _: B::Device) -> anyhow::Result<&'static str> {
            Ok(std::any::type_name::<B>())
        }
    }
    for (kind, inner) in [("flex", "Flex"), ("ndarray", "NdArray")] {
        for setting in ["none", "balanced"] {
            let overrides = [
                format!("backend.kind=\"{kind}\""),
                format!("backend.checkpointing=\"{setting}\""),
            ];
            let c = RunConfig::load(&tiny(), &overrides).unwrap();
            let name = dispatch_training(&c.backend, Name).unwrap();
            // `type_name` leaves out the default `NoCheckpointing`.
            let balanced = name.contains("BalancedCheckpointing");
            assert!(
                name.contains(inner) && balanced == (setting == "balanced"),
                "{setting}: {name}"
            );
        }
    }
}

#[test]
fn resume_names_the_first_fixed_key_that_changed_by_value() {
    let load = |o: &[&str]| {
        let o: Vec<String> = o.iter().map(|s| s.to_string()).collect();
        RunConfig::load(&tiny(), &o).unwrap()
    };
    let saved = load(&[]);
    assert_eq!(load(&[]).resume_mismatch(&saved), None);
    // The learning rate and step count may change on resume, and so may the checkpointing
    // strategy (the same maths, tests/checkpointing.rs) and the memory the dry run fits to.
    assert_eq!(
        load(&["train.lr=1e-4", "train.steps=99"]).resume_mismatch(&saved),
        None
    );
    assert_eq!(
        load(&[
            "backend.checkpointing=\"balanced\"",
            "backend.memory_gib=40"
        ])
        .resume_mismatch(&saved),
        None
    );
    let heads = saved.model.heads;
    assert_eq!(
        load(&[&format!("model.heads={}", 2 * heads)]).resume_mismatch(&saved),
        Some((
            "model.heads".into(),
            heads.to_string(),
            (2 * heads).to_string()
        ))
    );
    let (key, _, _) = load(&["run.seed=12345"]).resume_mismatch(&saved).unwrap();
    assert_eq!(key, "run.seed");
    let (key, was, now) = load(&["model.attention=\"baseline\""])
        .resume_mismatch(&saved)
        .unwrap();
    assert_eq!(
        (key.as_str(), was.as_str(), now.as_str()),
        ("model.attention", "\"castle\"", "\"baseline\"")
    );
}
