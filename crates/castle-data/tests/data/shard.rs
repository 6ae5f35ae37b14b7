use std::fs;

use castle_data::shard::HEADER_LEN;
use castle_data::{write_shard, Shard, TokenDtype, TokenSource};

const HASH: [u8; 32] = [7; 32];

fn tokens(n: usize, max: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| i.wrapping_mul(2_654_435_761) % (max + 1))
        .chain([max])
        .collect()
}

#[test]
fn round_trip_both_dtypes() {
    let dir = tempfile::tempdir().unwrap();
    for (max, dtype) in [
        (4095, TokenDtype::U16),
        (65_535, TokenDtype::U16),
        (100_000, TokenDtype::U32),
    ] {
        let path = dir.path().join(format!("s{max}.bin"));
        let toks = tokens(10_000, max);
        write_shard(&path, &toks, &HASH).unwrap();
        let shard = Shard::open(&path).unwrap();
        assert_eq!(shard.dtype(), dtype);
        assert_eq!(shard.len(), toks.len());
        assert_eq!(shard.tokenizer_hash(), HASH);
        assert_eq!(
            fs::metadata(&path).unwrap().len() as usize,
            HEADER_LEN + toks.len() * dtype.width()
        );
        assert_eq!(shard.window(0, toks.len()).unwrap(), toks);
        assert_eq!(shard.window(1234, 1).unwrap(), [toks[1234]]);
        assert_eq!(shard.window(17, 5).unwrap(), &toks[17..22]);
    }
    // Only the final files remain: no temp files.
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 3);
}

#[test]
fn empty_shard_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.bin");
    write_shard(&path, &[], &HASH).unwrap();
    let shard = Shard::open(&path).unwrap();
    assert!(shard.is_empty());
}

fn corrupt_error(bytes: Vec<u8>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad-shard.bin");
    fs::write(&path, bytes).unwrap();
    let err = Shard::open(&path).unwrap_err().to_string();
    assert!(
        err.contains("bad-shard.bin"),
        "error does not name the file: {err}"
    );
    err
}

fn good_bytes(max: u32) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("good.bin");
    write_shard(&path, &tokens(1000, max), &HASH).unwrap();
    fs::read(path).unwrap()
}

#[test]
fn flipped_bytes_are_detected() {
    for max in [1000, 70_000] {
        let good = good_bytes(max);
        // Every header byte except the reserved tail, and a sample of payload bytes.
        for i in (0..60).chain((HEADER_LEN..good.len()).step_by(97)) {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            let err = corrupt_error(bad);
            assert!(err.contains("corrupt"), "byte {i}: {err}");
        }
    }
}

#[test]
fn truncated_or_padded_shards_are_detected() {
    let good = good_bytes(1000);
    for len in [0, 10, HEADER_LEN, good.len() - 1, good.len() - 2] {
        let err = corrupt_error(good[..len].to_vec());
        assert!(err.contains("truncated"), "len {len}: {err}");
    }
    let mut long = good.clone();
    long.extend([0, 0]);
    assert!(corrupt_error(long).contains("too long"));
    let mut other = good;
    other[0..8].copy_from_slice(b"NOTSHARD");
    assert!(corrupt_error(other).contains("magic"));
}

#[test]
fn tokenizer_mismatch_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.bin");
    write_shard(&path, &[1, 2, 3], &HASH).unwrap();
    let shard = Shard::open(&path).unwrap();
    shard.check_tokenizer(&HASH).unwrap();
    let err = shard.check_tokenizer(&[8; 32]).unwrap_err().to_string();
    assert!(err.contains("t.bin") && err.contains("tokenizer"), "{err}");
}

#[test]
fn failed_write_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing-dir").join("x.bin");
    assert!(write_shard(&path, &[1, 2, 3], &HASH).is_err());
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}
