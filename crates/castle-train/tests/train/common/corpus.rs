//! The synthetic corpus of the end-to-end tests (castle-eval's tests include this file too).

use std::path::{Path, PathBuf};

/// `docs` text files of pseudo-random English-like sentences, written under `dir/corpus`.
pub fn write_corpus(dir: &Path, docs: usize) -> PathBuf {
    let words = [
        "the",
        "union",
        "state",
        "of",
        "congress",
        "people",
        "nation",
        "law",
        "peace",
        "war",
        "trade",
        "public",
        "great",
        "free",
        "and",
        "to",
        "in",
        "we",
        "our",
        "shall",
        "must",
        "year",
        "government",
        "citizens",
        "country",
        "world",
        "has",
        "have",
        "been",
        "will",
    ];
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let mut x: u64 = 12345;
    for d in 0..docs {
        let mut text = String::new();
        for s in 0..60 {
            for w in 0..(6 + (s % 7)) {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let word = words[((x >> 33) as usize + w) % words.len()];
                text.push_str(word);
                text.push(' ');
            }
            text.push_str(". ");
        }
        std::fs::write(corpus.join(format!("doc-{d:03}.txt")), text).unwrap();
    }
    corpus
}
