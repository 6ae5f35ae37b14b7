//! Fused CPU kernels for both attentions, forward and backward, on host memory.
//!
//! burn runs every elementwise step of an `L x L` attention (masks, sigmoid, SiLU, softmax and
//! their gradients) as a separate pass over memory, so its attention reaches a fraction of the
//! machine's matrix-multiply rate (`docs/benchmarks.md`). These kernels instead walk `bs x bs`
//! blocks: blocks above the causal diagonal (and, under SWL, outside the band) are never
//! computed, the elementwise work happens in the same loop that consumes it, and every product
//! is a small single-threaded GEMM (the `gemm` crate). Blocks run in parallel on rayon's pool.
//!
//! - [`causal_softmax`]: `softmax(s Q K^T - SiLU(S_U)) V`, or the baseline without `S_U`.
//! - [`lookahead`]: CASTLE's lookahead scores `S_U` by the exact chunked form.
//! - [`backend`]: the [`AttentionBackend`] trait that puts them behind burn tensors, with their
//!   own backward pass registered in burn's autodiff graph.
//! - [`device`]: the same registration for device kernels; `cube` (features `wgpu`, `cuda`)
//!   holds the CubeCL ones, FlashAttention-style, for burn's `CubeBackend` on any runtime.
//!
//! - [`host_op`]: the same for the row-wise ops around attention ([`rmsnorm`], [`swiglu`],
//!   [`cross_entropy`]): one parallel pass each way instead of burn's single-threaded op chain;
//!   [`lm_loss`] fuses the LM head's product into the cross-entropy, a chunk of rows at a time,
//!   so training never holds the `tokens x vocab` logits.
//! - [`linear`]: the layers' projections as such ops, so that no product runs through burn-flex's
//!   matmul, whose output allocation is two serial passes on the calling thread.
//! - [`simd`]: runs their elementwise loops at the CPU's widest SIMD (AVX-512, AVX2), chosen at
//!   run time.
//! - [`adamw`]: the optimizer's AdamW update as one parallel pass per parameter tensor.
//! - [`heads`]: an attention kernel as one such op from its layer's projection to its merged
//!   output, splitting heads, RoPE and merging heads included.
//!
//! [`HostKernel`] is what a kernel offers: [`Castle`] and [`Causal`] take all heads packed
//! `[heads, len, d]`; each head is zero-padded to a
//! whole number of blocks and cropped back. The burn tensor-op forms in `crate::attention` are
//! the references these kernels are tested against.

pub mod adamw;
pub mod backend;
pub(crate) mod blocks;
pub mod causal_softmax;
pub mod cross_entropy;
#[cfg(feature = "cube")]
pub mod cube;
pub mod device;
pub mod gemm;
pub mod heads;
pub mod host_array;
pub mod host_op;
pub mod linear;
pub mod lm_loss;
pub mod lookahead;
pub mod rmsnorm;
pub mod simd;
pub mod swiglu;

pub use backend::{AttentionBackend, TrainBackend};
pub use device::DeviceAttention;
pub use gemm::Elem;

use std::borrow::Cow;
use std::fmt::Debug;
use std::mem::MaybeUninit;

use rayon::prelude::*;

use blocks::Blocking;
use causal_softmax::SoftmaxSaved;
use lookahead::{LookaheadInputs, LookaheadSaved};

/// The layout of every array here: `heads` (batch times heads) packed `len x d` matrices.
#[derive(Debug, Clone, Copy)]
pub struct HeadsShape {
    pub heads: usize,
    pub len: usize,
    pub d: usize,
}

/// A fused attention on host memory: `N` inputs and one output, each `[heads, len, d]`.
pub trait HostKernel<const N: usize>: Copy + Send + Sync + Debug + 'static {
    /// What a forward pass keeps for its backward pass.
    type Saved<E: Elem>: Send + Sync + Debug;

    fn forward<E: Elem>(&self, x: [&[E]; N], shape: HeadsShape) -> (Vec<E>, Self::Saved<E>);

    /// Gradients of the `N` inputs given `d_out = dLoss/d(output)`.
    fn backward<E: Elem>(
        &self,
        x: [&[E]; N],
        shape: HeadsShape,
        saved: &Self::Saved<E>,
        d_out: &[E],
    ) -> [Vec<E>; N];
}

/// CASTLE attention (eq. 3-8; eq. 9 with a window). Inputs in
/// [`crate::attention::CastleHeads`]' order: `qu, ku, vu, qc, kc, vc, qc_nope`.
#[derive(Debug, Clone, Copy)]
pub struct Castle {
    pub window: Option<usize>,
    pub block: usize,
}

/// Causal softmax attention `softmax(s Q K^T + causal mask) V`. Inputs `q, k, v`.
#[derive(Debug, Clone, Copy)]
pub struct Causal {
    pub block: usize,
}

/// Per head, what the lookahead and the softmax forward passes keep.
#[derive(Debug)]
pub struct CastleSaved<E>(Vec<(LookaheadSaved<E>, SoftmaxSaved<E>)>);

/// Sums `f`'s contributions over items `0..n` with one accumulator per worker: item `i` goes to
/// worker `i % workers`, which balances items whose cost grows or shrinks with `i`, and keeps the
/// number of `O(L d)` accumulators (their zero-fill and their merge) at `workers`.
fn sum_over_workers<A: Send>(
    workers: usize,
    n: usize,
    init: impl Fn() -> A + Sync,
    f: impl Fn(&mut A, usize) + Sync,
    merge: impl Fn(A, A) -> A + Sync + Send,
) -> A {
    let workers = workers.clamp(1, n.max(1));
    (0..workers)
        .into_par_iter()
        .map(|w| {
            let mut acc = init();
            (w..n).step_by(workers).for_each(|i| f(&mut acc, i));
            acc
        })
        .reduce_with(merge)
        .expect("at least one worker")
}

/// Workers per head for a backward pass over `heads` heads that already run in parallel: one
/// when the heads alone share out evenly over rayon's threads (no per-worker accumulators to
/// zero and merge), else one per thread, so that idle threads can take a share of the last heads.
fn workers_per_head(heads: usize) -> usize {
    let threads = rayon::current_num_threads();
    if heads.is_multiple_of(threads) {
        1
    } else {
        threads
    }
}

/// Head `h` of `x`, zero-padded to `g.padded()` rows: borrowed when `len` is a whole number
/// of blocks, a padded copy otherwise.
fn head<'a, E: Elem>(x: &'a [E], h: usize, g: &Blocking) -> Cow<'a, [E]> {
    let rows = &x[h * g.len * g.d..(h + 1) * g.len * g.d];
    if g.padded() == g.len {
        return Cow::Borrowed(rows);
    }
    let mut out = rows.to_vec();
    out.resize(g.padded() * g.d, E::zero());
    Cow::Owned(out)
}

/// Per-head results, `N` per head, each cropped to `len` rows and packed back to
/// `[heads, len, d]`, one head per parallel chunk.
fn pack<E: Elem, T: AsRef<[E]> + Sync, const N: usize>(
    g: &Blocking,
    per_head: &[[T; N]],
) -> [Vec<E>; N] {
    let size = g.len * g.d;
    let copy = |h: usize, chunks: [&mut [MaybeUninit<E>]; N]| {
        for (chunk, one) in chunks.into_iter().zip(&per_head[h]) {
            chunk.write_copy_of_slice(&one.as_ref()[..size]);
        }
    };
    // SAFETY: `copy` writes every element of head `h`'s chunk of each output.
    unsafe { host_op::written_in_chunks(per_head.len() * size, size, copy) }
}

impl HostKernel<7> for Castle {
    type Saved<E: Elem> = CastleSaved<E>;

    fn forward<E: Elem>(&self, x: [&[E]; 7], shape: HeadsShape) -> (Vec<E>, CastleSaved<E>) {
        let g = Blocking::new(shape.len, shape.d, self.block, self.window);
        let heads: Vec<_> = (0..shape.heads)
            .into_par_iter()
            .map(|h| {
                let [qu, ku, vu, qc, kc, vc, qc_nope] = x.map(|t| head(t, h, &g));
                let la = LookaheadInputs {
                    qu: &qu,
                    ku: &ku,
                    vu: &vu,
                    qc: &qc_nope,
                };
                let (su, la_saved) = lookahead::forward(&g, &la);
                (
                    la_saved,
                    causal_softmax::forward(&g, &qc, &kc, &vc, Some(su)),
                )
            })
            .collect();
        let outs: Vec<_> = heads.iter().map(|(_, s)| [s.out.as_slice()]).collect();
        let [out] = pack(&g, &outs);
        (out, CastleSaved(heads))
    }

    fn backward<E: Elem>(
        &self,
        x: [&[E]; 7],
        shape: HeadsShape,
        saved: &CastleSaved<E>,
        d_out: &[E],
    ) -> [Vec<E>; 7] {
        let g = Blocking::new(shape.len, shape.d, self.block, self.window);
        let workers = workers_per_head(shape.heads);
        let grads: Vec<[Vec<E>; 7]> = saved
            .0
            .par_iter()
            .enumerate()
            .map(|(h, (la_saved, softmax))| {
                let [qu, ku, vu, qc, kc, vc, qc_nope] = x.map(|t| head(t, h, &g));
                let d_out = head(d_out, h, &g);
                let sm = causal_softmax::backward(&g, workers, &qc, &kc, &vc, softmax, &d_out);
                let d_su = sm
                    .d_lookahead
                    .expect("the forward pass had a lookahead term");
                let la = LookaheadInputs {
                    qu: &qu,
                    ku: &ku,
                    vu: &vu,
                    qc: &qc_nope,
                };
                let la = lookahead::backward(&g, workers, &la, la_saved, &d_su);
                [la.dqu, la.dku, la.dvu, sm.dq, sm.dk, sm.dv, la.dqc]
            })
            .collect();
        pack(&g, &grads)
    }
}

impl HostKernel<3> for Causal {
    type Saved<E: Elem> = Vec<SoftmaxSaved<E>>;

    fn forward<E: Elem>(&self, x: [&[E]; 3], shape: HeadsShape) -> (Vec<E>, Vec<SoftmaxSaved<E>>) {
        let g = Blocking::new(shape.len, shape.d, self.block, None);
        let heads: Vec<_> = (0..shape.heads)
            .into_par_iter()
            .map(|h| {
                let [q, k, v] = x.map(|t| head(t, h, &g));
                causal_softmax::forward(&g, &q, &k, &v, None)
            })
            .collect();
        let outs: Vec<_> = heads.iter().map(|s| [s.out.as_slice()]).collect();
        let [out] = pack(&g, &outs);
        (out, heads)
    }

    fn backward<E: Elem>(
        &self,
        x: [&[E]; 3],
        shape: HeadsShape,
        saved: &Vec<SoftmaxSaved<E>>,
        d_out: &[E],
    ) -> [Vec<E>; 3] {
        let g = Blocking::new(shape.len, shape.d, self.block, None);
        let workers = workers_per_head(shape.heads);
        let grads: Vec<[Vec<E>; 3]> = saved
            .par_iter()
            .enumerate()
            .map(|(h, softmax)| {
                let [q, k, v] = x.map(|t| head(t, h, &g));
                let d_out = head(d_out, h, &g);
                let sm = causal_softmax::backward(&g, workers, &q, &k, &v, softmax, &d_out);
                [sm.dq, sm.dk, sm.dv]
            })
            .collect();
        pack(&g, &grads)
    }
}
