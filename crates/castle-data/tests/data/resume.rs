//! An interrupted `prepare` continues from its last finished shard and ends with exactly the
//! files of an uninterrupted run: simulated at every shard boundary, and by SIGKILL.

use crate::common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use castle_data::{prepare, DataConfig, Manifest};

/// A corpus of `n` text files and a config with small shards (many of them).
fn setup(root: &Path, n: usize) -> DataConfig {
    let src = root.join("corpus");
    fs::create_dir_all(&src).unwrap();
    for (i, doc) in common::documents(n).iter().enumerate() {
        fs::write(src.join(format!("{i:04}.txt")), doc).unwrap();
    }
    DataConfig {
        source: src,
        dir: Some(root.join("reference")),
        vocab_size: 300,
        val_every: 4,
        shard_tokens: 700,
        ..Default::default()
    }
}

/// Every file of a folder (hidden ones included) by name.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            (name, fs::read(e.path()).unwrap())
        })
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for (name, bytes) in files(from) {
        fs::write(to.join(name), bytes).unwrap();
    }
}

#[test]
fn resuming_at_any_shard_boundary_gives_the_uninterrupted_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path(), 24);
    let reference = prepare(&cfg).unwrap();
    let (train, val) = (
        reference.manifest.train.shards.len(),
        reference.manifest.val.shards.len(),
    );
    assert!(train >= 4 && val >= 2, "{train} train / {val} val shards");
    let expected = files(&reference.dir);

    for (keep_train, keep_val) in [
        (0, 0),
        (1, 0),
        (2, 1),
        (train - 1, val),
        (train, 0),
        (train, val - 1),
    ] {
        let dir = tmp.path().join(format!("resume-{keep_train}-{keep_val}"));
        copy_dir(&reference.dir, &dir);
        // The state after a crash: the manifest lists the first shards; the next shard of
        // each split was renamed into place but not yet listed; a temp file is half written.
        let mut m = Manifest::load(&dir).unwrap();
        m.train.truncate(keep_train);
        m.val.truncate(keep_val);
        m.complete = false;
        m.save(&dir).unwrap();
        for (prefix, keep, total) in [("train", keep_train, train), ("val", keep_val, val)] {
            for i in keep + 1..total {
                fs::remove_file(dir.join(format!("{prefix}-{i:06}.bin"))).unwrap();
            }
        }
        fs::write(dir.join(".train-000003.bin.4242.tmp"), b"half a shard").unwrap();

        let cfg = DataConfig {
            dir: Some(dir.clone()),
            ..cfg.clone()
        };
        let resumed = prepare(&cfg).unwrap();
        assert!(resumed.timing.is_some());
        assert_eq!(resumed.manifest, reference.manifest);
        let got = files(&dir);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "({keep_train}, {keep_val})"
        );
        assert!(got == expected, "({keep_train}, {keep_val}): files differ");
    }
}

#[test]
fn killed_prepare_resumes_to_the_uninterrupted_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path(), 400);
    let reference = prepare(&cfg).unwrap();
    let dir: PathBuf = tmp.path().join("killed");
    let config = tmp.path().join("data.toml");
    fs::write(
        &config,
        format!(
            "[data]\nsource = {:?}\nvocab_size = 300\nval_every = 4\nshard_tokens = 700\n",
            cfg.source.display().to_string()
        ),
    )
    .unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_castle-data"))
            .args(["prepare", "--config"])
            .arg(&config)
            .arg("--set")
            .arg(format!("data.dir={:?}", dir.display().to_string()))
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let (mut kills, mut partial) = (0, 0);
    for delay_ms in [30u64, 60, 90, 120, 150, 200, 250, 300, 400, 500]
        .iter()
        .cycle()
        .take(40)
    {
        let mut child = run();
        std::thread::sleep(Duration::from_millis(*delay_ms));
        if child.try_wait().unwrap().is_some() {
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        partial += Manifest::load(&dir).is_ok_and(|m| !m.complete) as usize;
    }
    let status = run().wait().unwrap();
    assert!(status.success());
    assert!(
        kills > 0 && partial > 0,
        "{kills} kills, {partial} left partial output"
    );
    let m = Manifest::load(&dir).unwrap();
    assert_eq!(m, reference.manifest);
    assert!(
        files(&dir) == files(&reference.dir),
        "files differ after {kills} kills"
    );
}
