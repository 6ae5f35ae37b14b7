//! Zero-shot multiple choice as lm-evaluation-harness scores it.
//!
//! A task is a JSON Lines file of `{"context": ..., "choices": [...], "gold": i}`. Each choice is
//! scored by the summed log-likelihood of its tokens given the context; `acc` counts items whose
//! highest-scoring choice is `gold`, `acc_norm` does the same after dividing each score by the
//! choice's length in characters (Unicode scalar values, Python's `len`, as lm-eval's
//! `completion_len`; not UTF-8 bytes, which differ on any non-ASCII choice). Choices are scored exactly as written: put the separator
//! (usually one leading space, `" Paris"`) into the choice text, as lm-eval's converted tasks do.
//!
//! Tokenization follows lm-eval's `_encode_pair`: trailing whitespace of the context moves to the
//! front of the continuation, `context + continuation` is encoded whole, and the continuation is
//! what follows the context's own encoding. An empty context becomes `<|endoftext|>`. A sequence
//! longer than the model's context is cut from the left.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use castle_data::Tok;
use castle_model::{CastleLm, KernelBackend};
use serde::{Deserialize, Serialize};

/// One line of a task file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    pub context: String,
    pub choices: Vec<String>,
    pub gold: usize,
    /// 1-based line in the task file (not part of the format).
    #[serde(skip)]
    pub line: usize,
}

/// Reads a task file; errors name the file and the 1-based line.
pub fn read_items(path: &Path) -> Result<Vec<Item>> {
    let file =
        File::open(path).with_context(|| format!("cannot open task file {}", path.display()))?;
    let mut items = vec![];
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let at = || format!("{}:{}", path.display(), i + 1);
        let line = line.with_context(at)?;
        if line.trim().is_empty() {
            continue;
        }
        let mut item: Item = serde_json::from_str(&line).with_context(|| {
            format!(
                "{}: expected {{\"context\": string, \"choices\": [string, ...], \"gold\": index}}",
                at()
            )
        })?;
        if item.choices.is_empty() {
            bail!("{}: \"choices\" is empty", at());
        }
        if item.gold >= item.choices.len() {
            bail!(
                "{}: \"gold\" = {} but there are only {} choices (gold counts from 0)",
                at(),
                item.gold,
                item.choices.len()
            );
        }
        if let Some(c) = item.choices.iter().position(String::is_empty) {
            bail!("{}: choice {c} is empty", at());
        }
        item.line = i + 1;
        items.push(item);
    }
    if items.is_empty() {
        bail!("{} holds no items", path.display());
    }
    Ok(items)
}

/// Context and continuation tokens of one choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
}

/// lm-eval's `_encode_pair` (see the module docs).
pub fn encode_pair(tok: &Tok, context: &str, continuation: &str) -> Result<Request> {
    if context.is_empty() {
        return Ok(Request {
            context: vec![tok.eot_id()],
            continuation: tok.encode(continuation)?,
        });
    }
    let trimmed = context.trim_end();
    let (context, continuation) = (
        trimmed,
        format!("{}{continuation}", &context[trimmed.len()..]),
    );
    let whole = tok.encode(&format!("{context}{continuation}"))?;
    let mut context_ids = tok.encode(context)?;
    let cut = context_ids.len().min(whole.len());
    let continuation_ids = whole[cut..].to_vec();
    if context_ids.is_empty() {
        context_ids.push(tok.eot_id()); // a context of only whitespace
    }
    Ok(Request {
        context: context_ids,
        continuation: continuation_ids,
    })
}

/// Anything that gives the summed log-likelihood of continuations given contexts.
pub trait Scorer {
    /// One summed log-likelihood per request (all requests are the choices of one item).
    fn loglikelihoods(&mut self, requests: &[Request]) -> Result<Vec<f64>>;
}

/// The index of the largest value, the first of equals (numpy's `argmax`).
pub fn argmax<T: PartialOrd + Copy>(values: &[T]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// Predictions of one item: `(acc choice, acc_norm choice)` from summed log-likelihoods and the
/// choices' lengths in characters ([`char_len`]).
pub fn predict(loglikelihoods: &[f64], char_lengths: &[usize]) -> (usize, usize) {
    let normalised: Vec<f64> = loglikelihoods
        .iter()
        .zip(char_lengths)
        .map(|(ll, &n)| ll / n.max(1) as f64)
        .collect();
    (argmax(loglikelihoods), argmax(&normalised))
}

/// A choice's length as lm-eval's `acc_norm` counts it: Python's `len`, i.e. Unicode scalar
/// values (`"é"` is 1, not its 2 UTF-8 bytes).
pub fn char_len(choice: &str) -> usize {
    choice.chars().count()
}

/// Scores of one task file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// The file name without its extension.
    pub task: String,
    pub file: PathBuf,
    pub items: usize,
    pub acc: f64,
    pub acc_stderr: f64,
    pub acc_norm: f64,
    pub acc_norm_stderr: f64,
}

/// Standard error of a mean of 0/1 values (lm-eval's `mean_stderr`: sample standard deviation).
fn stderr(p: f64, n: usize) -> f64 {
    if n < 2 {
        return 0.0;
    }
    (p * (1.0 - p) / (n as f64 - 1.0)).sqrt()
}

/// Scores every item of `path`.
pub fn evaluate_task(path: &Path, tok: &Tok, scorer: &mut impl Scorer) -> Result<TaskResult> {
    let items = read_items(path)?;
    let (mut correct, mut correct_norm) = (0usize, 0usize);
    for (i, item) in items.iter().enumerate() {
        let requests = item
            .choices
            .iter()
            .map(|c| encode_pair(tok, &item.context, c))
            .collect::<Result<Vec<_>>>()?;
        let lls = scorer
            .loglikelihoods(&requests)
            .with_context(|| format!("{}:{}", path.display(), item.line))?;
        let lengths: Vec<usize> = item.choices.iter().map(|c| char_len(c)).collect();
        let (pred, pred_norm) = predict(&lls, &lengths);
        correct += usize::from(pred == item.gold);
        correct_norm += usize::from(pred_norm == item.gold);
        if (i + 1) % 100 == 0 {
            tracing::info!("{}: {}/{} items", path.display(), i + 1, items.len());
        }
    }
    let n = items.len();
    let (acc, acc_norm) = (correct as f64 / n as f64, correct_norm as f64 / n as f64);
    Ok(TaskResult {
        task: path
            .file_stem()
            .map_or_else(|| "task".into(), |s| s.to_string_lossy().into_owned()),
        file: path.to_path_buf(),
        items: n,
        acc,
        acc_stderr: stderr(acc, n),
        acc_norm,
        acc_norm_stderr: stderr(acc_norm, n),
    })
}

/// Scores with a model: the choices of an item go through one forward pass, right-padded
/// (the model is causal, so padding after a sequence does not change its log-likelihoods).
pub struct ModelScorer<'a, B: KernelBackend> {
    pub model: &'a CastleLm<B>,
    pub device: B::Device,
}

impl<B: KernelBackend> Scorer for ModelScorer<'_, B> {
    fn loglikelihoods(&mut self, requests: &[Request]) -> Result<Vec<f64>> {
        let max_len = self.model.config.max_seq_len;
        let mut rows = Vec::with_capacity(requests.len());
        for r in requests {
            let n = r.continuation.len();
            if n == 0 {
                bail!("a choice encodes to no tokens after its context");
            }
            if n > max_len {
                bail!(
                    "a choice of {n} tokens does not fit the model's context of {max_len} tokens"
                );
            }
            let mut full: Vec<u32> = r.context.iter().chain(&r.continuation).copied().collect();
            if full.len() > max_len + 1 {
                full.drain(..full.len() - (max_len + 1));
            }
            rows.push((full, n));
        }
        let width = rows.iter().map(|(f, _)| f.len() - 1).max().unwrap_or(1);
        let batch = rows.len();
        let (mut inputs, mut targets) = (vec![0i64; batch * width], vec![0i64; batch * width]);
        for (b, (full, _)) in rows.iter().enumerate() {
            for (t, pair) in full.windows(2).enumerate() {
                inputs[b * width + t] = pair[0] as i64;
                targets[b * width + t] = pair[1] as i64;
            }
        }
        let inputs =
            Tensor::<B, 2, Int>::from_data(TensorData::new(inputs, [batch, width]), &self.device);
        let targets = Tensor::<B, 3, Int>::from_data(
            TensorData::new(targets, [batch, width, 1]),
            &self.device,
        );
        let logprobs: Vec<f32> = log_softmax(self.model.forward(inputs), 2)
            .gather(2, targets)
            .into_data()
            .iter::<f32>()
            .collect();
        Ok(rows
            .iter()
            .enumerate()
            .map(|(b, (full, n))| {
                let end = full.len() - 1;
                logprobs[b * width + end - n..b * width + end]
                    .iter()
                    .map(|&x| x as f64)
                    .sum()
            })
            .collect())
    }
}
