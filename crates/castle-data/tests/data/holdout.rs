use castle_data::holdout::{priority, TokenizerSample};
use castle_data::{split_documents, DataConfig};

#[test]
fn holdout_is_every_nth_document_up_to_a_bound() {
    let docs: Vec<String> = (0..100).map(|i| format!("doc {i}")).collect();
    let cfg = DataConfig {
        val_every: 3,
        val_documents: 5,
        ..Default::default()
    };
    let (train, val) = split_documents(docs.clone(), &cfg);
    assert_eq!(val, ["doc 2", "doc 5", "doc 8", "doc 11", "doc 14"]);
    assert_eq!(train.len(), 95);
    assert!(train.iter().all(|d| !val.contains(d)));
    // Without a binding bound, today's rule: every third document.
    let cfg = DataConfig {
        val_documents: 1000,
        ..cfg
    };
    assert_eq!(split_documents(docs, &cfg).1.len(), 33);
}

/// The reference: documents in priority order, the longest prefix within the budget,
/// returned in corpus order.
fn reference_sample(docs: &[String], budget: usize) -> Vec<String> {
    let mut order: Vec<usize> = (0..docs.len()).collect();
    order.sort_by_key(|&i| priority(i as u64));
    let mut used = 0;
    let mut kept: Vec<usize> = order
        .into_iter()
        .take_while(|&i| {
            used += docs[i].len();
            used <= budget
        })
        .collect();
    kept.sort();
    kept.into_iter().map(|i| docs[i].clone()).collect()
}

#[test]
fn tokenizer_sample_is_the_bounded_seeded_prefix() {
    let mut x = 7u64;
    let docs: Vec<String> = (0..500)
        .map(|i| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            format!("{i} {}", "w".repeat((x >> 33) as usize % 300))
        })
        .collect();
    let total: usize = docs.iter().map(String::len).sum();
    for budget in [1, 100, 5_000, 40_000, total - 1, total, total * 2] {
        let mut sample = TokenizerSample::new(budget);
        for (i, d) in docs.iter().enumerate() {
            sample.offer(i as u64, d.clone());
        }
        let got = sample.into_documents();
        assert_eq!(got, reference_sample(&docs, budget), "budget {budget}");
        assert!(got.iter().map(String::len).sum::<usize>() <= budget);
    }
}

#[test]
fn new_keys_are_checked_by_name() {
    for (key, toml) in [
        ("data.shard_tokens", "shard_tokens = 0"),
        ("data.val_documents", "val_documents = 0"),
        ("data.tokenizer_sample_bytes", "tokenizer_sample_bytes = 0"),
    ] {
        let cfg: DataConfig = toml::from_str(toml).unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains(key), "{err}");
    }
    let cfg: DataConfig = toml::from_str("format = \"llmc\"").unwrap();
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("data.tokenizer"), "{err}");
}
