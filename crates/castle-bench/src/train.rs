//! Table 2: the trainer's own optimizer step (`castle_train::step::train_step`: forward, mean
//! token NLL, backward, global-norm clipping, both AdamW groups, one loss read) at several shapes,
//! with MFU against the machine's measured matmul rate, cores busy, and the step's split.

use std::fmt::Write as _;
use std::time::Duration;

use castle_model::{AttentionKind, CastleLm, ModelConfig, TrainBackend};
use castle_train::config::TrainConfig;
use castle_train::optim::AdamWGroups;
use castle_train::step::{train_step, StepTimes};

use crate::stats::{cpu_seconds, measure, median, median_usize, mib, yes};
use crate::{alloc, model_config, random_ids, BackendKind, ModelShape, Options, Report, KINDS};

#[derive(Debug, Clone)]
pub struct TrainResult {
    pub backend: BackendKind,
    /// Index into `Options::train_shapes`.
    pub shape: usize,
    pub kind: AttentionKind,
    pub heads: usize,
    pub params: usize,
    pub median_s: f64,
    pub tokens_per_s: f64,
    /// Model FLOPs per second by `ModelConfig::train_flops_per_token` (causal halving counted).
    pub model_gflops: f64,
    /// Process CPU time over wall time during the timed steps.
    pub cores_busy: f64,
    /// Median share of the step in forward, backward and optimizer (clipping + AdamW + loss read).
    pub split: [f64; 3],
    /// Parameters and AdamW moments: heap held between steps.
    pub state_bytes: usize,
    /// Peak heap above the state during a step (activations, gradients, temporaries).
    pub step_peak_bytes: usize,
    /// Process peak RSS during a step (all compared models resident), if readable.
    pub peak_rss: Option<usize>,
}

struct Run<B: TrainBackend> {
    kind: AttentionKind,
    config: ModelConfig,
    model: Option<CastleLm<B>>,
    optim: AdamWGroups<B>,
}

impl<B: TrainBackend> Run<B> {
    fn step(&mut self, tokens: &[Vec<u32>], rows: usize, device: &B::Device) -> StepTimes {
        let model = self.model.take().expect("model");
        let (model, out) = train_step(model, &mut self.optim, tokens, rows, 1e-4, None, device)
            .expect("a single-device step has no peer to fail");
        self.model = Some(model);
        out.times
    }
}

/// The `[train]` section a run of `shape` would have, every other key at its default.
fn train_config(shape: &ModelShape) -> TrainConfig {
    toml::from_str(&format!(
        "seq_len = {}\nbatch_size = {}\nsteps = 1\nlr = 1e-4",
        shape.seq_len, shape.batch
    ))
    .expect("a valid [train] section")
}

pub(crate) fn table<B: TrainBackend>(
    backend: BackendKind,
    opts: &Options,
    log: &mut dyn FnMut(&str),
) -> Vec<TrainResult> {
    let device = B::Device::default();
    let mut results = vec![];
    for (shape_index, s) in opts.train_shapes.iter().enumerate() {
        let tokens = vec![random_ids(s.batch * (s.seq_len + 1), s.vocab, 1)];
        let mut runs = vec![];
        let mut state = vec![];
        for kind in KINDS {
            let config = model_config(s, kind, opts.window, s.seq_len);
            config.validate().expect("valid model config");
            let before = alloc::current();
            let mut run = Run::<B> {
                kind,
                model: Some(config.init::<B>(s.vocab, &device)),
                config,
                optim: AdamWGroups::new(&train_config(s)),
            };
            run.step(&tokens, s.batch, &device); // warm-up; creates the optimizer state
            state.push(alloc::current().saturating_sub(before));
            runs.push(run);
        }
        let n = runs.len();
        let (mut times, mut peaks, mut rss) = (vec![vec![]; n], vec![vec![]; n], vec![vec![]; n]);
        let (mut cpu, mut splits) = (vec![0.0; n], vec![vec![]; n]);
        for _ in 0..opts.train_reps {
            for (i, run) in runs.iter_mut().enumerate() {
                let rss_reset = alloc::reset_peak_rss();
                let cpu_before = cpu_seconds();
                let mut phases = StepTimes::default();
                let (dt, peak) = measure(|| phases = run.step(&tokens, s.batch, &device));
                cpu[i] += cpu_seconds() - cpu_before;
                times[i].push(dt);
                peaks[i].push(peak);
                let share = |d: Duration| d.as_secs_f64() / dt;
                splits[i].push([
                    share(phases.forward),
                    share(phases.backward),
                    share(phases.optimizer),
                ]);
                if let (true, Some(r)) = (rss_reset, alloc::peak_rss()) {
                    rss[i].push(r);
                }
            }
        }
        let tokens_per_step = (s.batch * s.seq_len) as f64;
        for (i, run) in runs.iter().enumerate() {
            let median_s = median(&times[i]);
            let phase = |p: usize| median(&splits[i].iter().map(|x| x[p]).collect::<Vec<_>>());
            let r = TrainResult {
                backend,
                shape: shape_index,
                kind: run.kind,
                heads: run.config.n_heads(),
                params: run.config.param_summary(s.vocab).total,
                median_s,
                tokens_per_s: tokens_per_step / median_s,
                model_gflops: run.config.train_flops_per_token(s.vocab, s.seq_len)
                    * tokens_per_step
                    / median_s
                    / 1e9,
                cores_busy: cpu[i] / times[i].iter().sum::<f64>(),
                split: [phase(0), phase(1), phase(2)],
                state_bytes: state[i],
                step_peak_bytes: median_usize(&peaks[i]),
                peak_rss: (!rss[i].is_empty()).then(|| median_usize(&rss[i])),
            };
            log(&format!(
                "  [{}] train {} d_model {} L {}: {:.1} ms/step, {:.0} tok/s, {:.2} cores",
                backend,
                run.kind,
                s.d_model,
                s.seq_len,
                median_s * 1e3,
                r.tokens_per_s,
                r.cores_busy
            ));
            results.push(r);
        }
    }
    results
}

/// Section 2 of the report; its target rows go to `targets`.
pub fn section(report: &Report, opts: &Options, md: &mut String, targets: &mut String) {
    if report.train.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "## 2. Whole-model training step\n\n\
         The trainer's own step (`castle_train::step::train_step`): forward, mean token NLL, backward, \
         global-norm clipping, both AdamW groups, one loss read. Median of {} interleaved steps after one \
         warm-up, SWL W = {}. Model GFLOP/s counts `ModelConfig::train_flops_per_token` (causal halving \
         included); MFU = model GFLOP/s / the backend's matmul rate above (all cores); cores = process \
         CPU time / wall time over the timed steps; fwd / bwd / opt = median share of the step. State = \
         parameters + AdamW moments; step peak = heap above that during a step; peak RSS = process VmHWM \
         during a step, all three models resident.\n",
        opts.train_reps, opts.window
    );
    let _ = writeln!(md, "| shape | layers | d_model | heads (CASTLE) | head_dim | seq_len | batch | vocab |\n|---|---:|---:|---|---:|---:|---:|---:|");
    for (i, s) in opts.train_shapes.iter().enumerate() {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} ({}) | {} | {} | {} | {} |",
            i + 1,
            s.layers,
            s.d_model,
            s.heads,
            castle_model::config::parity_heads(s.heads),
            s.head_dim,
            s.seq_len,
            s.batch,
            s.vocab
        );
    }
    let _ = writeln!(
        md,
        "\n| backend | shape | model | params | ms/step | tokens/s | ratio to baseline | model GFLOP/s | MFU | cores | fwd / bwd / opt | state MiB | step peak MiB | peak RSS MiB |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"
    );
    for &backend in &opts.backends {
        let rate = report
            .matmul_gflops
            .iter()
            .find(|(b, _)| *b == backend)
            .map_or(f64::NAN, |(_, r)| *r);
        for shape in 0..opts.train_shapes.len() {
            let rows: Vec<&TrainResult> = report
                .train
                .iter()
                .filter(|r| r.backend == backend && r.shape == shape)
                .collect();
            let base = rows
                .iter()
                .find(|r| r.kind == AttentionKind::Baseline)
                .map_or(f64::NAN, |r| r.median_s);
            for r in &rows {
                let mfu = r.model_gflops / rate;
                let _ = writeln!(
                    md,
                    "| `{}` | {} | {} | {} | {:.1} | {:.0} | {:.2} | {:.1} | {:.0}% | {:.2} | {:.0}% / {:.0}% / {:.0}% | {:.1} | {:.1} | {} |",
                    backend,
                    shape + 1,
                    r.kind,
                    r.params,
                    r.median_s * 1e3,
                    r.tokens_per_s,
                    r.median_s / base,
                    r.model_gflops,
                    100.0 * mfu,
                    r.cores_busy,
                    100.0 * r.split[0],
                    100.0 * r.split[1],
                    100.0 * r.split[2],
                    mib(r.state_bytes),
                    mib(r.step_peak_bytes),
                    r.peak_rss
                        .map_or("n/a".into(), |b| format!("{:.0}", mib(b)))
                );
                let _ = writeln!(
                    targets,
                    "| `{}` shape {} | {} step at MFU >= 60% (d_model >= 256) or >= 45% (smaller), >= 1.8 cores busy | MFU {:.0}%, {:.2} cores | {} |",
                    backend,
                    shape + 1,
                    r.kind,
                    100.0 * mfu,
                    r.cores_busy,
                    yes(mfu >= if opts.train_shapes[shape].d_model >= 256 { 0.60 } else { 0.45 } && r.cores_busy >= 1.8)
                );
                if r.kind == AttentionKind::Castle {
                    let ratio = r.median_s / base;
                    let s = &opts.train_shapes[shape];
                    let limit = if s.seq_len >= 1024 { 1.15 } else { 1.3 };
                    let _ = writeln!(
                        targets,
                        "| `{}` shape {} | whole-model CASTLE step within {limit}x of baseline | {:.2}x | {} |",
                        backend,
                        shape + 1,
                        ratio,
                        yes(ratio <= limit)
                    );
                }
            }
        }
    }
    let _ = writeln!(md);
}
