//! `castle-bench`: CASTLE's cost against the causal-softmax baseline and against its own O(L^3)
//! form, measured in one run on this machine. Every comparison interleaves the compared variants
//! repetition by repetition and reports medians, so that load from other processes hits all of
//! them alike; ratios are taken between figures of the same run.
//!
//! - Table 1: attention alone, forward + backward, batch 1, per head and at parameter parity.
//! - Table 2: a whole-model training step (forward, NLL, backward, AdamW).
//! - Table 3: decoding latency per token with the KV / UQ-KV cache.

pub mod alloc;

use std::fmt::Write as _;
use std::time::Instant;

use burn::backend::{Autodiff, Flex, NdArray};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::Distribution;
use castle_model::attention::baseline::causal_attention;
use castle_model::attention::lookahead::{
    attend, lookahead_scores_chunked, lookahead_scores_naive, CastleHeads,
};
use castle_model::lm::token_nll;
use castle_model::{AttentionBackend, AttentionKind, CastleLm, ModelConfig, TrainBackend};

/// The CPU backends compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    NdArray,
    Flex,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::NdArray => "ndarray",
            Self::Flex => "flex",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ndarray" => Some(Self::NdArray),
            "flex" => Some(Self::Flex),
            _ => None,
        }
    }
}

/// The whole-model shape of table 2 and 3 (the `configs/small.toml` shape of the issue).
#[derive(Debug, Clone)]
pub struct ModelShape {
    pub layers: usize,
    pub d_model: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub seq_len: usize,
    pub batch: usize,
    pub vocab: usize,
    pub block_size: usize,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Which of tables 1, 2, 3 to run.
    pub tables: Vec<u8>,
    /// Backends for tables 1 and 2, in order; the first also runs table 3. Default `flex`
    /// first: it measured faster than `ndarray` for the whole training step (table 2).
    pub backends: Vec<BackendKind>,
    /// Sequence lengths of table 1.
    pub lengths: Vec<usize>,
    /// Timed repetitions per variant (after one untimed warm-up).
    pub reps: usize,
    /// Head dimension of table 1.
    pub head_dim: usize,
    /// Block sizes tried for the fused kernels; the best is reported.
    pub blocks: Vec<usize>,
    /// CASTLE-SWL's window.
    pub window: usize,
    /// Also time the tensor-op chunked form (the path before the fused kernel) at this block size.
    pub chunked_block: Option<usize>,
    /// Baseline heads at parity (CASTLE gets `round(4/7 x)`).
    pub parity_heads: usize,
    /// Side of the square matrix product that measures the machine's matmul rate.
    pub matmul_size: usize,
    pub model: ModelShape,
    pub train_reps: usize,
    /// Context lengths of table 3.
    pub decode_lengths: Vec<usize>,
    /// Timed decode steps per context length and variant.
    pub decode_steps: usize,
}

impl Options {
    pub fn full() -> Self {
        Self {
            tables: vec![1, 2, 3],
            backends: vec![BackendKind::Flex, BackendKind::NdArray],
            lengths: vec![128, 256, 512, 1024, 2048],
            reps: 3,
            head_dim: 64,
            blocks: vec![32, 64, 128],
            window: 128,
            chunked_block: Some(64),
            parity_heads: 4,
            matmul_size: 1024,
            // configs/small.toml
            model: ModelShape {
                layers: 4,
                d_model: 128,
                heads: 4,
                head_dim: 32,
                seq_len: 128,
                batch: 16,
                vocab: 4096,
                block_size: 64,
            },
            train_reps: 5,
            decode_lengths: vec![128, 256, 512, 1024, 2048],
            decode_steps: 8,
        }
    }

    /// A smoke run: same code paths, tiny sizes.
    pub fn quick() -> Self {
        Self {
            lengths: vec![64, 128],
            reps: 1,
            head_dim: 16,
            blocks: vec![16, 32],
            window: 32,
            chunked_block: Some(16),
            matmul_size: 128,
            model: ModelShape {
                layers: 1,
                d_model: 64,
                heads: 4,
                head_dim: 16,
                seq_len: 64,
                batch: 2,
                vocab: 128,
                block_size: 16,
            },
            train_reps: 1,
            decode_lengths: vec![32, 64],
            decode_steps: 2,
            ..Self::full()
        }
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

fn median_usize(v: &[usize]) -> usize {
    median(&v.iter().map(|&x| x as f64).collect::<Vec<_>>()) as usize
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Runs `f`, returning seconds and the peak heap bytes above the usage at the start.
fn measure(f: impl FnOnce()) -> (f64, usize) {
    alloc::reset_peak();
    let base = alloc::current();
    let t = Instant::now();
    f();
    let dt = t.elapsed().as_secs_f64();
    (dt, alloc::peak().saturating_sub(base))
}

// ---------------------------------------------------------------------------------------------
// Table 1: attention alone.

/// One attention computation of table 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// Causal softmax attention in burn tensor ops.
    Baseline,
    /// The fused causal softmax kernel (`castle_model::kernels`).
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
/// baseline, `Some(window)` for CASTLE (see `castle_model::kernels::lookahead` for the list).
fn fused_flops(l: usize, d: usize, block: usize, lookahead: Option<Option<usize>>) -> f64 {
    let bs = block.clamp(1, l);
    let n = l.div_ceil(bs);
    let pairs = (n * (n + 1) / 2) as f64; // block pairs I >= J
    let pair = gemm_flops(bs, d, bs);
    let cube = gemm_flops(bs, bs, bs);
    // Softmax: scores and P V forward; scores, dP, dQ, dK, dV backward.
    let mut flops = 7.0 * pairs * pair;
    if let Some(window) = lookahead {
        let band = (0..n)
            .map(|j| {
                (j..n)
                    .take_while(|&k| window.is_none_or(|w| k * bs <= j * bs + bs - 1 + w))
                    .count()
            })
            .sum::<usize>() as f64;
        let strict = pairs - n as f64; // I > J
        flops += 2.0 * n as f64 * pair // diag, forward and backward
            + band * (4.0 * pair + cube) // forward: sig, C; backward: C, diag sig^T
            + band * (6.0 * pair + 2.0 * cube) // backward per band pair
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

fn attention_table<B: TrainBackend>(
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
                    backend.name(),
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

/// Median seconds of an `n x n x n` matrix product on the (non-autodiff) backend, and GFLOP/s.
fn matmul_rate<B: Backend>(n: usize, reps: usize) -> f64 {
    let device = B::Device::default();
    let a = Tensor::<B, 2>::random([n, n], Distribution::Normal(0.0, 1.0), &device);
    let b = Tensor::<B, 2>::random([n, n], Distribution::Normal(0.0, 1.0), &device);
    let mut times = vec![];
    for rep in 0..=reps.max(2) {
        let t = Instant::now();
        let c = a.clone().matmul(b.clone());
        B::sync(&device).expect("backend sync");
        drop(c);
        if rep > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    2.0 * (n as f64).powi(3) / median(&times) / 1e9
}

// ---------------------------------------------------------------------------------------------
// Table 2: whole-model training step.

#[derive(Debug, Clone)]
pub struct TrainResult {
    pub backend: BackendKind,
    pub kind: AttentionKind,
    pub heads: usize,
    pub params: usize,
    pub median_s: f64,
    pub tokens_per_s: f64,
    /// Model FLOPs per second by `ModelConfig::train_flops_per_token` (causal halving counted).
    pub model_gflops: f64,
    /// Parameters, gradients' optimizer moments: heap held between steps.
    pub state_bytes: usize,
    /// Peak heap above the state during a step (activations, gradients, temporaries).
    pub step_peak_bytes: usize,
    /// Process peak RSS during a step (all compared models resident), if readable.
    pub peak_rss: Option<usize>,
}

pub fn model_config(
    shape: &ModelShape,
    kind: AttentionKind,
    window: usize,
    max_len: usize,
) -> ModelConfig {
    let window = (kind == AttentionKind::CastleSwl).then_some(window);
    let mut c = ModelConfig::new(shape.layers, shape.d_model, shape.heads, shape.head_dim)
        .with_attention(kind, window);
    c.block_size = shape.block_size;
    c.max_seq_len = max_len;
    c
}

const KINDS: [AttentionKind; 3] = [
    AttentionKind::Baseline,
    AttentionKind::Castle,
    AttentionKind::CastleSwl,
];

fn random_tokens<B: Backend>(
    b: usize,
    l: usize,
    vocab: usize,
    seed: u64,
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<i64> = (0..b * l)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 33) % vocab as u64) as i64
        })
        .collect();
    Tensor::from_data(TensorData::new(v, [b, l]), device)
}

struct Trainer<B: TrainBackend> {
    kind: AttentionKind,
    config: ModelConfig,
    model: Option<CastleLm<B>>,
    optim: OptimizerAdaptor<AdamW, CastleLm<B>, B>,
}

impl<B: TrainBackend> Trainer<B> {
    fn step(&mut self, tokens: &Tensor<B, 2, Int>, targets: &Tensor<B, 2, Int>) {
        let model = self.model.take().expect("model");
        let device = tokens.device();
        let loss = token_nll(model.forward(tokens.clone()), targets.clone()).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        self.model = Some(self.optim.step(1e-4, model, grads));
        B::sync(&device).expect("backend sync");
    }
}

fn train_table<B: TrainBackend>(
    backend: BackendKind,
    opts: &Options,
    log: &mut dyn FnMut(&str),
) -> Vec<TrainResult> {
    let device = B::Device::default();
    let s = &opts.model;
    let tokens = random_tokens::<B>(s.batch, s.seq_len + 1, s.vocab, 1, &device);
    let inputs = tokens.clone().slice([0..s.batch, 0..s.seq_len]);
    let targets = tokens.slice([0..s.batch, 1..s.seq_len + 1]);
    let mut trainers = vec![];
    let mut state = vec![];
    for kind in KINDS {
        let config = model_config(s, kind, opts.window, s.seq_len);
        config.validate().expect("valid model config");
        let before = alloc::current();
        let mut t = Trainer::<B> {
            kind,
            model: Some(config.init::<B>(s.vocab, &device)),
            config,
            optim: AdamWConfig::new().with_weight_decay(0.1).init(),
        };
        t.step(&inputs, &targets); // warm-up; creates the optimizer state
        state.push(alloc::current().saturating_sub(before));
        trainers.push(t);
    }
    let mut times = vec![vec![]; trainers.len()];
    let mut peaks = vec![vec![]; trainers.len()];
    let mut rss = vec![vec![]; trainers.len()];
    for _ in 0..opts.train_reps {
        for (i, t) in trainers.iter_mut().enumerate() {
            let rss_reset = alloc::reset_peak_rss();
            let (dt, peak) = measure(|| t.step(&inputs, &targets));
            times[i].push(dt);
            peaks[i].push(peak);
            if let (true, Some(r)) = (rss_reset, alloc::peak_rss()) {
                rss[i].push(r);
            }
        }
    }
    let tokens_per_step = (s.batch * s.seq_len) as f64;
    trainers
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let median_s = median(&times[i]);
            let r = TrainResult {
                backend,
                kind: t.kind,
                heads: t.config.n_heads(),
                params: t.config.param_summary(s.vocab).total,
                median_s,
                tokens_per_s: tokens_per_step / median_s,
                model_gflops: t.config.train_flops_per_token(s.vocab, s.seq_len) * tokens_per_step
                    / median_s
                    / 1e9,
                state_bytes: state[i],
                step_peak_bytes: median_usize(&peaks[i]),
                peak_rss: (!rss[i].is_empty()).then(|| median_usize(&rss[i])),
            };
            log(&format!(
                "  [{}] train {}: {:.1} ms/step, {:.0} tok/s",
                backend.name(),
                t.kind,
                median_s * 1e3,
                r.tokens_per_s
            ));
            r
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Table 3: decoding.

#[derive(Debug, Clone)]
pub struct DecodeResult {
    pub backend: BackendKind,
    pub kind: AttentionKind,
    pub context: usize,
    pub median_s: f64,
    /// Heap held by the cache after the prefill, per cached token.
    pub measured_cache_bytes_per_token: f64,
    /// `layers x heads x (2 or 4) x d x 4 bytes` (spec section 4).
    pub ideal_cache_bytes_per_token: usize,
}

fn decode_table<B: AttentionBackend>(
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
                backend.name(),
                r.median_s * 1e3
            ));
            results.push(r);
        }
    }
    results
}

// ---------------------------------------------------------------------------------------------
// The run and its report.

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub matmul_gflops: Vec<(BackendKind, f64)>,
    pub attention: Vec<AttnResult>,
    pub train: Vec<TrainResult>,
    pub decode: Vec<DecodeResult>,
    pub seconds: f64,
}

type NdArrayB = NdArray<f32>;
type FlexB = Flex;

/// Runs the selected tables; `log` receives progress lines.
pub fn run(opts: &Options, log: &mut dyn FnMut(&str)) -> Report {
    let start = Instant::now();
    let mut report = Report::default();
    for &backend in &opts.backends {
        log(&format!("[{}] matmul rate", backend.name()));
        let rate = match backend {
            BackendKind::NdArray => matmul_rate::<NdArrayB>(opts.matmul_size, opts.reps),
            BackendKind::Flex => matmul_rate::<FlexB>(opts.matmul_size, opts.reps),
        };
        report.matmul_gflops.push((backend, rate));
    }
    if opts.tables.contains(&1) {
        for &backend in &opts.backends {
            log(&format!("[{}] table 1: attention", backend.name()));
            report.attention.extend(match backend {
                BackendKind::NdArray => attention_table::<Autodiff<NdArrayB>>(backend, opts, log),
                BackendKind::Flex => attention_table::<Autodiff<FlexB>>(backend, opts, log),
            });
        }
    }
    if opts.tables.contains(&2) {
        for &backend in &opts.backends {
            log(&format!("[{}] table 2: training step", backend.name()));
            report.train.extend(match backend {
                BackendKind::NdArray => train_table::<Autodiff<NdArrayB>>(backend, opts, log),
                BackendKind::Flex => train_table::<Autodiff<FlexB>>(backend, opts, log),
            });
        }
    }
    if opts.tables.contains(&3) {
        if let Some(&backend) = opts.backends.first() {
            log(&format!("[{}] table 3: decoding", backend.name()));
            report.decode = match backend {
                BackendKind::NdArray => decode_table::<NdArrayB>(backend, opts, log),
                BackendKind::Flex => decode_table::<FlexB>(backend, opts, log),
            };
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    report
}

/// The fastest row of `form`'s kind (its best block size).
fn best<'a>(rows: &[&'a AttnResult], form: Form) -> Option<&'a AttnResult> {
    rows.iter()
        .copied()
        .filter(|r| r.form.same_kind(form))
        .min_by(|a, b| a.median_s.total_cmp(&b.median_s))
}

fn yes(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**not met**"
    }
}

/// The report as Markdown.
pub fn markdown(report: &Report, opts: &Options) -> String {
    let mut md = String::new();
    let rate_of = |b: BackendKind| {
        report
            .matmul_gflops
            .iter()
            .find(|(k, _)| *k == b)
            .map_or(f64::NAN, |(_, r)| *r)
    };
    let _ = writeln!(
        md,
        "Matrix-multiply rate ({0} x {0} x {0}, f32, median):",
        opts.matmul_size
    );
    let _ = writeln!(md);
    for (b, r) in &report.matmul_gflops {
        let _ = writeln!(md, "- `{}`: {r:.1} GFLOP/s", b.name());
    }
    let _ = writeln!(md);

    let mut targets = String::new();
    if !report.attention.is_empty() {
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
                    backend.name(),
                    heads(base),
                    heads(naive),
                    rate_of(backend)
                );
                let _ = writeln!(
                    md,
                    "| L | form | B | median ms | peak MiB | GFLOP/call | GFLOP/s |\n|---:|---|---:|---:|---:|---:|---:|"
                );
                // Per L: the best row of every form.
                let mut per_l = vec![];
                for &l in &opts.lengths {
                    let at_l: Vec<&AttnResult> =
                        rows.iter().copied().filter(|r| r.l == l).collect();
                    let found =
                        [base, base_fused, naive, chunked, fused, swl].map(|f| best(&at_l, f));
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
                        backend.name(),
                        last.0,
                        last_speedup,
                        speedups.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(", "),
                        yes(last_speedup >= 8.0 && widening)
                    );
                    let _ = writeln!(
                        targets,
                        "| `{}` {setting} | fused CASTLE within 3x of fused baseline at every L | worst {:.2}x | {} |",
                        backend.name(),
                        worst,
                        yes(worst <= 3.0)
                    );
                    if last.0 > first.0 {
                        let prev = &complete[complete.len().saturating_sub(2)];
                        let exponent = |a: &AttnResult, b: &AttnResult, la: usize, lb: usize| {
                            (a.peak_bytes as f64 / b.peak_bytes.max(1) as f64).ln()
                                / (la as f64 / lb as f64).ln()
                        };
                        let local = exponent(last.3, prev.3, last.0, prev.0);
                        let _ = writeln!(
                            targets,
                            "| `{}` {setting} | fused peak memory grows no faster than L^2 | exponent {:.2} over L = {}..{}, {:.2} over the last doubling; {:.1} MiB at L = {} | {} |",
                            backend.name(),
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
    if !report.train.is_empty() {
        let s = &opts.model;
        let _ = writeln!(
            md,
            "## 2. Whole-model training step\n\nShape (`configs/small.toml`'s): \
             layers {}, d_model {}, baseline heads {} (CASTLE {} by parity), head_dim {}, seq_len {}, batch {}, vocab {}, block_size {}, SWL W = {}. \
             Step = forward, mean token NLL, backward, AdamW. Median of {} interleaved steps after one warm-up. \
             Model GFLOP/s counts `ModelConfig::train_flops_per_token` (causal halving included). State = parameters + \
             AdamW moments; step peak = heap above that during a step; peak RSS = process VmHWM during a step, \
             all three models resident.\n",
            s.layers,
            s.d_model,
            s.heads,
            castle_model::config::parity_heads(s.heads),
            s.head_dim,
            s.seq_len,
            s.batch,
            s.vocab,
            s.block_size,
            opts.window,
            opts.train_reps
        );
        let _ = writeln!(
            md,
            "| backend | model | heads | params | ms/step | tokens/s | ratio to baseline | model GFLOP/s | state MiB | step peak MiB | peak RSS MiB |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for &backend in &opts.backends {
            let rows: Vec<&TrainResult> = report
                .train
                .iter()
                .filter(|r| r.backend == backend)
                .collect();
            let base = rows
                .iter()
                .find(|r| r.kind == AttentionKind::Baseline)
                .map_or(f64::NAN, |r| r.median_s);
            for r in &rows {
                let _ = writeln!(
                    md,
                    "| `{}` | {} | {} | {} | {:.1} | {:.0} | {:.2} | {:.1} | {:.1} | {:.1} | {} |",
                    backend.name(),
                    r.kind,
                    r.heads,
                    r.params,
                    r.median_s * 1e3,
                    r.tokens_per_s,
                    r.median_s / base,
                    r.model_gflops,
                    mib(r.state_bytes),
                    mib(r.step_peak_bytes),
                    r.peak_rss
                        .map_or("n/a".into(), |b| format!("{:.0}", mib(b)))
                );
                if r.kind == AttentionKind::Castle {
                    let ratio = r.median_s / base;
                    let _ = writeln!(
                        targets,
                        "| `{}` | whole-model CASTLE step within 1.3x of baseline | {:.2}x | {} |",
                        backend.name(),
                        ratio,
                        yes(ratio <= 1.3)
                    );
                }
            }
        }
        let _ = writeln!(md);
    }

    if !report.decode.is_empty() {
        let backend = report.decode[0].backend;
        let _ = writeln!(
            md,
            "## 3. Decoding (`{}`, batch 1, same model shape, after a prefill of the context)\n\n\
             Median of {} decode steps per variant, interleaved, after one warm-up step. Cache bytes per \
             token: `ideal` = layers x heads x (2 or 4) x d x 4 bytes (spec section 4); `measured` = heap \
             the prefill left held, divided by the context length.\n",
            backend.name(),
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
            let rows: Vec<&DecodeResult> =
                report.decode.iter().filter(|r| r.kind == kind).collect();
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
                    backend.name(),
                    t0 * 1e3,
                    t1 * 1e3,
                    worst,
                    yes(worst <= 1.1)
                );
            }
        }
    }

    if !targets.is_empty() {
        let _ = writeln!(
            md,
            "\n## Targets\n\n| where | target | measured | |\n|---|---|---|---|\n{targets}"
        );
    }
    md
}
