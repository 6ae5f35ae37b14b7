//! Table 3: decoding latency per token with the KV / UQ-KV cache.

use std::fmt::Write as _;
use std::time::Instant;

use castle_model::{AttentionKind, CastleLm, KernelBackend, ModelConfig};

use crate::stats::{median, yes};
use crate::{alloc, model_config, random_tokens, BackendKind, Options, Report, KINDS};

#[derive(Debug, Clone)]
pub struct DecodeResult {
    pub backend: BackendKind,
    pub kind: AttentionKind,
    pub context: usize,
    pub median_s: f64,
    /// Heap held by the cache after the prefill, per cached token.
    pub measured_cache_bytes_per_token: f64,
    /// `layers x heads x (2 or 4) x d x 4 bytes` (docs/castle.md, section 4).
    pub ideal_cache_bytes_per_token: usize,
}

pub(crate) fn table<B: KernelBackend>(
    backend: BackendKind,
    opts: &Options,
    log: &mut dyn FnMut(&str),
) -> Vec<DecodeResult> {
    let device = B::Device::default();
    let s = &opts.model;
    let max_ctx = opts.decode_lengths.iter().copied().max().unwrap_or(0);
    let max_len = max_ctx + opts.decode_steps + 1;
    let models: Vec<(AttentionKind, ModelConfig, CastleLm<B>)> = KINDS
        .iter()
        .map(|&kind| {
            let c = model_config(s, kind, opts.window, max_len);
            let m = c.init::<B>(s.vocab, &device);
            (kind, c, m)
        })
        .collect();
    let mut results = vec![];
    // One untimed prefill + decode first, so one-time allocations do not count as cache.
    for (_, _, model) in &models {
        let (_, mut cache) = model.prefill(random_tokens::<B>(1, 4, s.vocab, 3, &device));
        drop(model.decode(random_tokens::<B>(1, 1, s.vocab, 4, &device), &mut cache));
    }
    for &ctx in &opts.decode_lengths {
        let prompt = random_tokens::<B>(1, ctx, s.vocab, ctx as u64, &device);
        let mut caches = vec![];
        let mut cache_bytes = vec![];
        for (_, _, model) in &models {
            let before = alloc::current();
            let (logits, cache) = model.prefill(prompt.clone());
            drop(logits);
            cache_bytes.push(alloc::current().saturating_sub(before));
            caches.push(cache);
        }
        let mut times = vec![vec![]; models.len()];
        for step in 0..=opts.decode_steps {
            let token = random_tokens::<B>(1, 1, s.vocab, (ctx + step) as u64 * 7, &device);
            for (i, (_, _, model)) in models.iter().enumerate() {
                let t = Instant::now();
                let logits = model.decode(token.clone(), &mut caches[i]);
                B::sync(&device).expect("backend sync");
                drop(logits);
                if step > 0 {
                    times[i].push(t.elapsed().as_secs_f64()); // step 0 is a warm-up
                }
            }
        }
        for (i, (kind, config, _)) in models.iter().enumerate() {
            let per_head = if *kind == AttentionKind::Baseline {
                2
            } else {
                4
            };
            let r = DecodeResult {
                backend,
                kind: *kind,
                context: ctx,
                median_s: median(&times[i]),
                measured_cache_bytes_per_token: cache_bytes[i] as f64 / ctx as f64,
                ideal_cache_bytes_per_token: config.layers
                    * config.n_heads()
                    * per_head
                    * config.head_dim
                    * std::mem::size_of::<f32>(),
            };
            log(&format!(
                "  [{}] decode {kind} ctx={ctx}: {:.3} ms/token",
                backend,
                r.median_s * 1e3
            ));
            results.push(r);
        }
    }
    results
}

/// Section 3 of the report; its target rows go to `targets`.
pub fn section(report: &Report, opts: &Options, md: &mut String, targets: &mut String) {
    if report.decode.is_empty() {
        return;
    }
    let backend = report.decode[0].backend;
    let _ = writeln!(
        md,
        "## 3. Decoding (`{}`, batch 1, same model shape, after a prefill of the context)\n\n\
         Median of {} decode steps per variant, interleaved, after one warm-up step. Cache bytes per \
         token: `ideal` = layers x heads x (2 or 4) x d x 4 bytes (docs/castle.md, section 4); `measured` = heap \
         the prefill left held, divided by the context length.\n",
        backend,
        opts.decode_steps
    );
    let _ = writeln!(md, "| context | baseline ms/token | castle ms/token | castle-swl ms/token | castle/baseline |\n|---:|---:|---:|---:|---:|");
    let at = |kind: AttentionKind, ctx: usize| {
        report
            .decode
            .iter()
            .find(|r| r.kind == kind && r.context == ctx)
    };
    for &ctx in &opts.decode_lengths {
        let t = |k| at(k, ctx).map_or(f64::NAN, |r| r.median_s * 1e3);
        let _ = writeln!(
            md,
            "| {ctx} | {:.3} | {:.3} | {:.3} | {:.2} |",
            t(AttentionKind::Baseline),
            t(AttentionKind::Castle),
            t(AttentionKind::CastleSwl),
            t(AttentionKind::Castle) / t(AttentionKind::Baseline)
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "| model | ideal cache bytes/token | measured bytes/token at each context |\n|---|---:|---|");
    for kind in KINDS {
        let rows: Vec<&DecodeResult> = report.decode.iter().filter(|r| r.kind == kind).collect();
        let _ = writeln!(
            md,
            "| {kind} | {} | {} |",
            rows.first().map_or(0, |r| r.ideal_cache_bytes_per_token),
            rows.iter()
                .map(|r| format!("{}: {:.0}", r.context, r.measured_cache_bytes_per_token))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let _ = writeln!(md);
    for kind in KINDS {
        let times: Vec<(usize, f64)> = opts
            .decode_lengths
            .iter()
            .filter_map(|&c| at(kind, c).map(|r| (c, r.median_s)))
            .collect();
        if times.len() >= 2 {
            // Per-token time must grow at most linearly: t(c2)/t(c1) <= c2/c1 (+10% noise).
            let worst = times
                .windows(2)
                .map(|w| (w[1].1 / w[0].1) / (w[1].0 as f64 / w[0].0 as f64))
                .fold(0.0, f64::max);
            let (c0, t0) = times[0];
            let (c1, t1) = times[times.len() - 1];
            let _ = writeln!(
                targets,
                "| `{}` | decoding time per token grows at most linearly with context ({kind}) | {:.3} -> {:.3} ms from {c0} to {c1}; worst step-to-step growth / context growth {:.2} | {} |",
                backend,
                t0 * 1e3,
                t1 * 1e3,
                worst,
                yes(worst <= 1.1)
            );
        }
    }
}
