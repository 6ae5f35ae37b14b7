//! Fused CPU kernels for both attentions, forward and backward, on host memory.
//!
//! burn runs every elementwise step of an `L x L` attention (masks, sigmoid, SiLU, softmax and
//! their gradients) as a separate pass over memory, so its attention reaches a fraction of the
//! machine's matrix-multiply rate (`docs/benchmarks.md`). These kernels instead walk `bs x bs`
//! blocks: blocks above the causal diagonal (and, under SWL, outside the band) are never
//! computed, the elementwise work happens in the same loop that consumes it, and every product
//! is a small GEMM (`matrixmultiply`). Blocks run in parallel on rayon's pool.
//!
//! - [`causal_softmax`]: `softmax(s Q K^T - SiLU(S_U)) V`, or the baseline without `S_U`.
//! - [`lookahead`]: CASTLE's lookahead scores `S_U` by the exact chunked form.
//! - [`backend`]: the [`AttentionBackend`] trait that puts them behind burn tensors, with their
//!   own backward pass registered in burn's autodiff graph.
//!
//! The functions here take all heads packed `[heads, len, d]`; each head is zero-padded to a
//! whole number of blocks and cropped back. The burn tensor-op forms in `crate::attention` are
//! the references these kernels are tested against.

pub mod backend;
mod blocks;
pub mod causal_softmax;
pub mod gemm;
pub mod lookahead;

pub use backend::{AttentionBackend, TrainBackend};
pub use gemm::Elem;

use rayon::prelude::*;

use blocks::{Blocking, Blocks};
use causal_softmax::SoftmaxSaved;
use lookahead::LookaheadInputs;

/// The layout of every array here: `heads` (batch times heads) packed `len x d` matrices.
#[derive(Debug, Clone, Copy)]
pub struct HeadsShape {
    pub heads: usize,
    pub len: usize,
    pub d: usize,
}

/// The seven CASTLE inputs of all heads, in [`crate::attention::CastleHeads`]' order; also
/// used for their gradients.
#[derive(Debug, Clone)]
pub struct CastleHost<E> {
    pub qu: Vec<E>,
    pub ku: Vec<E>,
    pub vu: Vec<E>,
    pub qc: Vec<E>,
    pub kc: Vec<E>,
    pub vc: Vec<E>,
    pub qc_nope: Vec<E>,
}

/// What a forward pass keeps per head for its backward pass.
#[derive(Debug)]
pub struct CastleSaved<E> {
    /// Per head, the lookahead weights `sig` and the softmax's saved state.
    heads: Vec<(Blocks<E>, SoftmaxSaved<E>)>,
}

#[derive(Debug)]
pub struct CausalSaved<E> {
    heads: Vec<SoftmaxSaved<E>>,
}

/// Sums `f`'s contributions over items `0..n` with one accumulator per rayon thread: item `i`
/// goes to worker `i % T`, which balances items whose cost grows or shrinks with `i`, and keeps
/// the number of `O(L d)` accumulators (and their allocation) at `T`.
fn sum_over_workers<A: Send>(
    n: usize,
    init: impl Fn() -> A + Sync,
    f: impl Fn(&mut A, usize) + Sync,
    merge: impl Fn(A, A) -> A + Sync + Send,
) -> A {
    let workers = rayon::current_num_threads().clamp(1, n.max(1));
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

/// Head `h` of `x`, zero-padded to `g.padded()` rows.
fn head<E: Elem>(x: &[E], h: usize, g: &Blocking) -> Vec<E> {
    let mut out = x[h * g.len * g.d..(h + 1) * g.len * g.d].to_vec();
    out.resize(g.padded() * g.d, E::zero());
    out
}

/// Per-head results, `N` per head, each cropped to `len` rows and packed back to
/// `[heads, len, d]`.
fn pack<E: Elem, const N: usize>(g: &Blocking, per_head: Vec<[Vec<E>; N]>) -> [Vec<E>; N] {
    let size = per_head.len() * g.len * g.d;
    let mut packed: [Vec<E>; N] = std::array::from_fn(|_| Vec::with_capacity(size));
    for results in per_head {
        for (all, one) in packed.iter_mut().zip(results) {
            all.extend_from_slice(&one[..g.len * g.d]);
        }
    }
    packed
}

/// CASTLE attention output `[heads, len, d]` (eq. 3-8; eq. 9 with a window).
pub fn castle_forward<E: Elem>(
    x: &CastleHost<E>,
    shape: HeadsShape,
    window: Option<usize>,
    block: usize,
) -> (Vec<E>, CastleSaved<E>) {
    let g = Blocking::new(shape.len, shape.d, block, window);
    let heads: Vec<_> = (0..shape.heads)
        .into_par_iter()
        .map(|h| {
            let [qu, ku, vu, qc] = [&x.qu, &x.ku, &x.vu, &x.qc_nope].map(|t| head(t, h, &g));
            let (su, sig) = lookahead::forward(
                &g,
                &LookaheadInputs {
                    qu: &qu,
                    ku: &ku,
                    vu: &vu,
                    qc: &qc,
                },
            );
            let [qc, kc, vc] = [&x.qc, &x.kc, &x.vc].map(|t| head(t, h, &g));
            let softmax = causal_softmax::forward(&g, &qc, &kc, &vc, Some(&su));
            (sig, softmax)
        })
        .collect();
    let [out] = pack(&g, heads.iter().map(|(_, s)| [s.out.clone()]).collect());
    (out, CastleSaved { heads })
}

/// Gradients of the seven inputs given `d_out = dLoss/d(output)`, `[heads, len, d]`.
pub fn castle_backward<E: Elem>(
    x: &CastleHost<E>,
    shape: HeadsShape,
    window: Option<usize>,
    block: usize,
    saved: &CastleSaved<E>,
    d_out: &[E],
) -> CastleHost<E> {
    let g = Blocking::new(shape.len, shape.d, block, window);
    let grads: Vec<[Vec<E>; 7]> = saved
        .heads
        .par_iter()
        .enumerate()
        .map(|(h, (sig, softmax))| {
            let [qc, kc, vc, d_out] = [&x.qc, &x.kc, &x.vc, d_out].map(|t| head(t, h, &g));
            let sm = causal_softmax::backward(&g, &qc, &kc, &vc, softmax, &d_out);
            let d_su = sm
                .d_lookahead
                .expect("the forward pass had a lookahead term");
            let [qu, ku, vu, qc] = [&x.qu, &x.ku, &x.vu, &x.qc_nope].map(|t| head(t, h, &g));
            let la = lookahead::backward(
                &g,
                &LookaheadInputs {
                    qu: &qu,
                    ku: &ku,
                    vu: &vu,
                    qc: &qc,
                },
                sig,
                &d_su,
            );
            [la.dqu, la.dku, la.dvu, sm.dq, sm.dk, sm.dv, la.dqc]
        })
        .collect();
    let [qu, ku, vu, qc, kc, vc, qc_nope] = pack(&g, grads);
    CastleHost {
        qu,
        ku,
        vu,
        qc,
        kc,
        vc,
        qc_nope,
    }
}

/// Baseline causal softmax attention output `[heads, len, d]`.
pub fn causal_forward<E: Elem>(
    [q, k, v]: [&[E]; 3],
    shape: HeadsShape,
    block: usize,
) -> (Vec<E>, CausalSaved<E>) {
    let g = Blocking::new(shape.len, shape.d, block, None);
    let heads: Vec<_> = (0..shape.heads)
        .into_par_iter()
        .map(|h| {
            let [q, k, v] = [q, k, v].map(|t| head(t, h, &g));
            causal_softmax::forward(&g, &q, &k, &v, None)
        })
        .collect();
    let [out] = pack(&g, heads.iter().map(|s| [s.out.clone()]).collect());
    (out, CausalSaved { heads })
}

/// Gradients `[dq, dk, dv]` of the baseline attention.
pub fn causal_backward<E: Elem>(
    [q, k, v]: [&[E]; 3],
    shape: HeadsShape,
    block: usize,
    saved: &CausalSaved<E>,
    d_out: &[E],
) -> [Vec<E>; 3] {
    let g = Blocking::new(shape.len, shape.d, block, None);
    let grads: Vec<[Vec<E>; 3]> = saved
        .heads
        .par_iter()
        .enumerate()
        .map(|(h, softmax)| {
            let [q, k, v, d_out] = [q, k, v, d_out].map(|t| head(t, h, &g));
            let sm = causal_softmax::backward(&g, &q, &k, &v, softmax, &d_out);
            [sm.dq, sm.dk, sm.dv]
        })
        .collect();
    pack(&g, grads)
}
