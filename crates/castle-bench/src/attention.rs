//! Table 1: attention alone, forward + backward, batch 1, per head and at parameter parity.

use std::fmt::Write as _;

use burn::prelude::*;
use burn::tensor::Distribution;
use castle_kernels::reference::causal_attention;
use castle_kernels::reference::{
    attend, lookahead_scores_chunked, lookahead_scores_naive, CastleHeads,
};
use castle_model::TrainBackend;

use crate::stats::{measure, median, median_usize, mib, yes};
use crate::{BackendKind, Options, Report};

/// One attention computation of table 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// Causal softmax attention in burn tensor ops.
    Baseline,
    /// The fused causal softmax kernel (`castle_kernels::host`).
    BaselineFused { block: usize },
    /// CASTLE by Theorem 1 in burn tensor ops, O(L^3).
    Naive,
    /// CASTLE's chunked form in burn tensor ops: the training path before the fused kernel.
    Chunked { block: usize },
    /// The fused CASTLE kernel.
    Fused { block: usize },
    /// The fused CASTLE-SWL kernel.
    SwlFused { block: usize },
}

impl Form {
    fn name(self) -> &'static str {
        match self {
            Self::Baseline => "baseline (tensor ops)",
            Self::BaselineFused { .. } => "baseline fused",
            Self::Naive => "castle naive (tensor ops)",
            Self::Chunked { .. } => "castle chunked (tensor ops)",
            Self::Fused { .. } => "castle fused",
            Self::SwlFused { .. } => "castle-swl fused",
        }
    }

    fn block(self) -> Option<usize> {
        match self {
            Self::BaselineFused { block }
            | Self::Chunked { block }
            | Self::Fused { block }
            | Self::SwlFused { block } => Some(block),
            Self::Baseline | Self::Naive => None,
        }
    }

    fn is_baseline(self) -> bool {
        matches!(self, Self::Baseline | Self::BaselineFused { .. })
    }

    /// Same kind of form, any block size.
    fn same_kind(self, other: Form) -> bool {
        std::mem::discriminant(&self) == std::mem::discriminant(&other)
    }
}

/// `2 m k n`, the FLOPs of an `m x k` by `k x n` product.
fn gemm_flops(m: usize, k: usize, n: usize) -> f64 {
    2.0 * (m * k * n) as f64
}

/// FLOPs of the matrix products one head's forward + backward pass of `form` executes, as the
/// code computes them: the tensor-op forms dense (masked entries included; backward = 2x
/// forward), the fused kernels block by block (causally skipped blocks not counted).
pub fn call_flops(form: Form, l: usize, d: usize, window: usize) -> f64 {
    let attend = 2.0 * gemm_flops(l, d, l); // scores and P V
    match form {
        Form::Baseline => 3.0 * attend,
        // Qc Vu^T, Qu Ku^T, A B^T, then attend.
        Form::Naive => 3.0 * (attend + 2.0 * gemm_flops(l, d, l) + gemm_flops(l, l, l)),
        Form::Chunked { block } => 3.0 * (attend + chunked_lookahead_flops(l, d, block)),
        Form::BaselineFused { block } => fused_flops(l, d, block, None),
        Form::Fused { block } => fused_flops(l, d, block, Some(None)),
        Form::SwlFused { block } => fused_flops(l, d, block, Some(Some(window))),
    }
}

/// The forward products of `lookahead_scores_chunked` (no window), loop by loop.
fn chunked_lookahead_flops(l: usize, d: usize, block: usize) -> f64 {
    let bs = block.clamp(1, l);
    let n = l.div_ceil(bs);
    let mut flops = n as f64 * gemm_flops(bs, d, bs); // diag
    for j in 0..n {
        let nk = n - j;
        flops += gemm_flops(bs, d, nk * bs); // sig
        flops += nk as f64 * (2.0 * gemm_flops(bs, bs, d) + gemm_flops(bs, bs, bs));
        // G, Qc C, diag sig^T
    }
    flops
}

/// The products of the fused kernels, forward + backward; `lookahead` is `None` for the
/// baseline, `Some(window)` for CASTLE (see `castle_kernels::host::lookahead` for the list).
fn fused_flops(l: usize, d: usize, block: usize, lookahead: Option<Option<usize>>) -> f64 {
    let bs = block.clamp(1, l);
    let n = l.div_ceil(bs);
    let pairs = (n * (n + 1) / 2) as f64; // block pairs I >= J
    let pair = gemm_flops(bs, d, bs);
    let cube = gemm_flops(bs, bs, bs);
    // Softmax: scores and P V forward; dP, dQ, dK, dV backward (the probabilities are kept).
    let mut flops = 6.0 * pairs * pair;
    if let Some(window) = lookahead {
        let in_band = |j: usize, k: usize| window.is_none_or(|w| k * bs <= j * bs + bs - 1 + w);
        let band = (0..n)
            .map(|j| (j..n).take_while(|&k| in_band(j, k)).count())
            .sum::<usize>() as f64;
        // Band pairs `(J, n - 1)`: no query block after them, so no `C` step and a zero `R`.
        let last = (0..n).filter(|&j| in_band(j, n - 1)).count() as f64;
        let strict = pairs - n as f64; // I > J
        flops += 3.0 * n as f64 * pair // diag_I forward; F_K Vu_K and F_K^T Qc_K backward
            + band * (3.0 * pair + 3.0 * cube) // sig, dQu, dKu; diag sig^T, D^T diag, D sig
            + (band - last) * 4.0 * pair // C forward and again backward; sig^T R, R Vu^T
            + strict * 3.0 * pair; // forward Qc C^T; backward R and D C
    }
    flops
}

#[derive(Debug, Clone)]
pub struct AttnResult {
    pub backend: BackendKind,
    /// `"per head"` or `"parity"`.
    pub setting: &'static str,
    pub l: usize,
    pub form: Form,
    pub heads: usize,
    pub median_s: f64,
    pub peak_bytes: usize,
    /// Forward + backward FLOPs executed per call, all heads.
    pub flops: f64,
}

struct AttnInputs<B: Backend> {
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    h: CastleHeads<B>,
}

fn random4<B: TrainBackend>(shape: [usize; 4], device: &B::Device) -> Tensor<B, 4> {
    Tensor::<B, 4>::random(shape, Distribution::Normal(0.0, 1.0), device).require_grad()
}

fn attn_inputs<B: TrainBackend>(
    base_heads: usize,
    castle_heads: usize,
    l: usize,
    d: usize,
    device: &B::Device,
) -> AttnInputs<B> {
    let bs = [1, base_heads, l, d];
    let cs = [1, castle_heads, l, d];
    AttnInputs {
        q: random4(bs, device),
        k: random4(bs, device),
        v: random4(bs, device),
        h: CastleHeads {
            qu: random4(cs, device),
            ku: random4(cs, device),
            vu: random4(cs, device),
            qc: random4(cs, device),
            kc: random4(cs, device),
            vc: random4(cs, device),
            qc_nope: random4(cs, device),
        },
    }
}

/// Forward + backward of one form; the gradients are dropped at the end (all computed eagerly).
fn attention_call<B: TrainBackend>(form: Form, x: &AttnInputs<B>, window: usize) {
    let out = match form {
        Form::Baseline => causal_attention(x.q.clone(), x.k.clone(), x.v.clone()),
        Form::BaselineFused { block } => {
            B::causal_attention(x.q.clone(), x.k.clone(), x.v.clone(), block)
        }
        Form::Naive => attend(&x.h, lookahead_scores_naive(&x.h, None)),
        Form::Chunked { block } => attend(&x.h, lookahead_scores_chunked(&x.h, None, block)),
        Form::Fused { block } => B::castle_attention(&x.h, None, block),
        Form::SwlFused { block } => B::castle_attention(&x.h, Some(window), block),
    };
    let device = out.device();
    let grads = out.sum().backward();
    B::sync(&device).expect("backend sync");
    drop(grads);
}

pub(crate) fn table<B: TrainBackend>(
    backend: BackendKind,
    opts: &Options,
    log: &mut dyn FnMut(&str),
) -> Vec<AttnResult> {
    let device = B::Device::default();
    let d = opts.head_dim;
    let castle_parity = castle_model::config::parity_heads(opts.parity_heads);
    let mut results = vec![];
    for (setting, base_heads, castle_heads) in [
        ("per head", 1, 1),
        ("parity", opts.parity_heads, castle_parity),
    ] {
        for &l in &opts.lengths {
            let x = attn_inputs::<B>(base_heads, castle_heads, l, d, &device);
            let mut forms = vec![Form::Baseline, Form::Naive];
            forms.extend(opts.chunked_block.map(|block| Form::Chunked { block }));
            for &block in &opts.blocks {
                forms.push(Form::BaselineFused { block });
                forms.push(Form::Fused { block });
                forms.push(Form::SwlFused { block });
            }
            let mut times = vec![vec![]; forms.len()];
            let mut peaks = vec![vec![]; forms.len()];
            for &form in &forms {
                attention_call(form, &x, opts.window); // warm-up
            }
            for _ in 0..opts.reps {
                for (i, &form) in forms.iter().enumerate() {
                    let (t, p) = measure(|| attention_call(form, &x, opts.window));
                    times[i].push(t);
                    peaks[i].push(p);
                }
            }
            for (i, &form) in forms.iter().enumerate() {
                let heads = if form.is_baseline() {
                    base_heads
                } else {
                    castle_heads
                };
                let r = AttnResult {
                    backend,
                    setting,
                    l,
                    form,
                    heads,
                    median_s: median(&times[i]),
                    peak_bytes: median_usize(&peaks[i]),
                    flops: heads as f64 * call_flops(form, l, d, opts.window),
                };
                log(&format!(
                    "  [{}] {setting} L={l} {}{}: {:.2} ms, {:.1} MiB",
                    backend,
                    form.name(),
                    form.block().map_or(String::new(), |b| format!(" B={b}")),
                    r.median_s * 1e3,
                    mib(r.peak_bytes)
                ));
                results.push(r);
            }
        }
    }
    results
}

/// The fastest row of `form`'s kind (its best block size).
fn best<'a>(rows: &[&'a AttnResult], form: Form) -> Option<&'a AttnResult> {
    rows.iter()
        .copied()
        .filter(|r| r.form.same_kind(form))
        .min_by(|a, b| a.median_s.total_cmp(&b.median_s))
}

/// Section 1 of the report; its target rows go to `targets`.
pub fn section(report: &Report, opts: &Options, md: &mut String, targets: &mut String) {
    if report.attention.is_empty() {
        return;
    }
    let rate_of = |b: BackendKind| {
        report
            .matmul_gflops
            .iter()
            .find(|(k, _)| *k == b)
            .map_or(f64::NAN, |(_, r)| *r)
    };
    let _ = writeln!(
        md,
        "## 1. Attention alone (forward + backward, batch 1, d = {}, SWL W = {})\n",
        opts.head_dim, opts.window
    );
    let _ = writeln!(
        md,
        "Median of {} interleaved repetitions. Peak = heap above the inputs during the call \
         (counting allocator). GFLOP = matrix-product FLOPs executed per call, forward + \
         backward: dense for the tensor-op forms (masked entries included), block by block \
         for the fused kernels (blocks above the diagonal or outside the SWL band skipped). \
         Fused rows show the best block size B of {:?}; the tensor-op chunked form runs at \
         B = {}.\n",
        opts.reps,
        opts.blocks,
        opts.chunked_block.map_or("-".into(), |b| b.to_string())
    );
    let (base, base_fused, naive, chunked, fused, swl) = (
        Form::Baseline,
        Form::BaselineFused { block: 0 },
        Form::Naive,
        Form::Chunked { block: 0 },
        Form::Fused { block: 0 },
        Form::SwlFused { block: 0 },
    );
    for &backend in &opts.backends {
        for setting in ["per head", "parity"] {
            let rows: Vec<&AttnResult> = report
                .attention
                .iter()
                .filter(|r| r.backend == backend && r.setting == setting)
                .collect();
            if rows.is_empty() {
                continue;
            }
            let heads = |form: Form| best(&rows, form).map_or(0, |r| r.heads);
            let _ = writeln!(
                md,
                "### `{}`, {setting} (baseline {} head(s), CASTLE {} head(s)); matmul rate {:.1} GFLOP/s\n",
                backend,
                heads(base),
                heads(naive),
                rate_of(backend)
            );
            if !on_host(backend) {
                let _ = writeln!(
                    md,
                    "Peak MiB is the host heap: device memory is not counted on `{backend}`.\n"
                );
            }
            let _ = writeln!(
                md,
                "| L | form | B | median ms | peak MiB | GFLOP/call | GFLOP/s |\n|---:|---|---:|---:|---:|---:|---:|"
            );
            // Per L: the best row of every form.
            let mut per_l = vec![];
            for &l in &opts.lengths {
                let at_l: Vec<&AttnResult> = rows.iter().copied().filter(|r| r.l == l).collect();
                let found = [base, base_fused, naive, chunked, fused, swl].map(|f| best(&at_l, f));
                for r in found.iter().flatten() {
                    let _ = writeln!(
                        md,
                        "| {l} | {} | {} | {:.2} | {:.1} | {:.3} | {:.1} |",
                        r.form.name(),
                        r.form.block().map_or("-".into(), |b| b.to_string()),
                        r.median_s * 1e3,
                        mib(r.peak_bytes),
                        r.flops / 1e9,
                        r.flops / r.median_s / 1e9
                    );
                }
                per_l.push((l, found));
            }
            let ratio = |a: Option<&AttnResult>, b: Option<&AttnResult>| match (a, b) {
                (Some(a), Some(b)) => a.median_s / b.median_s,
                _ => f64::NAN,
            };
            let _ = writeln!(
                md,
                "\n| L | naive/fused (speed-up) | fused/baseline fused | swl fused/baseline fused | fused peak / baseline fused peak | chunked/fused (old/new) | baseline/baseline fused (old/new) | fused/baseline (tensor ops) |\n|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            for (l, [b, bf, n, c, f, s]) in &per_l {
                let peak = match (f, bf) {
                    (Some(f), Some(bf)) => f.peak_bytes as f64 / bf.peak_bytes.max(1) as f64,
                    _ => f64::NAN,
                };
                let _ = writeln!(
                    md,
                    "| {l} | {:.2} | {:.2} | {:.2} | {peak:.2} | {:.2} | {:.2} | {:.2} |",
                    ratio(*n, *f),
                    ratio(*f, *bf),
                    ratio(*s, *bf),
                    ratio(*c, *f),
                    ratio(*b, *bf),
                    ratio(*f, *b)
                );
            }
            let _ = writeln!(md);
            // Block-size sweep of the fused kernels.
            let _ = writeln!(
                md,
                "Block-size sweep of the fused kernels, median ms:\n\n| L |{}\n|---:|{}",
                opts.blocks
                    .iter()
                    .map(|b| format!(" baseline B={b} | castle B={b} | swl B={b} |"))
                    .collect::<String>(),
                "---:|---:|---:|".repeat(opts.blocks.len())
            );
            for &l in &opts.lengths {
                let _ = write!(md, "| {l} |");
                for &block in &opts.blocks {
                    for form in [
                        Form::BaselineFused { block },
                        Form::Fused { block },
                        Form::SwlFused { block },
                    ] {
                        let t = rows
                            .iter()
                            .find(|r| r.l == l && r.form == form)
                            .map_or(f64::NAN, |r| r.median_s);
                        let _ = write!(md, " {:.2} |", t * 1e3);
                    }
                }
                let _ = writeln!(md);
            }
            let _ = writeln!(md);

            // Targets for this backend and setting.
            let complete: Vec<_> = per_l
                .iter()
                .filter_map(|(l, [_, bf, n, _, f, _])| Some((*l, (*bf)?, (*n)?, (*f)?)))
                .collect();
            if let (Some(first), Some(last)) = (complete.first(), complete.last()) {
                let speedups: Vec<f64> = complete
                    .iter()
                    .map(|(_, _, n, f)| n.median_s / f.median_s)
                    .collect();
                let widening = speedups.windows(2).all(|w| w[1] >= w[0]);
                let worst = complete
                    .iter()
                    .map(|(_, bf, _, f)| f.median_s / bf.median_s)
                    .fold(0.0, f64::max);
                let last_speedup = speedups.last().copied().unwrap_or(f64::NAN);
                let _ = writeln!(
                    targets,
                    "| `{}` {setting} | fused >= 8x faster than naive at L = {}, widening with L | {:.2}x; speed-ups by L: {} | {} |",
                    backend,
                    last.0,
                    last_speedup,
                    speedups.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(", "),
                    yes(last_speedup >= 8.0 && widening)
                );
                let _ = writeln!(
                    targets,
                    "| `{}` {setting} | fused CASTLE within 3x of fused baseline at every L | worst {:.2}x | {} |",
                    backend,
                    worst,
                    yes(worst <= 3.0)
                );
                if last.0 > first.0 && on_host(backend) {
                    let prev = &complete[complete.len().saturating_sub(2)];
                    let exponent = |a: &AttnResult, b: &AttnResult, la: usize, lb: usize| {
                        (a.peak_bytes as f64 / b.peak_bytes.max(1) as f64).ln()
                            / (la as f64 / lb as f64).ln()
                    };
                    let local = exponent(last.3, prev.3, last.0, prev.0);
                    let _ = writeln!(
                        targets,
                        "| `{}` {setting} | fused peak memory grows no faster than L^2 | exponent {:.2} over L = {}..{}, {:.2} over the last doubling; {:.1} MiB at L = {} | {} |",
                        backend,
                        exponent(last.3, first.3, last.0, first.0),
                        first.0,
                        last.0,
                        local,
                        mib(last.3.peak_bytes),
                        last.0,
                        yes(local <= 2.1)
                    );
                }
            }
        }
    }
}

/// Whether `backend` computes in host memory, the memory castle-bench's allocator counts.
pub(crate) fn on_host(backend: BackendKind) -> bool {
    matches!(backend, BackendKind::Flex | BackendKind::Ndarray)
}
