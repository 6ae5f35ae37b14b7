//! The validation holdout (whole documents, bounded) and the tokenizer's training sample
//! (a seeded, bounded sample of the training documents).

use std::collections::BinaryHeap;

use anyhow::{bail, Result};

use crate::config::DataConfig;
use crate::corpus::for_each_document;
use crate::sampler::mix;
use crate::tokenizer::Tok;

/// The holdout rule: document `i` (in corpus order) is validation when
/// `i % val_every == val_every - 1`, until `val_documents` documents are held out.
#[derive(Clone, Debug)]
pub struct Holdout {
    every: u64,
    max: u64,
    taken: u64,
}

impl Holdout {
    pub fn new(cfg: &DataConfig) -> Self {
        Self {
            every: cfg.val_every as u64,
            max: cfg.val_documents as u64,
            taken: 0,
        }
    }

    /// For documents visited in order `0, 1, 2, ...`: `Some(k)` when document `index` is the
    /// `k`-th (from 0) validation document, `None` when it is for training.
    pub fn visit(&mut self, index: u64) -> Option<u64> {
        if index % self.every == self.every - 1 && self.taken < self.max {
            self.taken += 1;
            Some(self.taken - 1)
        } else {
            None
        }
    }
}

/// Splits documents into (training, validation) by the [`Holdout`] rule of `cfg`.
pub fn split_documents(docs: Vec<String>, cfg: &DataConfig) -> (Vec<String>, Vec<String>) {
    let mut holdout = Holdout::new(cfg);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, doc) in docs.into_iter().enumerate() {
        match holdout.visit(i as u64) {
            Some(_) => val.push(doc),
            None => train.push(doc),
        }
    }
    (train, val)
}

/// Seed of the tokenizer sample: a document's priority is `mix(SAMPLE_SEED ^ index)`.
const SAMPLE_SEED: u64 = 0x6361_7374_6c65_4250;

/// The sampling priority of document `index` (lower is kept first).
pub fn priority(index: u64) -> u64 {
    mix(SAMPLE_SEED ^ index)
}

/// The training documents of lowest priority whose bytes fit in a budget: the longest run of
/// documents in priority order that fits. The same documents on every run, every document when
/// they all fit.
pub struct TokenizerSample {
    budget: usize,
    bytes: usize,
    heap: BinaryHeap<(u64, u64, String)>,
    /// Lowest priority dropped so far: nothing at or above it can be in the sample.
    cutoff: u64,
}

impl TokenizerSample {
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            bytes: 0,
            heap: BinaryHeap::new(),
            cutoff: u64::MAX,
        }
    }

    /// Offers training document `index`.
    pub fn offer(&mut self, index: u64, text: String) {
        let priority = priority(index);
        if priority >= self.cutoff {
            return;
        }
        self.bytes += text.len();
        self.heap.push((priority, index, text));
        while self.bytes > self.budget {
            // `bytes` counts the texts in the heap, so over a budget it is not empty.
            let (dropped, _, text) = self.heap.pop().expect("over budget means non-empty");
            self.bytes -= text.len();
            self.cutoff = dropped;
        }
    }

    /// The sampled documents in corpus order.
    pub fn into_documents(self) -> Vec<String> {
        let mut kept = self.heap.into_vec();
        kept.sort_by_key(|&(_, index, _)| index);
        kept.into_iter().map(|(_, _, text)| text).collect()
    }
}

/// Streams the corpus once, samples its training documents and trains the BPE on the sample.
/// Errors (before anything is written) when the holdout would be empty.
pub fn train_tokenizer(cfg: &DataConfig) -> Result<Tok> {
    let mut holdout = Holdout::new(cfg);
    let mut sample = TokenizerSample::new(cfg.tokenizer_sample_bytes);
    let (mut index, mut val, mut train_bytes) = (0u64, 0u64, 0usize);
    let total = for_each_document(&cfg.source, cfg.format, &cfg.text_field, &mut |text| {
        if holdout.visit(index).is_some() {
            val += 1;
        } else {
            train_bytes += text.len();
            sample.offer(index, text);
        }
        index += 1;
        Ok(())
    })?;
    check_holdout(cfg, total, val)?;
    let docs = sample.into_documents();
    if docs.is_empty() {
        bail!(
            "data.tokenizer_sample_bytes = {} is smaller than every training document; raise it",
            cfg.tokenizer_sample_bytes
        );
    }
    let sampled: usize = docs.iter().map(String::len).sum();
    tracing::info!(
        documents = docs.len(),
        sample_mb = sampled as f64 / 1e6,
        train_mb = train_bytes as f64 / 1e6,
        vocab_size = cfg.vocab_size,
        "training byte-level BPE"
    );
    Tok::train(&docs, cfg.vocab_size)
}

/// Errors when `total` documents gave `val` (= 0) validation documents.
pub fn check_holdout(cfg: &DataConfig, total: u64, val: u64) -> Result<()> {
    if val == 0 {
        bail!(
            "{} has only {total} document(s), so data.val_every = {} holds out none for validation; \
             add documents or lower data.val_every (minimum 2)",
            cfg.source.display(),
            cfg.val_every
        );
    }
    Ok(())
}
