use crate::common;

use std::fs;
use std::path::{Path, PathBuf};

use castle_data::manifest::{MANIFEST_FILE, TOKENIZER_FILE};
use castle_data::{
    open_prepared, prepare, read_documents, split_documents, DataConfig, InputFormat, Tok,
    TokenSource,
};

/// A corpus folder of `n` text files plus a config writing into `out/`.
fn setup(root: &Path, n: usize) -> DataConfig {
    let src = root.join("corpus");
    fs::create_dir(&src).unwrap();
    for (i, doc) in common::documents(n).iter().enumerate() {
        fs::write(src.join(format!("{i:03}.txt")), doc).unwrap();
    }
    DataConfig {
        source: src,
        dir: Some(root.join("out")),
        vocab_size: 300,
        val_every: 4,
        ..Default::default()
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn prepare_builds_then_reuses() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path(), 12);
    let p = prepare(&cfg).unwrap();
    assert!(p.timing.is_some());
    assert_eq!(
        names(&p.dir),
        [
            MANIFEST_FILE,
            TOKENIZER_FILE,
            "train-000000.bin",
            "val-000000.bin"
        ]
    );
    assert_eq!(
        names(tmp.path()),
        ["corpus", "out"],
        "no staging folder left"
    );
    assert_eq!(
        (p.manifest.train.documents, p.manifest.val.documents),
        (9, 3)
    );
    assert_eq!(p.train.shards()[0].tokenizer_hash(), p.tokenizer.hash());

    // Shards hold the documents in order, each followed by EOT.
    let docs = read_documents(&cfg.source, InputFormat::Auto, "text").unwrap();
    let (_, val_docs) = split_documents(docs, &cfg);
    let mut expected = Vec::new();
    for d in &val_docs {
        expected.extend(p.tokenizer.encode(d).unwrap());
        expected.push(p.tokenizer.eot_id());
    }
    assert_eq!(p.val.window(0, p.val.len()).unwrap(), expected);
    let eots = p
        .train
        .window(0, p.train.len())
        .unwrap()
        .into_iter()
        .filter(|&t| t == p.tokenizer.eot_id())
        .count();
    assert_eq!(eots, 9);

    let again = prepare(&cfg).unwrap();
    assert!(again.timing.is_none(), "second run must reuse");
    assert_eq!(again.manifest, p.manifest);
}

#[test]
fn damaged_or_stale_output_is_rebuilt() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = setup(tmp.path(), 8);
    let first = prepare(&cfg).unwrap();
    let train = first.dir.join("train-000000.bin");
    let reference = fs::read(&train).unwrap();
    drop(first);

    // A flipped payload byte: opening stays cheap, but verifying names the shard.
    let mut bytes = reference.clone();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&train, &bytes).unwrap();
    let err = format!(
        "{:#}",
        open_prepared(&cfg).unwrap().train.verify().unwrap_err()
    );
    assert!(err.contains("train-000000.bin"), "{err}");

    // A truncated shard fails to open, by name; prepare rewrites it identically.
    fs::write(&train, &bytes[..bytes.len() - 2]).unwrap();
    assert!(open_prepared(&cfg)
        .unwrap_err()
        .to_string()
        .contains("train-000000.bin"));
    assert!(prepare(&cfg).unwrap().timing.is_some());
    assert_eq!(fs::read(&train).unwrap(), reference);

    cfg.vocab_size = 280;
    assert!(open_prepared(&cfg).is_err());
    let p = prepare(&cfg).unwrap();
    assert!(p.timing.is_some());
    assert_eq!(p.manifest.trained_vocab_size, Some(280));
}

#[test]
fn existing_tokenizer_is_used_as_is() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = setup(tmp.path(), 8);
    let tok = Tok::train(&common::documents(3), 290).unwrap();
    let tok_path = tmp.path().join("my-tokenizer.json");
    tok.save(&tok_path).unwrap();
    cfg.tokenizer = Some(tok_path);
    cfg.vocab_size = 1; // ignored with a given tokenizer
    let p = prepare(&cfg).unwrap();
    assert_eq!(p.tokenizer.hash(), tok.hash());
    assert_eq!(p.val.shards()[0].tokenizer_hash(), tok.hash());
}

/// Runs `prepare` expecting an error; checks nothing was written.
fn failure(cfg: &DataConfig, root: &Path) -> String {
    let before = names(root);
    let err = format!("{:#}", prepare(cfg).unwrap_err());
    assert_eq!(names(root), before, "partial output left behind: {err}");
    err
}

#[test]
fn bad_input_is_reported_without_output() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let good = setup(root, 8);

    let err = failure(
        &DataConfig {
            vocab_size: 100,
            ..good.clone()
        },
        root,
    );
    assert!(err.contains("data.vocab_size = 100 is too small"), "{err}");

    let err = failure(
        &DataConfig {
            source: root.join("nope"),
            ..good.clone()
        },
        root,
    );
    assert!(err.contains("nope") && err.contains("data.source"), "{err}");

    fs::write(good.source.join("zz-bad.txt"), b"\xff\xfe").unwrap();
    let err = failure(&good, root);
    assert!(err.contains("zz-bad.txt") && err.contains("UTF-8"), "{err}");
    fs::remove_file(good.source.join("zz-bad.txt")).unwrap();

    let empty = root.join("empty");
    fs::create_dir(&empty).unwrap();
    fs::write(empty.join("a.txt"), "").unwrap();
    let err = failure(
        &DataConfig {
            source: empty.clone(),
            ..good.clone()
        },
        root,
    );
    assert!(err.contains("no documents"), "{err}");

    let err = failure(
        &DataConfig {
            val_every: 20,
            ..good.clone()
        },
        root,
    );
    assert!(err.contains("data.val_every"), "{err}");

    let err = failure(
        &DataConfig {
            dir: Some(root.join("corpus")),
            ..good.clone()
        },
        root,
    );
    assert!(err.contains("data.dir"), "{err}");
}

#[test]
fn default_source_hint_and_config_parsing() {
    let cfg: DataConfig = toml::from_str("").unwrap();
    assert_eq!(cfg, DataConfig::default());
    assert_eq!(cfg.source, PathBuf::from("data/sotu"));
    assert_eq!(cfg.out_dir(), PathBuf::from("data/prepared/sotu-4096"));
    cfg.validate().unwrap();

    let cfg: DataConfig = toml::from_str("source = \"x.parquet\"\nformat = \"parquet\"\ntext_field = \"content\"\nvocab_size = 512\nval_every = 5").unwrap();
    assert_eq!(cfg.format, InputFormat::Parquet);
    assert_eq!(cfg.out_dir(), PathBuf::from("data/prepared/x-512"));
    let err = toml::from_str::<DataConfig>("vocab = 3")
        .unwrap_err()
        .to_string();
    assert!(err.contains("vocab"), "{err}");

    let err = DataConfig {
        val_every: 1,
        ..Default::default()
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(err.contains("data.val_every = 1"), "{err}");

    // The default source, when missing, points at the fetch script.
    let tmp = tempfile::tempdir().unwrap();
    let cfg = DataConfig {
        dir: Some(tmp.path().join("out")),
        ..Default::default()
    };
    if !cfg.source.exists() {
        let err = format!("{:#}", prepare(&cfg).unwrap_err());
        assert!(err.contains("scripts/fetch_sotu.sh"), "{err}");
    }
}
