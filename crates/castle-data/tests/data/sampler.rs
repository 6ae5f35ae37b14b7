use castle_data::{validation_windows, write_shard, BatchSampler, SamplerState, Shard};

fn shard(n: u32) -> (tempfile::TempDir, Shard) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.bin");
    write_shard(&path, &(0..n).collect::<Vec<_>>(), &[0; 32]).unwrap();
    let shard = Shard::open(&path).unwrap();
    (dir, shard)
}

#[test]
fn batches_are_windows_of_the_shard() {
    let (_d, shard) = shard(1000);
    let mut s = BatchSampler::new(shard.len(), 16, 1).unwrap();
    for _ in 0..50 {
        let batch = s.next_batch(&shard, 4).unwrap();
        assert_eq!(batch.len(), 4 * 17);
        for row in batch.chunks(17) {
            // Token i has id i, so a window is a run of consecutive ids.
            assert!(row.windows(2).all(|w| w[1] == w[0] + 1));
            assert!(*row.last().unwrap() < 1000);
        }
    }
}

#[test]
fn same_seed_same_batches_other_seed_differs() {
    let (_d, shard) = shard(5000);
    let draw = |seed| {
        let mut s = BatchSampler::new(shard.len(), 32, seed).unwrap();
        (0..10)
            .map(|_| s.next_batch(&shard, 8).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(draw(42), draw(42));
    assert_ne!(draw(42), draw(43));
}

#[test]
fn save_and_restore_resumes_exactly() {
    let (_d, shard) = shard(5000);
    let mut a = BatchSampler::new(shard.len(), 32, 7).unwrap();
    for _ in 0..5 {
        a.next_batch(&shard, 8).unwrap();
    }
    let saved = serde_json::to_string(&a.state()).unwrap();
    let expected: Vec<_> = (0..5).map(|_| a.next_batch(&shard, 8).unwrap()).collect();

    let state: SamplerState = serde_json::from_str(&saved).unwrap();
    assert_eq!(
        state,
        SamplerState {
            seed: 7,
            batches_drawn: 5
        }
    );
    let mut b = BatchSampler::from_state(shard.len(), 32, state).unwrap();
    let resumed: Vec<_> = (0..5).map(|_| b.next_batch(&shard, 8).unwrap()).collect();
    assert_eq!(resumed, expected);
    assert_eq!(a.state(), b.state());
}

#[test]
fn starts_cover_the_whole_shard() {
    let (_d, shard) = shard(40);
    let mut s = BatchSampler::new(shard.len(), 8, 3).unwrap();
    let mut seen = [false; 32];
    for _ in 0..200 {
        for row in s.next_batch(&shard, 4).unwrap().chunks(9) {
            seen[row[0] as usize] = true;
        }
    }
    assert!(
        seen.iter().all(|&b| b),
        "every start 0..=31 should be drawn"
    );
}

#[test]
fn too_short_shard_is_an_error() {
    let err = BatchSampler::new(16, 16, 0).unwrap_err().to_string();
    assert!(
        err.contains("16 tokens") && err.contains("seq_len"),
        "{err}"
    );
    assert!(BatchSampler::new(17, 16, 0).is_ok());
}

#[test]
fn validation_windows_are_fixed() {
    let (_d, shard) = shard(100);
    let w = validation_windows(&shard, 10, 1_000).unwrap();
    assert_eq!(w.len(), 9); // starts 0,10,...,80; 90..101 would run past the end
    assert_eq!(w[0], (0..11).collect::<Vec<_>>());
    assert_eq!(w[8][0], 80);
    assert_eq!(w, validation_windows(&shard, 10, 1_000).unwrap());
    assert_eq!(validation_windows(&shard, 10, 35).unwrap().len(), 3);
    assert!(validation_windows(&shard, 100, 1_000).unwrap().is_empty());
}

#[test]
fn rank_parts_concatenate_to_the_global_batch() {
    let (_d, shard) = shard(5000);
    let mut whole = BatchSampler::new(shard.len(), 16, 9).unwrap();
    let mut ranks: Vec<_> = (0..3)
        .map(|_| BatchSampler::new(shard.len(), 16, 9).unwrap())
        .collect();
    for _ in 0..5 {
        let expected = whole.next_batch(&shard, 6).unwrap();
        let parts: Vec<u32> = ranks
            .iter_mut()
            .enumerate()
            .flat_map(|(r, s)| s.next_batch_part(&shard, 6, r, 3).unwrap())
            .collect();
        assert_eq!(parts, expected);
    }
    assert_eq!(ranks[2].state(), whole.state());
}
