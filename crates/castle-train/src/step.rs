//! One optimizer step, shared by the single-device loop, the data-parallel loop and the
//! benchmarks: forward and backward of each micro-batch with gradient accumulation, the
//! all-reduce (mean over ranks) when there are several, global-norm clipping on the reduced
//! gradients, both AdamW groups, and one read of the loss.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use castle_model::{CastleLm, TrainBackend};

use crate::collective::Peer;
use crate::optim::AdamWGroups;
use crate::validation::inputs_and_targets;

/// Held while a rank builds and differentiates its graph. burn-autodiff 0.21 keeps every graph
/// of the process in one global registry and, after each backward pass, frees the nodes it
/// judges unused in *all* graphs; with two ranks of one process building graphs at once, some
/// gradients came out wrong (about one run in three of the two-rank test, a gradient norm 20%
/// low at a random step). The mechanism is burn issue #5573: an op that drops its inputs'
/// reference counts before registering its own step leaves their graph looking unused to another
/// thread's cleanup. castle's fused ops no longer do (`kernels::host_op::hold_inputs`), but
/// burn's own `cat` still does. With this lock the ranks of a process take turns for forward and
/// backward and reproduce the single-device run bit for bit; on CPU they share the cores anyway,
/// and on CUDA the lock covers queuing the kernels, not running them.
static GRAPH_LOCK: Mutex<()> = Mutex::new(());

/// What one step did: the loss and gradient norm it read, and where its time went.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutput {
    /// Mean training loss over the step's global batch (over every rank's rows).
    pub loss: f64,
    /// Global gradient norm of the reduced gradients, before clipping.
    pub grad_norm: f64,
    pub times: StepTimes,
}

/// Wall-clock time of each phase, measured without extra device syncs. On an asynchronous
/// backend (CUDA) the forward and backward times are the time to queue their work, and the wait
/// for it lands in the first phase that reads from the device (the all-reduce, or the optimizer
/// phase where the loss and the gradient norm are read); on the CPU backends each phase is what
/// it says. The all-reduce time includes waiting for the slowest rank; the wait for another rank
/// of the same process to finish its forward and backward (`GRAPH_LOCK`) is not counted.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StepTimes {
    pub forward: Duration,
    pub backward: Duration,
    pub all_reduce: Duration,
    pub optimizer: Duration,
}

/// One optimizer step of `model` at learning rate `lr` on `micro_batches`: each is this rank's
/// `rows` windows of `seq_len + 1` tokens (row-major), and all of them together are this rank's
/// part of the step's global batch. With `peer` the gradients and the loss are averaged over
/// every rank before clipping (one all-reduce), so every rank takes the same step.
pub fn train_step<B: TrainBackend>(
    model: CastleLm<B>,
    optim: &mut AdamWGroups<B>,
    micro_batches: &[Vec<u32>],
    rows: usize,
    lr: f64,
    peer: Option<&Peer>,
    device: &B::Device,
) -> Result<(CastleLm<B>, StepOutput)> {
    anyhow::ensure!(!micro_batches.is_empty(), "a step needs a micro-batch");
    let accumulation = micro_batches.len();
    let mut times = StepTimes::default();
    let mut accumulator = GradientsAccumulator::<CastleLm<B>>::new();
    let mut loss_sum: Option<Tensor<B::InnerBackend, 1>> = None;
    for tokens in micro_batches {
        let _graph = GRAPH_LOCK
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let started = Instant::now();
        let (inputs, targets) = inputs_and_targets::<B>(tokens, rows, device);
        let loss = model.token_nll(inputs, targets).mean();
        let value = loss.clone().inner();
        let backward_started = Instant::now();
        times.forward += backward_started - started;
        let grads = (loss / accumulation as f64).backward();
        accumulator.accumulate(&model, GradientsParams::from_grads(grads, &model));
        times.backward += backward_started.elapsed();
        loss_sum = Some(loss_sum.map_or(value.clone(), |sum| sum + value));
    }
    // Set by the loop, which runs at least once (checked above).
    let mut loss_sum = loss_sum.expect("at least one micro-batch");
    let mut grads = accumulator.grads();
    if let Some(peer) = peer {
        let started = Instant::now();
        (grads, loss_sum) = peer.all_reduce_mean(&model, grads, loss_sum)?;
        times.all_reduce = started.elapsed();
    }
    let started = Instant::now();
    // One read of the loss per step, after all micro-batches are queued.
    let loss = loss_sum.into_scalar().elem::<f64>() / accumulation as f64;
    let (model, grad_norm) = optim.step(lr, model, grads);
    times.optimizer = started.elapsed();
    Ok((
        model,
        StepOutput {
            loss,
            grad_norm,
            times,
        },
    ))
}

/// Time spent in each phase over the steps of a run (this rank's).
#[derive(Default)]
pub struct TimeTotals {
    steps: u32,
    sum: StepTimes,
}

impl TimeTotals {
    pub fn add(&mut self, t: &StepTimes) {
        self.steps += 1;
        self.sum.forward += t.forward;
        self.sum.backward += t.backward;
        self.sum.all_reduce += t.all_reduce;
        self.sum.optimizer += t.optimizer;
    }

    pub fn report(&self) -> String {
        let n = self.steps.max(1);
        let s = &self.sum;
        let total = (s.forward + s.backward + s.all_reduce + s.optimizer).as_secs_f64();
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3 / n as f64;
        format!(
            "time per step over {} steps: forward {:.1} ms, backward {:.1} ms, all-reduce {:.1} ms ({:.1}%), optimizer {:.1} ms",
            self.steps,
            ms(s.forward),
            ms(s.backward),
            ms(s.all_reduce),
            100.0 * s.all_reduce.as_secs_f64() / total.max(f64::MIN_POSITIVE),
            ms(s.optimizer)
        )
    }
}
