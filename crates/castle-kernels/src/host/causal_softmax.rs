//! Blocked causal softmax attention for one head, forward and backward, with CASTLE's lookahead
//! term as an optional bias: logits `s q_t . k_i - SiLU(S_U[t,i])` (eq. 5-8), or plain
//! `s q_t . k_i` for the baseline.
//!
//! One task per query block `I` builds that block's `bs x (I+1) bs` logits (blocks past the
//! diagonal are never touched), applies the softmax in place and multiplies by `V`. The
//! probabilities and `SiLU'(S_U)` are kept for the backward pass: on CPU memory is plentiful
//! (`L^2 / 2` numbers each per head) and recomputing them would cost one product and three
//! exponentials per entry. The backward pass accumulates `dK`, `dV` per worker.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::blocks::{Blocking, Blocks};
use super::elem::Elem;
use super::gemm::{gemm, product, transposed, Mat, MatMut};
use super::parallel::sum_over_workers;
use super::parallel::written;
use super::simd::vectorized;
use super::softmax::softmax_in_place;

/// What the forward pass keeps for the backward pass, rows padded to `g.padded()`.
#[derive(Debug, Clone)]
pub struct SoftmaxSaved<E> {
    pub out: Vec<E>,
    /// Per query block `I`, the probabilities `P[I, 0..(I+1) bs]`, `bs x (I+1) bs`.
    probs: Vec<Vec<E>>,
    /// `SiLU'(S_U)` blocks (lower block triangle) when there was a lookahead term.
    silu_grad: Option<Blocks<E>>,
}

/// Gradients of one head; `d_lookahead[I, J] = dLoss/dS_U` (lower block triangle) when
/// the forward pass had a lookahead term.
pub struct SoftmaxGrads<E> {
    pub dq: Vec<E>,
    pub dk: Vec<E>,
    pub dv: Vec<E>,
    pub d_lookahead: Option<Blocks<E>>,
}

/// `z -= SiLU(S_U)` on block `(I, jb)` of query block `I`'s logits `z` (`bs` rows), given that
/// block of `S_U`, which becomes the block's `SiLU'(S_U) = sigmoid (1 + x (1 - sigmoid))` in
/// place (the backward pass needs that, not `S_U`).
#[inline(always)]
fn subtract_silu<E: Elem>(z: &mut [E], su: &mut [E], jb: usize, bs: usize) {
    let w = z.len() / bs;
    for (r, su) in su.chunks_exact_mut(bs).enumerate() {
        let row = &mut z[r * w + jb * bs..r * w + (jb + 1) * bs];
        for (zc, x) in row.iter_mut().zip(su) {
            let sg = E::sigmoid(*x);
            *zc = *zc - *x * sg;
            *x = sg * (E::one() + *x * (E::one() - sg));
        }
    }
}

/// The causal mask and softmax, in place, of query block `I`'s logits `z` (`bs` rows).
#[inline(always)]
fn softmax_rows<E: Elem>(z: &mut [E], i: usize, bs: usize) {
    let w = z.len() / bs;
    for (r, row) in z.chunks_mut(w).enumerate() {
        row[i * bs + r + 1..].fill(E::zero()); // causal mask
        softmax_in_place(&mut row[..i * bs + r + 1]);
    }
}

/// Forward pass of one head: `out = softmax(logits) V`. The lookahead term's blocks are
/// turned into the saved `SiLU'(S_U)` in place.
pub fn forward<E: Elem>(
    g: &Blocking,
    q: &[E],
    k: &[E],
    v: &[E],
    lookahead: Option<Blocks<E>>,
) -> SoftmaxSaved<E> {
    let (bs, d) = (g.bs, g.d);
    // `K^T` packed once (`transposed`), not repacked by every query block's product.
    let rows = k.len() / d;
    let k_t = transposed(k, rows, d);
    let has_lookahead = lookahead.is_some();
    let su_rows: Vec<_> = match lookahead {
        Some(su) => su.into_rows().into_iter().map(Some).collect(),
        None => (0..g.n).map(|_| None).collect(),
    };
    let blocks: Vec<_> = su_rows
        .into_par_iter()
        .enumerate()
        .map(|(i, mut su_row)| {
            let w = (i + 1) * bs;
            let q_i = Mat::rows(q, i * bs, bs, d);
            let mut z = product(g.scale(), q_i, Mat::new(&k_t, d, w, rows));
            vectorized(
                #[inline(always)]
                || {
                    if let Some(su_row) = &mut su_row {
                        for (jb, su) in su_row[..=i].iter_mut().enumerate() {
                            subtract_silu(&mut z, su, jb, bs);
                        }
                    }
                    softmax_rows(&mut z, i, bs);
                },
            );
            let out = product(E::one(), Mat::new(&z, bs, w, w), Mat::rows(v, 0, w, d));
            (out, z, su_row)
        })
        .collect();
    let mut out = Vec::with_capacity(g.padded() * d);
    let mut probs = Vec::with_capacity(g.n);
    let mut silu_grad = has_lookahead.then(|| Blocks::new(g.n));
    for (i, (o, p, grads)) in blocks.into_iter().enumerate() {
        out.extend(o);
        probs.push(p);
        if let (Some(sg), Some(grads)) = (&mut silu_grad, grads) {
            for (jb, block) in grads.into_iter().enumerate().take(i + 1) {
                sg.set(i, jb, block);
            }
        }
    }
    SoftmaxSaved {
        out,
        probs,
        silu_grad,
    }
}

/// One worker's share of the backward pass.
struct Partial<E> {
    dq: Vec<E>,
    dk: Vec<E>,
    dv: Vec<E>,
    d_lookahead_rows: Vec<(usize, Vec<Vec<E>>)>,
    /// `dP`, then `dZ`, of the query block in hand; reused from block to block.
    dz: Vec<E>,
}

impl<E: Elem> Partial<E> {
    fn zeros(len: usize) -> Self {
        Self {
            dq: vec![E::zero(); len],
            dk: vec![E::zero(); len],
            dv: vec![E::zero(); len],
            d_lookahead_rows: Vec::new(),
            dz: Vec::new(),
        }
    }

    fn merge(mut self, other: Self) -> Self {
        for (a, b) in [
            (&mut self.dq, &other.dq),
            (&mut self.dk, &other.dk),
            (&mut self.dv, &other.dv),
        ] {
            a.iter_mut().zip(b).for_each(|(x, &y)| *x = *x + y);
        }
        self.d_lookahead_rows.extend(other.d_lookahead_rows);
        self
    }
}

/// Backward pass of one head, given `d_out` (padded rows zero), the query blocks shared among
/// `workers` accumulators.
pub fn backward<E: Elem>(
    g: &Blocking,
    workers: usize,
    q: &[E],
    k: &[E],
    v: &[E],
    saved: &SoftmaxSaved<E>,
    d_out: &[E],
) -> SoftmaxGrads<E> {
    let (bs, d) = (g.bs, g.d);
    let s: E = g.scale();
    let len = g.padded() * d;
    // `V^T` packed once, as `K^T` in the forward pass.
    let rows = v.len() / d;
    let v_t = transposed(v, rows, d);
    let partial = sum_over_workers(
        workers,
        g.n,
        || Partial::zeros(len),
        |acc, i| {
            let w = (i + 1) * bs;
            let p = &saved.probs[i];
            // dP = dO_I V^T, then dZ = P (.) (dP - rowsum(dO (.) O)).
            let dz = &mut acc.dz;
            dz.resize(bs * w, E::zero()); // overwritten by the product below
            let d_out_i = Mat::rows(d_out, i * bs, bs, d);
            gemm(
                E::one(),
                d_out_i,
                Mat::new(&v_t, d, w, rows),
                E::zero(),
                MatMut::new(dz.as_mut_slice(), bs, w, w),
            );
            vectorized(
                #[inline(always)]
                || {
                    let block = i * bs * d..(i + 1) * bs * d;
                    let o = saved.out[block.clone()].chunks_exact(d);
                    let rows = dz.chunks_exact_mut(w).zip(p.chunks_exact(w));
                    for ((dz, p), (o, dor)) in rows.zip(o.zip(d_out[block].chunks_exact(d))) {
                        let delta = o.iter().zip(dor).fold(E::zero(), |a, (&x, &y)| a + x * y);
                        for (dz, &p) in dz.iter_mut().zip(p) {
                            *dz = p * (*dz - delta);
                        }
                    }
                },
            );
            let (p, dz_m) = (Mat::new(p, bs, w, w), Mat::new(dz, bs, w, w));
            let k_all = Mat::rows(k, 0, w, d);
            gemm(
                s,
                dz_m,
                k_all,
                E::zero(),
                MatMut::rows(&mut acc.dq, i * bs, bs, d),
            );
            gemm(
                E::one(),
                p.t(),
                d_out_i,
                E::one(),
                MatMut::rows(&mut acc.dv, 0, w, d),
            );
            let q_i = Mat::rows(q, i * bs, bs, d);
            gemm(
                s,
                dz_m.t(),
                q_i,
                E::one(),
                MatMut::rows(&mut acc.dk, 0, w, d),
            );
            if let Some(silu_grad) = &saved.silu_grad {
                // dS_U = -dZ (.) SiLU'(S_U), block by block along the row.
                let mut row = Vec::with_capacity(i + 1);
                vectorized(
                    #[inline(always)]
                    || {
                        for jb in 0..=i {
                            let cols = jb * bs..(jb + 1) * bs;
                            let grads = silu_grad.get(i, jb).chunks_exact(bs);
                            // SAFETY: the `bs` rows of `bs` cover the block.
                            let block = unsafe {
                                written(
                                    bs * bs,
                                    #[inline(always)]
                                    |out: &mut [MaybeUninit<E>]| {
                                        let rows = out.chunks_exact_mut(bs).zip(dz.chunks_exact(w));
                                        for ((out, dz), grad) in rows.zip(grads) {
                                            let terms =
                                                out.iter_mut().zip(&dz[cols.clone()]).zip(grad);
                                            for ((o, &g), &sg) in terms {
                                                o.write(-g * sg);
                                            }
                                        }
                                    },
                                )
                            };
                            row.push(block);
                        }
                    },
                );
                acc.d_lookahead_rows.push((i, row));
            }
        },
        Partial::merge,
    );
    let d_lookahead = saved.silu_grad.as_ref().map(|_| {
        let mut blocks = Blocks::new(g.n);
        for (i, row) in partial.d_lookahead_rows {
            for (jb, block) in row.into_iter().enumerate() {
                blocks.set(i, jb, block);
            }
        }
        blocks
    });
    SoftmaxGrads {
        dq: partial.dq,
        dk: partial.dk,
        dv: partial.dv,
        d_lookahead,
    }
}
