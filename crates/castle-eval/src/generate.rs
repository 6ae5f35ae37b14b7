//! Sampling: prefill the prompt, then one cached decoding step per new token
//! ([`castle_model::Decoder`]). The KV cache (baseline) appends a row per token; CASTLE's UQ-KV
//! cache also rewrites the lookahead rows `U` of earlier positions at every step (under SWL
//! only the last `W` of them).
//! [`generate_uncached`] recomputes the whole sequence at every step instead, as a reference.

use std::time::Instant;

use anyhow::{bail, Result};
use burn::prelude::*;
use castle_model::{CastleLm, Decoder, KernelBackend, PromptLogits};

use rand::{Rng as _, SeedableRng};

use crate::mc::argmax;

/// The sampling generator: ChaCha8, seedable and value-stable across versions, so a seed gives
/// the same text everywhere.
pub type Rng = rand_chacha::ChaCha8Rng;

/// How the next token is drawn from the logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingOptions {
    /// 0 picks the most likely token (greedy).
    pub temperature: f64,
    /// Sample among the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Then among the fewest most likely tokens whose probability reaches `top_p` (nucleus
    /// sampling); 1 keeps all.
    pub top_p: f64,
    pub seed: u64,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// Draws a token from `logits` (greedy when the temperature is 0).
pub fn sample(logits: &[f32], options: &SamplingOptions, rng: &mut Rng) -> usize {
    if options.temperature <= 0.0 || options.top_k == 1 {
        return argmax(logits);
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    let by_logit = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b));
    if options.top_k > 0 && options.top_k < order.len() {
        // The `top_k` first in that order, found without sorting the whole vocabulary.
        order.select_nth_unstable_by(options.top_k - 1, by_logit);
        order.truncate(options.top_k);
    }
    order.sort_by(by_logit);
    let top = logits[order[0]] as f64;
    let weights: Vec<f64> = order
        .iter()
        .map(|&i| ((logits[i] as f64 - top) / options.temperature).exp())
        .collect();
    let mut total: f64 = weights.iter().sum();
    if options.top_p < 1.0 {
        let mut mass = 0.0;
        let kept = weights
            .iter()
            .position(|w| {
                mass += w;
                mass >= options.top_p * total
            })
            .map_or(weights.len(), |i| i + 1);
        total = weights[..kept].iter().sum();
    }
    let mut r = rng.random::<f64>() * total;
    for (&i, w) in order.iter().zip(&weights) {
        if r < *w {
            return i;
        }
        r -= w;
    }
    order[order.len() - 1]
}

/// What [`generate`] did and how fast.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Prompt tokens as fed to the model.
    pub prompt_tokens: usize,
    /// Generated token ids (the final `<|endoftext|>` excluded).
    pub tokens: Vec<u32>,
    /// Whether generation stopped at `<|endoftext|>`.
    pub stopped_at_eot: bool,
    pub prefill_s: f64,
    /// Seconds spent producing the generated tokens after the prefill.
    pub decode_s: f64,
}

impl Generation {
    /// Generated tokens per second, prefill included.
    pub fn tokens_per_s(&self) -> f64 {
        let n = self.tokens.len() + usize::from(self.stopped_at_eot);
        n as f64 / (self.prefill_s + self.decode_s).max(1e-9)
    }
}

/// The number of new tokens that fit: errors if the prompt alone exceeds the context, and
/// caps `max_new_tokens` to the rest of it (with a warning).
pub fn fit_to_context(
    prompt_len: usize,
    max_new_tokens: usize,
    max_seq_len: usize,
) -> Result<usize> {
    if prompt_len == 0 {
        bail!("the prompt is empty");
    }
    if prompt_len > max_seq_len {
        bail!(
            "the prompt is {prompt_len} tokens, longer than the model's context of {max_seq_len} tokens (model.max_seq_len); shorten it"
        );
    }
    let room = max_seq_len - prompt_len;
    if max_new_tokens > room {
        tracing::warn!(
            "--max-new-tokens {max_new_tokens} capped to {room}: prompt ({prompt_len} tokens) plus generation must fit the model's context of {max_seq_len} tokens"
        );
    }
    Ok(max_new_tokens.min(room))
}

/// Generates up to `max_new_tokens` after `prompt` with the model's decoder
/// ([`castle_model::Decoder`]: the fused host step on CPU), calling `on_token` with each new id.
/// Stops after `eot` (when given). The prompt plus the new tokens must fit `model.max_seq_len`
/// (see [`fit_to_context`]).
pub fn generate<B: KernelBackend>(
    model: &CastleLm<B>,
    prompt: &[u32],
    max_new_tokens: usize,
    eot: Option<u32>,
    options: &SamplingOptions,
    on_token: impl FnMut(u32),
) -> Result<Generation> {
    let mut decoder = Decoder::new(model);
    let mut seq = None;
    let next_logits = |sequence: &[u32], logits: &mut Vec<f32>| -> Result<()> {
        match seq {
            None => {
                let (id, first) = decoder.start(sequence, PromptLogits::Last)?;
                seq = Some(id);
                *logits = first;
            }
            Some(id) => decoder.step(&[(id, sequence[sequence.len() - 1])], logits)?,
        }
        Ok(())
    };
    let max_seq_len = model.config.max_seq_len;
    sample_loop(
        prompt,
        max_new_tokens,
        max_seq_len,
        eot,
        options,
        on_token,
        next_logits,
    )
}

/// [`generate`] without a cache: a full `forward` over the prompt and everything generated so
/// far for every new token. Same arguments, same tokens (up to floating-point ties).
pub fn generate_uncached<B: KernelBackend>(
    model: &CastleLm<B>,
    prompt: &[u32],
    max_new_tokens: usize,
    eot: Option<u32>,
    options: &SamplingOptions,
    on_token: impl FnMut(u32),
) -> Result<Generation> {
    let device = &model.embed.weight.device();
    let next_logits = |sequence: &[u32], logits: &mut Vec<f32>| {
        let ids: Vec<i64> = sequence.iter().map(|&t| t as i64).collect();
        let tokens = Tensor::from_data(TensorData::new(ids, [1, sequence.len()]), device);
        let all = model.forward(tokens);
        let [_, len, vocab] = all.dims();
        let last = all.slice([0..1, len - 1..len, 0..vocab]).into_data();
        logits.clear();
        logits.extend(last.iter::<f32>());
        Ok(())
    };
    let max_seq_len = model.config.max_seq_len;
    sample_loop(
        prompt,
        max_new_tokens,
        max_seq_len,
        eot,
        options,
        on_token,
        next_logits,
    )
}

/// The loop both share: `next_logits(sequence, logits)` writes the last position's logits after
/// the prompt and the tokens so far into `logits` (one buffer for the whole generation). The
/// first call (over the whole prompt) is timed as the prefill.
fn sample_loop(
    prompt: &[u32],
    max_new_tokens: usize,
    max_seq_len: usize,
    eot: Option<u32>,
    options: &SamplingOptions,
    mut on_token: impl FnMut(u32),
    mut next_logits: impl FnMut(&[u32], &mut Vec<f32>) -> Result<()>,
) -> Result<Generation> {
    let max_new_tokens = fit_to_context(prompt.len(), max_new_tokens, max_seq_len)?;
    let mut rng = Rng::seed_from_u64(options.seed);
    let mut sequence = prompt.to_vec();
    let mut out = Generation {
        prompt_tokens: prompt.len(),
        tokens: vec![],
        stopped_at_eot: false,
        prefill_s: 0.0,
        decode_s: 0.0,
    };
    let mut logits = vec![];
    let mut start = Instant::now();
    while out.tokens.len() < max_new_tokens {
        next_logits(&sequence, &mut logits)?;
        let next = sample(&logits, options, &mut rng) as u32;
        if sequence.len() == prompt.len() {
            out.prefill_s = start.elapsed().as_secs_f64();
            start = Instant::now();
        }
        if Some(next) == eot {
            out.stopped_at_eot = true;
            break;
        }
        sequence.push(next);
        out.tokens.push(next);
        on_token(next);
    }
    out.decode_s = start.elapsed().as_secs_f64();
    Ok(out)
}

/// Turns a growing list of token ids into text increments: decodes the whole list each time
/// and hands out the new suffix, holding back an incomplete UTF-8 character (shown as U+FFFD
/// by the byte-level decoder) until its remaining bytes arrive. With stop strings, the text
/// ends before the first of them (neither it nor anything after it is handed out), and text that
/// could be the start of one is held back until it is known not to be.
#[derive(Debug, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    printed: usize,
    stops: Vec<String>,
    stopped: bool,
}

impl TextStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// A stream that ends before the first of `stops` (none empty).
    pub fn with_stops(stops: Vec<String>) -> Self {
        Self {
            stops,
            ..Self::default()
        }
    }

    /// Whether a stop string has appeared: nothing more will be handed out.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Adds `id` and returns the text that became final.
    pub fn push(&mut self, id: u32, decode: impl Fn(&[u32]) -> Result<String>) -> Result<String> {
        self.ids.push(id);
        if self.stopped {
            return Ok(String::new());
        }
        let text = decode(&self.ids)?;
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min()
        {
            self.stopped = true;
            return Ok(self.take(&text[..at]));
        }
        let stable = text.trim_end_matches('\u{FFFD}');
        let held = self.partial_stop(stable);
        Ok(self.take(&stable[..stable.len() - held]))
    }

    /// Whatever is left, incomplete characters included.
    pub fn finish(&mut self, decode: impl Fn(&[u32]) -> Result<String>) -> Result<String> {
        if self.stopped {
            return Ok(String::new());
        }
        let text = decode(&self.ids)?;
        Ok(self.take(&text))
    }

    /// Bytes at the end of `text` that are the start of a stop string.
    fn partial_stop(&self, text: &str) -> usize {
        self.stops
            .iter()
            .filter_map(|s| {
                (1..s.len())
                    .rev()
                    .find(|&n| s.is_char_boundary(n) && text.ends_with(&s[..n]))
            })
            .max()
            .unwrap_or(0)
    }

    fn take(&mut self, text: &str) -> String {
        if text.len() <= self.printed || !text.is_char_boundary(self.printed) {
            return String::new();
        }
        let new = text[self.printed..].to_string();
        self.printed = text.len();
        new
    }
}
