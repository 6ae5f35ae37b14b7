//! Splits over many shards: windows across shard boundaries, lazy block checks that refuse
//! damaged data by name, and llm.c / modded-nanogpt shards read in place.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};

use castle_data::writer::{BlockCrcs, BLOCK_TOKENS};
use castle_data::{
    open_prepared, prepare, write_shard, BatchSampler, DataConfig, InputFormat, Shard, ShardSet,
    Tok, TokenSource,
};

/// Writes shards of the given sizes with pseudo-random ids; returns their paths and all ids.
fn shards(dir: &Path, sizes: &[usize]) -> (Vec<PathBuf>, Vec<u32>) {
    let mut x = 12345u64;
    let (mut paths, mut all) = (vec![], vec![]);
    for (i, &n) in sizes.iter().enumerate() {
        let ids: Vec<u32> = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 50_000) as u32
            })
            .collect();
        let path = dir.join(format!("s{i}.bin"));
        write_shard(&path, &ids, &[7; 32]).unwrap();
        all.extend(&ids);
        paths.push(path);
    }
    (paths, all)
}

fn open_set(paths: &[PathBuf]) -> ShardSet {
    let opened = paths
        .iter()
        .map(|p| {
            let s = Shard::open_header(p).unwrap();
            let crcs = BlockCrcs::of(s.payload(), s.dtype().width());
            (s, crcs)
        })
        .collect();
    ShardSet::new(opened).unwrap()
}

#[test]
fn windows_across_shards_equal_the_concatenation() {
    let dir = tempfile::tempdir().unwrap();
    let sizes = [3, 0, 1, BLOCK_TOKENS + 17, 1000, 0, 2 * BLOCK_TOKENS - 1];
    let (paths, all) = shards(dir.path(), &sizes);
    let set = open_set(&paths);
    assert_eq!(set.len(), all.len());
    let mut x = 99u64;
    for n in [0usize, 1, 2, 5, 257, 5000, BLOCK_TOKENS + 3] {
        for _ in 0..20 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            let start = (x >> 11) as usize % (all.len() - n + 1);
            assert_eq!(
                set.window(start, n).unwrap(),
                &all[start..start + n],
                "{start}+{n}"
            );
        }
    }
    // Every shard boundary, exactly.
    let mut end = 0;
    for &n in &sizes {
        end += n;
        if end >= 2 && end + 2 <= all.len() {
            assert_eq!(set.window(end - 2, 4).unwrap(), &all[end - 2..end + 2]);
        }
    }
    set.verify().unwrap();
}

#[test]
fn sampler_draws_across_shards_as_from_one_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, all) = shards(dir.path(), &[700, 1, 300, 2000]);
    let set = open_set(&paths);
    let one = dir.path().join("one.bin");
    write_shard(&one, &all, &[7; 32]).unwrap();
    let one = Shard::open(&one).unwrap();
    let mut a = BatchSampler::new(set.len(), 31, 5).unwrap();
    let mut b = BatchSampler::new(one.len(), 31, 5).unwrap();
    for _ in 0..50 {
        assert_eq!(
            a.next_batch(&set, 8).unwrap(),
            b.next_batch(&one, 8).unwrap()
        );
    }
    // Rank parts over the split concatenate to the global batch.
    let mut whole = BatchSampler::new(set.len(), 31, 6).unwrap();
    let mut ranks = [0, 1].map(|_| BatchSampler::new(set.len(), 31, 6).unwrap());
    for _ in 0..10 {
        let expected = whole.next_batch(&set, 4).unwrap();
        let parts: Vec<u32> = (0..2)
            .flat_map(|r| ranks[r].next_batch_part(&set, 4, r, 2).unwrap())
            .collect();
        assert_eq!(parts, expected);
    }
}

#[test]
fn windows_out_of_range_are_errors() {
    fn check(source: &(impl TokenSource + ?Sized)) {
        let len = source.len();
        assert_eq!(source.window(len - 2, 2).unwrap().len(), 2);
        for (start, n) in [(len - 1, 2), (len + 1, 0), (usize::MAX, 2)] {
            let err = format!("{:#}", source.window(start, n).unwrap_err());
            assert!(err.contains("out of range"), "{start}+{n}: {err}");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (paths, all) = shards(dir.path(), &[7, 5]);
    check(&open_set(&paths));
    check(&Shard::open(&paths[0]).unwrap());
    check(all.as_slice());
}

#[test]
fn a_damaged_shard_is_named_and_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, all) = shards(dir.path(), &[5000, BLOCK_TOKENS + 10]);
    let crcs: Vec<Vec<u32>> = paths
        .iter()
        .map(|p| {
            let s = Shard::open(p).unwrap();
            BlockCrcs::of(s.payload(), 2)
        })
        .collect();
    // Damage a token of the second shard's second block.
    let mut bytes = fs::read(&paths[1]).unwrap();
    let at = bytes.len() - 4;
    bytes[at] ^= 0x40;
    fs::write(&paths[1], &bytes).unwrap();
    let opened = paths
        .iter()
        .zip(crcs)
        .map(|(p, c)| (Shard::open_header(p).unwrap(), c))
        .collect();
    let set = ShardSet::new(opened).unwrap();

    // Undamaged blocks still read; the damaged one is refused with the shard's name.
    assert_eq!(set.window(4990, 20).unwrap(), &all[4990..5010]);
    let mut out = vec![];
    let err = set
        .extend_window(all.len() - 8, 8, &mut out)
        .unwrap_err()
        .to_string();
    let block = format!("tokens {BLOCK_TOKENS}..{}", BLOCK_TOKENS + 10);
    assert!(
        err.contains("s1.bin") && err.contains("checksum") && err.contains(&block),
        "{err}"
    );
    assert!(
        err.contains("delete it and run `castle-data prepare"),
        "castle's own shards are rewritten: {err}"
    );
    assert!(out.is_empty(), "nothing handed out");
    let err = format!("{:#}", set.verify().unwrap_err());
    assert!(err.contains("s1.bin"), "{err}");

    // A sampler drawing from it stops with an error naming the shard, and stays where it was.
    let mut sampler = BatchSampler::new(set.len(), 16, 1).unwrap();
    let err = (0..100_000)
        .find_map(|_| sampler.next_batch(&set, 64).err())
        .expect("a batch falls on the damaged block");
    assert!(err.to_string().contains("s1.bin"), "{err}");
    let at = sampler.state();
    assert!(sampler.next_batch(&set, 64).is_err());
    assert_eq!(sampler.state(), at);
    assert!(Shard::open(&paths[1])
        .unwrap_err()
        .to_string()
        .contains("checksum mismatch"));
}

/// An llm.c / modded-nanogpt shard, written byte by byte as their scripts do.
fn write_llmc(path: &Path, tokens: &[u16], magic: i32, count: i32) {
    let mut header = [0i32; 256];
    header[0] = magic;
    header[1] = 1;
    header[2] = count;
    let mut bytes: Vec<u8> = header.iter().flat_map(|v| v.to_le_bytes()).collect();
    bytes.extend(tokens.iter().flat_map(|t| t.to_le_bytes()));
    fs::write(path, bytes).unwrap();
}

#[test]
fn llmc_shards_are_read_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("fineweb10B");
    fs::create_dir(&src).unwrap();
    let tok = Tok::train(&common::documents(20), 400).unwrap();
    let tok_path = tmp.path().join("tokenizer.json");
    tok.save(&tok_path).unwrap();
    let ids = |n: usize, k: u16| {
        (0..n)
            .map(|i| (i as u16 * 7 + k) % 300)
            .collect::<Vec<u16>>()
    };
    let (t1, t2, v) = (ids(3000, 1), ids(1234, 2), ids(800, 3));
    write_llmc(&src.join("fineweb_train_000001.bin"), &t1, 20240520, 3000);
    write_llmc(&src.join("fineweb_train_000002.bin"), &t2, 20240520, 1234);
    write_llmc(&src.join("fineweb_val_000000.bin"), &v, 20240520, 800);

    let shard = Shard::open_llmc(src.join("fineweb_val_000000.bin")).unwrap();
    let widen = |t: &[u16]| t.iter().map(|&x| x as u32).collect::<Vec<_>>();
    assert_eq!(shard.window(0, 800).unwrap(), widen(&v));

    let cfg = DataConfig {
        source: src.clone(),
        format: InputFormat::Llmc,
        tokenizer: Some(tok_path),
        dir: Some(tmp.path().join("out")),
        ..Default::default()
    };
    let p = prepare(&cfg).unwrap();
    assert_eq!(
        p.train.window(0, p.train.len()).unwrap(),
        widen(&[&t1[..], &t2[..]].concat())
    );
    assert_eq!(p.val.window(0, p.val.len()).unwrap(), widen(&v));
    p.train.verify().unwrap();
    assert!(open_prepared(&cfg).unwrap().timing.is_none());

    // Damaged headers and ids outside the tokenizer are named; the user's source files are
    // never to be deleted, but replaced by a good copy.
    let source_advice = |err: &str| {
        assert!(err.contains("good copy") && err.contains("llm.c"), "{err}");
        assert!(!err.contains("delete"), "{err}");
    };
    let bad = tmp.path().join("bad.bin");
    write_llmc(&bad, &t2, 20240519, 1234);
    let err = Shard::open_llmc(&bad).unwrap_err().to_string();
    assert!(err.contains("bad.bin") && err.contains("20240520"), "{err}");
    source_advice(&err);
    write_llmc(&bad, &t2, 20240520, 1235);
    let err = Shard::open_llmc(&bad).unwrap_err().to_string();
    assert!(
        err.contains("bad.bin") && err.contains("truncated"),
        "{err}"
    );
    source_advice(&err);

    // A source shard damaged after the import is named when read, with the same advice.
    let first = src.join("fineweb_train_000001.bin");
    let mut bytes = fs::read(&first).unwrap();
    bytes[1024 + 100] ^= 0x01;
    fs::write(&first, &bytes).unwrap();
    let p = open_prepared(&cfg).unwrap();
    let err = p.train.window(0, 10).unwrap_err().to_string();
    assert!(
        err.contains("fineweb_train_000001.bin") && err.contains("tokens 0..3000"),
        "{err}"
    );
    source_advice(&err);
    bytes[1024 + 100] ^= 0x01;
    fs::write(&first, &bytes).unwrap();

    write_llmc(
        &src.join("fineweb_train_000003.bin"),
        &[5, 400],
        20240520,
        2,
    );
    let cfg = DataConfig {
        dir: Some(tmp.path().join("out2")),
        ..cfg
    };
    let err = format!("{:#}", prepare(&cfg).unwrap_err());
    assert!(
        err.contains("fineweb_train_000003.bin") && err.contains("400"),
        "{err}"
    );
}
