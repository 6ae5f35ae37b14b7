//! One rank's handle on burn-collective: the gradient all-reduce of a step, a small gather for
//! consistency checks, and a watch on every collective call so that a peer that died or a node
//! that never joined is reported (see [`crate::distributed`]) instead of waited on forever.
//!
//! Gradients are reduced in the model's parameter order, flattened into buckets, rather than
//! through `GradientsParams::all_reduce`: that one orders the gradients by `ParamId`, and a
//! freshly initialised model draws its `ParamId`s at random in each process, so two nodes would
//! pair different parameters of the same shape without any error.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::TensorPrimitive;
use burn_collective::{all_reduce, CollectiveError, PeerId, ReduceOperation};
use castle_model::{CastleLm, TrainBackend};

/// Elements per all-reduce call (64 MiB of `f32`): under WebSocket's frame limit, and few calls.
const BUCKET: usize = 16 << 20;

/// When a rank entered the collective call it is waiting in, and which call.
type Waiting = Option<(Instant, String)>;

/// What each local rank is waiting in, if anything.
#[derive(Clone)]
pub struct Watch(Arc<Mutex<Vec<Waiting>>>);

impl Watch {
    pub fn new(local_ranks: usize) -> Self {
        Self(Arc::new(Mutex::new(vec![None; local_ranks])))
    }

    /// The entries; a rank that panicked while holding the lock left them whole (each update
    /// is one assignment), so a poisoned lock is used as it is.
    fn ranks(&self) -> MutexGuard<'_, Vec<Waiting>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `call` (a blocking collective call) for local rank `local`, marked as waiting.
    pub fn waiting<T>(&self, local: usize, what: &str, call: impl FnOnce() -> T) -> T {
        self.ranks()[local] = Some((Instant::now(), what.to_string()));
        let out = call();
        self.ranks()[local] = None;
        out
    }

    /// When every local rank has waited in a collective call for longer than `timeout` (so no
    /// local rank is working and the missing party is remote or dead), that call and the wait.
    pub fn stalled(&self, timeout: Duration) -> Option<(String, Duration)> {
        let ranks = self.ranks();
        let mut shortest: Option<(String, Duration)> = None;
        for entry in ranks.iter() {
            let (since, what) = entry.as_ref()?;
            let waited = since.elapsed();
            if shortest.as_ref().is_none_or(|(_, w)| waited < *w) {
                shortest = Some((what.clone(), waited));
            }
        }
        shortest.filter(|(_, waited)| *waited > timeout)
    }
}

/// This rank in the collective: its burn `PeerId` (= global rank), the world size, and the
/// watch its calls report to.
pub struct Peer {
    pub rank: usize,
    pub world: usize,
    local: usize,
    watch: Watch,
}

impl Peer {
    /// A registered peer (see `distributed::register`) of global rank `rank`, local index `local`.
    pub fn new(rank: usize, world: usize, local: usize, watch: Watch) -> Self {
        Self {
            rank,
            world,
            local,
            watch,
        }
    }

    pub fn id(&self) -> PeerId {
        PeerId::from(self.rank)
    }

    fn reduce<B: Backend>(
        &self,
        tensor: Tensor<B, 1>,
        op: ReduceOperation,
        what: &str,
    ) -> Result<Tensor<B, 1>> {
        let primitive = tensor.into_primitive().tensor();
        let reduced = self
            .watch
            .waiting(self.local, what, || {
                all_reduce::<B>(self.id(), primitive, op)
            })
            .map_err(|e| match e {
                // The exchange between nodes failed: most often another node died.
                CollectiveError::Global(global) => anyhow!(
                    "rank {}: {what} failed in burn-collective between nodes, as when another \
                     node dies or loses its connection: {global:?}",
                    self.rank
                ),
                e => anyhow!(
                    "rank {}: {what} failed in burn-collective: {e:?}",
                    self.rank
                ),
            })?;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(reduced)))
    }

    /// The mean over every rank of each gradient of `model` (a missing one counts as zeros) and
    /// of `loss`, in one all-reduce per 64 MiB bucket, in the model's parameter order.
    pub fn all_reduce_mean<B: AutodiffBackend>(
        &self,
        model: &CastleLm<B>,
        mut grads: GradientsParams,
        loss: Tensor<B::InnerBackend, 1>,
    ) -> Result<(GradientsParams, Tensor<B::InnerBackend, 1>)> {
        let mut flatten = Flatten::<B> {
            grads: &mut grads,
            parts: vec![],
        };
        model.visit(&mut flatten);
        let mut parts = flatten.parts;
        parts.push(loss);
        let flat = Tensor::cat(parts, 0);
        let total = flat.dims()[0];
        let mut buckets = vec![];
        for start in (0..total).step_by(BUCKET) {
            let bucket = flat.clone().narrow(0, start, BUCKET.min(total - start));
            let what = format!("the gradient all-reduce (elements {start}..)");
            buckets.push(self.reduce(bucket, ReduceOperation::Mean, &what)?);
        }
        let flat = Tensor::cat(buckets, 0);
        let mut unflatten = Unflatten::<B> {
            loss: flat.clone().narrow(0, total - 1, 1),
            flat,
            offset: 0,
            grads: GradientsParams::new(),
        };
        model.visit(&mut unflatten);
        Ok((unflatten.grads, unflatten.loss))
    }

    /// Every rank's `values` (the same length on each), indexed by rank: an all-reduce (sum) of
    /// a `world x len` tensor in which each rank fills its own row, so the values come back exact.
    pub fn gather<B: Backend>(
        &self,
        values: &[f32],
        what: &str,
        device: &B::Device,
    ) -> Result<Vec<Vec<f32>>> {
        let k = values.len();
        let mut rows = vec![0.0f32; self.world * k];
        rows[self.rank * k..(self.rank + 1) * k].copy_from_slice(values);
        let tensor = Tensor::<B, 1>::from_data(TensorData::new(rows, [self.world * k]), device);
        let summed = self.reduce(tensor, ReduceOperation::Sum, what)?;
        let all: Vec<f32> = summed
            .into_data()
            .to_vec()
            .map_err(|e| anyhow!("reading {what}: {e:?}"))?;
        Ok(all.chunks(k).map(<[f32]>::to_vec).collect())
    }
}

/// Moves each gradient, flattened, into `parts` in the model's parameter order.
struct Flatten<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    parts: Vec<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Flatten<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let shape = param.lazy_shape();
        let n = shape.num_elements();
        let grad = self
            .grads
            .remove::<B::InnerBackend, D>(param.id)
            .unwrap_or_else(|| Tensor::zeros(shape, &param.lazy_device()));
        self.parts.push(grad.reshape([n]));
    }
}

/// Cuts the reduced flat tensor back into one gradient per parameter, in the same order.
struct Unflatten<B: AutodiffBackend> {
    flat: Tensor<B::InnerBackend, 1>,
    loss: Tensor<B::InnerBackend, 1>,
    offset: usize,
    grads: GradientsParams,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Unflatten<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let shape = param.lazy_shape();
        let n = shape.num_elements();
        let grad = self.flat.clone().narrow(0, self.offset, n).reshape(shape);
        self.offset += n;
        self.grads.register::<B::InnerBackend, D>(param.id, grad);
    }
}

/// Sum and sum of squares of every parameter, to check that ranks hold the same model.
pub fn param_checksum<B: Backend>(model: &CastleLm<B>) -> [f32; 2] {
    struct Sums<B: Backend>(Vec<Tensor<B, 1>>, Vec<Tensor<B, 1>>);
    impl<B: Backend> ModuleVisitor<B> for Sums<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let value = param.val();
            self.0.push(value.clone().sum());
            self.1.push(value.square().sum());
        }
    }
    let mut sums = Sums::<B>(vec![], vec![]);
    model.visit(&mut sums);
    let read = |parts: Vec<Tensor<B, 1>>| Tensor::cat(parts, 0).sum().into_scalar().elem::<f32>();
    [read(sums.0), read(sums.1)]
}

/// Fails unless every rank is at step `step` with the same parameters as rank 0 (at the start
/// and at the end of a run).
pub(crate) fn check_same_model<B: TrainBackend>(
    peer: &Peer,
    model: &CastleLm<B>,
    step: usize,
    device: &B::Device,
) -> Result<()> {
    let [sum, sum_sq] = param_checksum(model);
    let all =
        peer.gather::<B::InnerBackend>(&[step as f32, sum, sum_sq], "the model check", device)?;
    for (rank, row) in all.iter().enumerate() {
        if row != &all[0] {
            bail!(
                "rank {rank} is at step {} with parameter sums {:?}, rank 0 at step {} with {:?}: \
                 the ranks do not hold the same model. On several nodes run.dir must be storage \
                 that every node reads, so that all resume from the same checkpoint",
                row[0],
                &row[1..],
                all[0][0],
                &all[0][1..]
            );
        }
    }
    Ok(())
}
