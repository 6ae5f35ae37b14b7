//! Table 3: decoding, per token, after a prefill of the context. The model's tensor-op step
//! (`CastleLm::decode`, the old path) against the decoder (`castle_model::Decoder`, the host
//! step on CPU) at batch 1, the decoder at batch 16, and each row's bound: the bytes a token
//! reads (weights, and cache rows) over the machine's read bandwidth at that size.

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::{anyhow, Result};

use castle_kernels::host::simd::{fold_lanes, vectorized};
use castle_model::{AttentionKind, CastleLm, Decoder, KernelBackend, ModelConfig, PromptLogits};

use crate::stats::{median, yes};
use crate::{alloc, model_config, random_ids, random_tokens, BackendKind, Options, Report, KINDS};

/// Sequences decoded together in the batched column.
const BATCH: usize = 16;

/// Rounds of steps per path: each round runs every model's share of the steps, the models in
/// another order, so that none always comes first after another's work (which slowed the
/// first one's steps by up to 1.8x here).
const ROUNDS: usize = 4;

/// Untimed steps before each model's share of a round.
const WARMUP: usize = 2;

/// Runs `step(model, n)`, model `model`'s `n`-th step, in [`ROUNDS`] rounds of [`WARMUP`]
/// untimed and `timed / ROUNDS` timed steps per model: the seconds of the timed steps, by model.
fn rounds(
    models: usize,
    timed: usize,
    mut step: impl FnMut(usize, usize) -> Result<()>,
) -> Result<Vec<Vec<f64>>> {
    let mut times = vec![vec![]; models];
    let mut done = vec![0; models];
    for r in 0..ROUNDS {
        for j in 0..models {
            let i = (r + j) % models;
            for k in 0..WARMUP + timed.div_ceil(ROUNDS) {
                let t = Instant::now();
                step(i, done[i])?;
                if k >= WARMUP {
                    times[i].push(t.elapsed().as_secs_f64());
                }
                done[i] += 1;
            }
        }
    }
    Ok(times)
}

#[derive(Debug, Clone)]
pub struct DecodeResult {
    pub backend: BackendKind,
    pub kind: AttentionKind,
    pub context: usize,
    /// Median seconds per token of the tensor-op step, batch 1.
    pub old_s: f64,
    /// Median seconds per token of the decoder, batch 1.
    pub new_s: f64,
    /// Tokens per second of the decoder with [`BATCH`] sequences.
    pub batch_tokens_per_s: f64,
    /// Bytes one token reads at batch 1: the f32 weights and the cache rows it touches.
    pub bytes_per_token: usize,
    /// The same bytes over the read bandwidth measured at that size.
    pub bound_s: f64,
    /// Heap one started sequence holds, per position of the model's context.
    pub measured_cache_bytes_per_token: f64,
    /// `layers x heads x (2 or 4) x d x 4 bytes` (docs/castle.md, section 4).
    pub ideal_cache_bytes_per_token: usize,
}

/// Cache rows of `d` values one new token reads or writes per layer and head at context `t`:
/// the baseline's `K, V`; CASTLE's eq. 13 (`Qu` read, `U` read and written, on the rows inside
/// the window) and eq. 5-8 (`Kc, U, Vc`).
fn cache_rows(kind: AttentionKind, t: usize, window: usize) -> usize {
    match kind {
        AttentionKind::Baseline => 2 * t,
        AttentionKind::Castle => 6 * t,
        AttentionKind::CastleSwl => 3 * t + 3 * t.min(window),
    }
}

/// Bytes per second at which all cores read a buffer of `bytes` (best of several passes).
fn read_bandwidth(bytes: usize) -> f64 {
    let values = vec![1.0f32; bytes.div_ceil(4).max(1024)];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = values.len().div_ceil(threads);
    let pass = || {
        std::thread::scope(|s| {
            let sums: Vec<_> = values
                .chunks(chunk)
                .map(|c| {
                    s.spawn(move || vectorized(|| fold_lanes(c, 0.0, |a, v| a + v, |a, b| a + b)))
                })
                .collect();
            sums.into_iter()
                .map(|h| h.join().unwrap_or(0.0))
                .sum::<f32>()
        })
    };
    std::hint::black_box(pass());
    let mut best = f64::INFINITY;
    for _ in 0..(256 << 20) / (values.len() * 4) + 3 {
        let t = Instant::now();
        std::hint::black_box(pass());
        best = best.min(t.elapsed().as_secs_f64());
    }
    (values.len() * 4) as f64 / best
}

pub(crate) fn table<B: KernelBackend>(
    backend: BackendKind,
    opts: &Options,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<DecodeResult>> {
    let device = B::Device::default();
    let s = &opts.model;
    let max_ctx = opts.decode_lengths.iter().copied().max().unwrap_or(0);
    let max_len = max_ctx + ROUNDS * (WARMUP + opts.decode_steps.div_ceil(ROUNDS));
    let models: Vec<(AttentionKind, ModelConfig, CastleLm<B>)> = KINDS
        .iter()
        .map(|&kind| {
            let c = model_config(s, kind, opts.window, max_len);
            let m = c.init::<B>(s.vocab, &device);
            (kind, c, m)
        })
        .collect();
    let mut results = vec![];
    for &ctx in &opts.decode_lengths {
        let prompt = random_tokens::<B>(1, ctx, s.vocab, ctx as u64, &device);
        let prompts: Vec<Vec<u32>> = (0..BATCH)
            .map(|i| random_ids(ctx, s.vocab, (ctx * BATCH + i) as u64))
            .collect();
        let token = |step: usize| random_ids(1, s.vocab, (ctx + step) as u64 * 7)[0];
        // New decoders for each context, as each generation of castle-eval has its own.
        let mut decoders: Vec<Decoder<B>> =
            models.iter().map(|(_, _, m)| Decoder::new(m)).collect();
        let mut caches = vec![];
        let mut seqs = vec![];
        let mut held = vec![];
        for ((_, _, model), decoder) in models.iter().zip(&mut decoders) {
            caches.push(model.prefill(prompt.clone()).1);
            let before = alloc::current();
            let started = decoder.start::<f32>(&prompts[0], PromptLogits::Last);
            seqs.push(started?.0);
            held.push(alloc::current().saturating_sub(before));
        }
        // One path at a time, so that the old path's burn ops do not evict the new one's
        // working set; each step finds one generation's (the weights and one context of cache:
        // L3-resident here up to context 2048), as in castle-eval.
        let mut logits: Vec<f32> = vec![];
        let new = rounds(models.len(), opts.decode_steps, |i, n| {
            Ok(decoders[i].step(&[(seqs[i], token(n))], &mut logits)?)
        })?;
        let old = rounds(models.len(), opts.decode_steps, |i, n| {
            let tokens = random_tokens::<B>(1, 1, s.vocab, (ctx + n) as u64 * 7, &device);
            drop(models[i].2.decode(tokens, &mut caches[i]));
            B::sync(&device).map_err(|e| anyhow!("backend sync: {e}"))
        })?;
        drop(caches);
        let mut batches: Vec<Vec<usize>> = vec![];
        for (decoder, &seq) in decoders.iter_mut().zip(&seqs) {
            decoder.finish(seq);
            let started: Result<Vec<_>, _> = prompts
                .iter()
                .map(|p| decoder.start::<f32>(p, PromptLogits::Last).map(|(q, _)| q))
                .collect();
            batches.push(started?);
        }
        let batched = rounds(models.len(), opts.decode_steps, |i, n| {
            let fed: Vec<(usize, u32)> = batches[i].iter().map(|&q| (q, token(n))).collect();
            Ok(decoders[i].step(&fed, &mut logits)?)
        })?;
        for (i, (kind, config, _)) in models.iter().enumerate() {
            let per_head = if *kind == AttentionKind::Baseline {
                2
            } else {
                4
            };
            let row = config.n_heads() * config.head_dim * 4;
            let params = config.param_summary(s.vocab).total;
            let bytes = 4 * params + config.layers * row * cache_rows(*kind, ctx, opts.window);
            let r = DecodeResult {
                backend,
                kind: *kind,
                context: ctx,
                old_s: median(&old[i]),
                new_s: median(&new[i]),
                batch_tokens_per_s: BATCH as f64 / median(&batched[i]),
                bytes_per_token: bytes,
                bound_s: bytes as f64 / read_bandwidth(bytes),
                measured_cache_bytes_per_token: held[i] as f64 / max_len as f64,
                ideal_cache_bytes_per_token: config.layers * per_head * row,
            };
            log(&format!(
                "  [{backend}] decode {kind} ctx={ctx}: old {:.3} ms/token, new {:.3} ms/token, batch {BATCH} {:.0} tokens/s",
                r.old_s * 1e3,
                r.new_s * 1e3,
                r.batch_tokens_per_s
            ));
            results.push(r);
        }
    }
    Ok(results)
}

/// Section 3 of the report; its target rows go to `targets`.
pub fn section(report: &Report, opts: &Options, md: &mut String, targets: &mut String) {
    if report.decode.is_empty() {
        return;
    }
    let backend = report.decode[0].backend;
    let max_ctx = opts.decode_lengths.iter().copied().max().unwrap_or(0);
    let _ = writeln!(
        md,
        "## 3. Decoding (`{backend}`, same model shape, after a prefill of the context)\n\n\
         Median of {} steps per variant, in {ROUNDS} rounds of every model's share (after {WARMUP} untimed steps each), the models in another order each round; one path at a time, so that each step finds one generation's working set. `old`: the model's tensor-op step \
         (`CastleLm::decode`), batch 1. `new`: the decoder (`castle_model::Decoder`), batch 1 and \
         batch {BATCH} (sequences of the same context). `bound`: the bytes one token reads (f32 \
         weights, and the cache rows it reads or writes: baseline `K, V`; CASTLE `Qu, U` twice \
         for eq. 13 and `Kc, U, Vc`; SWL eq. 13 on W = {} rows) over this machine's read \
         bandwidth measured on a buffer of that size.\n",
        opts.decode_steps, opts.window
    );
    let _ = writeln!(
        md,
        "| context | model | old ms/token | new ms/token | old/new | bound ms/token (KiB read) | new/bound | batch {BATCH} tokens/s | batch {BATCH} / batch 1 |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in &report.decode {
        let _ = writeln!(
            md,
            "| {} | {} | {:.3} | {:.3} | {:.1}x | {:.3} ({:.0}) | {:.1}x | {:.0} | {:.1}x |",
            r.context,
            r.kind,
            r.old_s * 1e3,
            r.new_s * 1e3,
            r.old_s / r.new_s,
            r.bound_s * 1e3,
            r.bytes_per_token as f64 / 1024.0,
            r.new_s / r.bound_s,
            r.batch_tokens_per_s,
            r.batch_tokens_per_s * r.new_s
        );
    }
    let at = |kind: AttentionKind, ctx: usize| {
        report
            .decode
            .iter()
            .find(|r| r.kind == kind && r.context == ctx)
    };
    let new = |kind, ctx| at(kind, ctx).map_or(f64::NAN, |r| r.new_s);
    let ratio = |kind, ctx| new(kind, ctx) / new(AttentionKind::Baseline, ctx);
    let _ = writeln!(
        md,
        "\n| context | castle / baseline (new) | castle-swl / baseline (new) |\n|---:|---:|---:|"
    );
    for &ctx in &opts.decode_lengths {
        let (c, w) = (
            ratio(AttentionKind::Castle, ctx),
            ratio(AttentionKind::CastleSwl, ctx),
        );
        let _ = writeln!(md, "| {ctx} | {c:.2} | {w:.2} |");
    }
    let _ = writeln!(md, "\n| model | ideal cache bytes/token | measured (heap of one sequence / context) |\n|---|---:|---:|");
    for kind in KINDS {
        if let Some(r) = report.decode.iter().find(|r| r.kind == kind) {
            let _ = writeln!(
                md,
                "| {kind} | {} | {:.0} |",
                r.ideal_cache_bytes_per_token, r.measured_cache_bytes_per_token
            );
        }
    }
    let _ = writeln!(md);

    let worst = |kind| {
        opts.decode_lengths
            .iter()
            .map(|&c| ratio(kind, c))
            .fold(0.0, f64::max)
    };
    let castle_max = new(AttentionKind::Castle, max_ctx) * 1e3;
    let _ = writeln!(
        targets,
        "| `{backend}` | decoding: CASTLE <= 0.4 ms/token at context {max_ctx} (batch 1) | {castle_max:.3} ms | {} |",
        yes(castle_max <= 0.4)
    );
    for (kind, limit) in [
        (AttentionKind::Castle, 2.0),
        (AttentionKind::CastleSwl, 1.3),
    ] {
        let w = worst(kind);
        let _ = writeln!(
            targets,
            "| `{backend}` | decoding: {kind} within {limit}x of the baseline per token at every context | worst {w:.2}x | {} |",
            yes(w <= limit)
        );
    }
    let gain = report
        .decode
        .iter()
        .map(|r| r.batch_tokens_per_s * r.new_s)
        .fold(f64::INFINITY, f64::min);
    let _ = writeln!(
        targets,
        "| `{backend}` | decoding: batch {BATCH} at >= 6x the tokens/s of batch 1 | worst {gain:.1}x | {} |",
        yes(gain >= 6.0)
    );
}
