//! The lookahead scores `S_U[t,i] = s qC_t . u_i^t` of one head, forward and backward, by the
//! exact chunked form (docs/castle.md, section 3) on `bs x bs` blocks, with no `L x L x d` buffer.
//!
//! Forward, one task per owner block `J`, walking the query blocks `I = J, J+1, ...` with a
//! running `C = C[J,I]^T` (`bs x d`, the partial lookahead keys of `J`'s owners):
//!
//! ```text
//! sig[J,K] = sigmoid(s Qu_J Ku_K^T) (.) Mu[J,K]                    K in J's band
//! C       += sig[J,I-1] Vu_{I-1}                                   (exclusive prefix sum)
//! S_U[I,J] = s Qc_I C^T + diag_I sig[J,I]^T,  diag_I = (s Qc_I Vu_I^T) (.) Mc
//! ```
//!
//! Backward, with `D = dLoss/dS_U`, one task per owner block `J` again. A suffix sum
//! `R = sum_{I>K} D[I,J]^T Qc_I` (`bs x d`) walks `K` downwards and a prefix sum `C` upwards:
//!
//! ```text
//! dQc_I   += s D[I,J] C[J,I]^T
//! dVu_K   += s sig[J,K]^T R
//! dsig     = s R Vu_K^T + D[K,J]^T diag_K,   dlogit = dsig (.) sig (1 - sig)
//! dQu_J   += s dlogit Ku_K               dKu_K += s dlogit^T Qu_J
//! F_K     += D[K,J] sig[J,K]
//! ```
//!
//! and then, once per block `K` (the gradient of `diag_K`, queries and positions in one block):
//!
//! ```text
//! dQc_K += s (F_K (.) Mc) Vu_K           dVu_K += s (F_K (.) Mc)^T Qc_K
//! ```
//!
//! (`Qc` here is the un-rotated query `qc_nope`; see `crate::rope`.) Every product is
//! `bs x d x bs` or `bs x bs x bs`, `O(L^2 d)` in all; under SWL `sig`, `dsig` and `F` exist only
//! for `K` in the band. `Ku^T` and `Vu^T` are transposed once per head, so that the products
//! with `Ku_K^T` and `Vu_K^T` read a factor `gemm` does not repack.

use rayon::prelude::*;

use super::blocks::{Blocking, Blocks};
use super::elem::Elem;
use super::gemm::{gemm, product, transposed, Mat, MatMut};
use super::parallel::sum_over_workers;
use super::simd::vectorized;

/// One head's lookahead inputs, each packed `g.padded() x d` (padded rows zero).
pub struct LookaheadInputs<'a, E> {
    pub qu: &'a [E],
    pub ku: &'a [E],
    pub vu: &'a [E],
    pub qc: &'a [E],
}

pub struct LookaheadGrads<E> {
    pub dqu: Vec<E>,
    pub dku: Vec<E>,
    pub dvu: Vec<E>,
    pub dqc: Vec<E>,
}

/// `diag_I = (s Qc_I Vu_I^T) (.) Mc` for every block `I`.
fn diagonals<E: Elem>(g: &Blocking, x: &LookaheadInputs<E>, vu_t: &[E]) -> Vec<Vec<E>> {
    let bs = g.bs;
    (0..g.n)
        .into_par_iter()
        .map(|i| {
            let mut a = product(g.scale(), g.block_rows(x.qc, i), g.block_cols(vu_t, i));
            for r in 0..bs {
                a[r * bs + r + 1..(r + 1) * bs].fill(E::zero());
            }
            a
        })
        .collect()
}

/// `sig[J,K] = sigmoid(s Qu_J Ku_K^T) (.) Mu[J,K]`.
fn sig_block<E: Elem>(g: &Blocking, qu: &[E], ku_t: &[E], j: usize, k: usize) -> Vec<E> {
    let mut sig = product(g.scale(), g.block_rows(qu, j), g.block_cols(ku_t, k));
    vectorized(
        #[inline(always)]
        || sig.iter_mut().for_each(|e| *e = E::sigmoid(*e)),
    );
    for (r, row) in sig.chunks_mut(g.bs).enumerate() {
        let keep = g.lookahead_columns(j, k, r);
        row[..keep.start].fill(E::zero());
        row[keep.end..].fill(E::zero());
    }
    sig
}

/// `C += sig[J,K] Vu_K`.
fn accumulate_keys<E: Elem>(
    g: &Blocking,
    x: &LookaheadInputs<E>,
    sig_jk: &[E],
    k: usize,
    c: &mut [E],
) {
    let vu = g.block_rows(x.vu, k);
    gemm(
        E::one(),
        g.square(sig_jk),
        vu,
        E::one(),
        MatMut::new(c, g.bs, g.d, g.d),
    );
}

/// What the backward pass reuses from the forward pass: the `sig` blocks of every owner's band
/// and `diag_I` of every block.
#[derive(Debug)]
pub struct LookaheadSaved<E> {
    sig: Blocks<E>,
    diag: Vec<Vec<E>>,
}

/// `S_U` (lower block triangle) and what the backward pass reuses.
pub fn forward<E: Elem>(g: &Blocking, x: &LookaheadInputs<E>) -> (Blocks<E>, LookaheadSaved<E>) {
    let (bs, d, n) = (g.bs, g.d, g.n);
    let (ku_t, vu_t) = (
        transposed(x.ku, g.padded(), d),
        transposed(x.vu, g.padded(), d),
    );
    let diag = diagonals(g, x, &vu_t);
    let columns: Vec<_> = (0..n)
        .into_par_iter()
        .map(|j| {
            let sig: Vec<Vec<E>> = (j..n)
                .take_while(|&k| g.in_band(j, k))
                .map(|k| sig_block(g, x.qu, &ku_t, j, k))
                .collect();
            let mut c = vec![E::zero(); bs * d];
            let column: Vec<Vec<E>> = (j..n)
                .map(|i| {
                    let diag_i = g.square(&diag[i]);
                    if i == j {
                        // `C[J,J] = 0`: the diagonal block is its `diag` term alone.
                        return product(E::one(), diag_i, g.square(&sig[0]).t());
                    }
                    if let Some(sig_jk) = sig.get(i - 1 - j) {
                        accumulate_keys(g, x, sig_jk, i - 1, &mut c);
                    }
                    let cm = Mat::new(&c, bs, d, d);
                    let mut su = product(g.scale(), g.block_rows(x.qc, i), cm.t());
                    if let Some(sig_ji) = sig.get(i - j) {
                        let (sg, su_m) = (g.square(sig_ji), MatMut::new(&mut su, bs, bs, bs));
                        gemm(E::one(), diag_i, sg.t(), E::one(), su_m);
                    }
                    su
                })
                .collect();
            (sig, column)
        })
        .collect();
    let (mut su, mut sig) = (Blocks::new(n), Blocks::new(n));
    for (j, (sig_row, column)) in columns.into_iter().enumerate() {
        for (k, block) in sig_row.into_iter().enumerate() {
            sig.set(j, j + k, block);
        }
        for (i, block) in column.into_iter().enumerate() {
            su.set(j + i, j, block);
        }
    }
    (su, LookaheadSaved { sig, diag })
}

/// One worker's share of the backward pass: the gradients and `F_K = sum_J D[K,J] sig[J,K]`
/// (`n` blocks `bs x bs`).
struct Partial<E> {
    grads: LookaheadGrads<E>,
    f: Vec<E>,
}

impl<E: Elem> Partial<E> {
    fn zeros(g: &Blocking) -> Self {
        let len = g.padded() * g.d;
        Self {
            grads: LookaheadGrads {
                dqu: vec![E::zero(); len],
                dku: vec![E::zero(); len],
                dvu: vec![E::zero(); len],
                dqc: vec![E::zero(); len],
            },
            f: vec![E::zero(); g.n * g.bs * g.bs],
        }
    }

    fn merge(mut self, other: Self) -> Self {
        let g = &mut self.grads;
        for (a, b) in [
            (&mut g.dqu, &other.grads.dqu),
            (&mut g.dku, &other.grads.dku),
            (&mut g.dvu, &other.grads.dvu),
            (&mut g.dqc, &other.grads.dqc),
            (&mut self.f, &other.f),
        ] {
            a.iter_mut().zip(b).for_each(|(x, &y)| *x = *x + y);
        }
        self
    }
}

/// Gradients of the four lookahead inputs from `d_su = dLoss/dS_U` and the forward's state, the
/// owner blocks shared among `workers` accumulators.
pub fn backward<E: Elem>(
    g: &Blocking,
    workers: usize,
    x: &LookaheadInputs<E>,
    saved: &LookaheadSaved<E>,
    d_su: &Blocks<E>,
) -> LookaheadGrads<E> {
    let (bs, d, n) = (g.bs, g.d, g.n);
    let s: E = g.scale();
    let LookaheadSaved { sig, diag } = saved;
    let vu_t = transposed(x.vu, g.padded(), d);
    let Partial { mut grads, mut f } = sum_over_workers(
        workers,
        n,
        || Partial::zeros(g),
        |Partial {
             grads: acc,
             f: f_sum,
         },
         j| {
            let qu_j = g.block_rows(x.qu, j);
            let mut r_sum = vec![E::zero(); bs * d];
            let mut dsig = vec![E::zero(); bs * bs];
            for k in (j..n).rev() {
                let d_kj = g.square(d_su.get(k, j));
                let qc_k = g.block_rows(x.qc, k);
                if g.in_band(j, k) {
                    let sg = g.square(sig.get(j, k));
                    // dsig = s R Vu_K^T + D^T diag_K, then dlogit = dsig (.) sig (1 - sig) in
                    // place. R sums the query blocks after `k`: none after the last one.
                    let r_is_zero = k + 1 == n;
                    let r_m = Mat::new(&r_sum, bs, d, d);
                    if !r_is_zero {
                        gemm(s, sg.t(), r_m, E::one(), g.block_rows_mut(&mut acc.dvu, k));
                        gemm(
                            s,
                            r_m,
                            g.block_cols(&vu_t, k),
                            E::zero(),
                            MatMut::new(&mut dsig, bs, bs, bs),
                        );
                    }
                    let diag_k = g.square(&diag[k]);
                    gemm(
                        E::one(),
                        d_kj.t(),
                        diag_k,
                        if r_is_zero { E::zero() } else { E::one() },
                        MatMut::new(&mut dsig, bs, bs, bs),
                    );
                    let sig_jk = sig.get(j, k);
                    vectorized(
                        #[inline(always)]
                        || {
                            for (e, &p) in dsig.iter_mut().zip(sig_jk) {
                                *e = *e * p * (E::one() - p);
                            }
                        },
                    );
                    let dl = g.square(&dsig);
                    gemm(
                        s,
                        dl,
                        g.block_rows(x.ku, k),
                        E::one(),
                        g.block_rows_mut(&mut acc.dqu, j),
                    );
                    gemm(s, dl.t(), qu_j, E::one(), g.block_rows_mut(&mut acc.dku, k));
                    let f_k = &mut f_sum[k * bs * bs..(k + 1) * bs * bs];
                    gemm(E::one(), d_kj, sg, E::one(), MatMut::new(f_k, bs, bs, bs));
                }
                if k > j {
                    gemm(
                        E::one(),
                        d_kj.t(),
                        qc_k,
                        E::one(),
                        MatMut::new(&mut r_sum, bs, d, d),
                    );
                }
            }
            let mut c = vec![E::zero(); bs * d];
            for i in j + 1..n {
                if g.in_band(j, i - 1) {
                    accumulate_keys(g, x, sig.get(j, i - 1), i - 1, &mut c);
                }
                let d_ij = g.square(d_su.get(i, j));
                gemm(
                    s,
                    d_ij,
                    Mat::new(&c, bs, d, d),
                    E::one(),
                    g.block_rows_mut(&mut acc.dqc, i),
                );
            }
        },
        Partial::merge,
    );
    let blocks = grads
        .dqc
        .par_chunks_mut(bs * d)
        .zip(grads.dvu.par_chunks_mut(bs * d));
    blocks
        .zip(f.par_chunks_mut(bs * bs))
        .enumerate()
        .for_each(|(k, ((dqc_k, dvu_k), f_k))| {
            for r in 0..bs {
                f_k[r * bs + r + 1..(r + 1) * bs].fill(E::zero());
            }
            let (f_k, qc_k, vu_k) = (g.square(f_k), g.block_rows(x.qc, k), g.block_rows(x.vu, k));
            gemm(s, f_k, vu_k, E::one(), MatMut::new(dqc_k, bs, d, d));
            gemm(s, f_k.t(), qc_k, E::one(), MatMut::new(dvu_k, bs, d, d));
        });
    grads
}
