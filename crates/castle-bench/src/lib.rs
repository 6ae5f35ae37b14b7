//! `castle-bench`: CASTLE's cost against the causal-softmax baseline and against its own O(L^3)
//! form, measured in one run on this machine. Every comparison interleaves the compared variants
//! repetition by repetition and reports medians, so that load from other processes hits all of
//! them alike; ratios are taken between figures of the same run.
//!
//! - Table 1: attention alone, forward + backward, batch 1, per head and at parameter parity.
//! - Table 2: the trainer's whole optimizer step at several shapes, with MFU and cores busy.
//! - Table 3: decoding latency per token with the KV / UQ-KV cache.

pub mod alloc;
pub mod attention;
pub mod decode;
pub mod report;
pub mod stats;
pub mod train;

use std::time::Instant;

use burn::prelude::*;
use castle_model::{AttentionKind, ModelConfig, TrainBackend};
use castle_train::backend::OnBackend;
use castle_train::config::BackendConfig;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use attention::{call_flops, AttnResult, Form};
pub use castle_train::config::BackendKind;
pub use decode::DecodeResult;
pub use report::markdown;
pub use train::TrainResult;

/// A whole-model shape of tables 2 and 3.
#[derive(Debug, Clone, Copy)]
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
    /// The shape of table 3 (decoding).
    pub model: ModelShape,
    /// The shapes of table 2 (training step).
    pub train_shapes: Vec<ModelShape>,
    pub train_reps: usize,
    /// Context lengths of table 3.
    pub decode_lengths: Vec<usize>,
    /// Timed decode steps per context length and variant.
    pub decode_steps: usize,
    /// Run the GPU backends under burn's `Fusion` wrapper (`backend.fusion`).
    pub fusion: bool,
}

impl Options {
    pub fn full() -> Self {
        // configs/small.toml's shape, and the d_model 256 shapes of issue 11.
        let small = ModelShape {
            layers: 4,
            d_model: 128,
            heads: 4,
            head_dim: 32,
            seq_len: 128,
            batch: 16,
            vocab: 4096,
            block_size: 64,
        };
        let d256 = |seq_len, batch| ModelShape {
            d_model: 256,
            head_dim: 64,
            seq_len,
            batch,
            ..small
        };
        Self {
            tables: vec![1, 2, 3],
            backends: vec![BackendKind::Flex, BackendKind::Ndarray],
            lengths: vec![128, 256, 512, 1024, 2048],
            reps: 3,
            head_dim: 64,
            blocks: vec![32, 64, 128],
            window: 128,
            chunked_block: Some(64),
            parity_heads: 4,
            matmul_size: 1024,
            // configs/small.toml
            model: small,
            train_shapes: vec![small, d256(256, 8), d256(1024, 2)],
            train_reps: 5,
            decode_lengths: vec![128, 256, 512, 1024, 2048],
            decode_steps: 8,
            fusion: true,
        }
    }

    /// A smoke run: same code paths, tiny sizes.
    pub fn quick() -> Self {
        let tiny = ModelShape {
            layers: 1,
            d_model: 64,
            heads: 4,
            head_dim: 16,
            seq_len: 64,
            batch: 2,
            vocab: 128,
            block_size: 16,
        };
        Self {
            lengths: vec![64, 128],
            reps: 1,
            head_dim: 16,
            blocks: vec![16, 32],
            window: 32,
            chunked_block: Some(16),
            matmul_size: 128,
            model: tiny,
            train_shapes: vec![tiny],
            train_reps: 1,
            decode_lengths: vec![32, 64],
            decode_steps: 2,
            ..Self::full()
        }
    }
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

pub(crate) const KINDS: [AttentionKind; 3] = [
    AttentionKind::Baseline,
    AttentionKind::Castle,
    AttentionKind::CastleSwl,
];

/// `n` token ids drawn uniformly below `vocab` from `seed`.
pub(crate) fn random_ids(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(0..vocab as u32)).collect()
}

/// `[b, l]` token ids drawn uniformly below `vocab` from `seed`.
pub(crate) fn random_tokens<B: Backend>(
    b: usize,
    l: usize,
    vocab: usize,
    seed: u64,
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    let v: Vec<i64> = random_ids(b * l, vocab, seed)
        .into_iter()
        .map(i64::from)
        .collect();
    Tensor::from_data(TensorData::new(v, [b, l]), device)
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The better of the two matmul-rate readings, the denominator of MFU.
    pub matmul_gflops: Vec<(BackendKind, f64)>,
    /// The matmul rate read at the start and at the end of the run.
    pub matmul_readings: Vec<(BackendKind, [f64; 2])>,
    pub attention: Vec<AttnResult>,
    pub train: Vec<TrainResult>,
    pub decode: Vec<DecodeResult>,
    pub seconds: f64,
}

/// Runs the selected tables; `log` receives progress lines. Each backend runs its tables in
/// turn (the first also table 3), between two readings of its matmul rate. The GPU backends need
/// castle-bench built with their cargo feature; otherwise the error names that build.
pub fn run(opts: &Options, log: &mut dyn FnMut(&str)) -> anyhow::Result<Report> {
    let start = Instant::now();
    let mut report = Report::default();
    for (i, &backend) in opts.backends.iter().enumerate() {
        let task = OneBackend {
            backend,
            first: i == 0,
            opts,
            log: &mut *log,
            report: &mut report,
        };
        let config = BackendConfig {
            kind: backend,
            fusion: opts.fusion,
            ..Default::default()
        };
        castle_train::backend::dispatch_training(&config, task)?;
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// One backend's share of [`run`].
struct OneBackend<'a> {
    backend: BackendKind,
    first: bool,
    opts: &'a Options,
    log: &'a mut dyn FnMut(&str),
    report: &'a mut Report,
}

impl OnBackend for OneBackend<'_> {
    type Output = ();

    fn run<B: TrainBackend>(self, _device: B::Device) -> anyhow::Result<()> {
        let Self {
            backend,
            first,
            opts,
            log,
            report,
        } = self;
        // The matmul rate is read at the start and again at the end, and the better reading
        // kept: on a shared machine one reading taken in a slow moment would flatter MFU.
        let rate = || stats::matmul_rate::<B::InnerBackend>(opts.matmul_size, opts.reps);
        log(&format!("[{backend}] matmul rate"));
        let first_reading = rate();
        if opts.tables.contains(&1) {
            log(&format!("[{backend}] table 1: attention"));
            report
                .attention
                .extend(attention::table::<B>(backend, opts, log));
        }
        if opts.tables.contains(&2) {
            log(&format!("[{backend}] table 2: training step"));
            report.train.extend(train::table::<B>(backend, opts, log));
        }
        if first && opts.tables.contains(&3) {
            log(&format!("[{backend}] table 3: decoding"));
            report.decode = decode::table::<B::InnerBackend>(backend, opts, log)?;
        }
        log(&format!("[{backend}] matmul rate, again"));
        let readings = [first_reading, rate()];
        report.matmul_readings.push((backend, readings));
        report
            .matmul_gflops
            .push((backend, readings[0].max(readings[1])));
        Ok(())
    }
}
