//! The LM head and its softmax cross-entropy fused: per row `nll = logsumexp(x W^T) - (x W^T)[t]`
//! from the final hidden state `x: [tokens, d]` and the head `W: [vocab, d]`, a chunk of rows at
//! a time, so the `tokens x vocab` logits never exist in the forward pass: each chunk's logits
//! are one small GEMM into a per-worker buffer, reduced to the row's log-sum-exp, which is all
//! that is kept. The backward pass recomputes them chunk by chunk.

use rayon::prelude::*;

use super::cross_entropy::{check_targets, logsumexp, softmax_grad_in_place};
use super::gemm::{gemm, Mat, MatMut};
use super::host_op::HostOp;
use super::simd::vectorized;
use super::Elem;

/// Rows of `dW` per parallel task of the one `dW = dZ^T X` product.
const VOCAB_BLOCK: usize = 512;

/// Rows per parallel task: about 2^20 logits (4 MiB in f32) a chunk, at least 64 rows (each
/// chunk's GEMM packs all of `W`, which its rows amortise) and at most 512, and no more than each
/// worker's equal share of the rows, so every core gets some.
fn chunk_rows(tokens: usize, vocab: usize) -> usize {
    let by_size = ((1 << 20) / vocab.max(1)).clamp(64, 512);
    by_size
        .min(tokens.div_ceil(rayon::current_num_threads()))
        .max(1)
}

/// Cross-entropy of `targets` (one per row) under the logits `x W^T`; inputs `[x, w]`, `x` packed
/// `[tokens, d]`, `w` packed `[vocab, d]`.
#[derive(Debug, Clone)]
pub struct LmHeadLoss {
    pub d: usize,
    pub vocab: usize,
    pub targets: Vec<usize>,
}

impl LmHeadLoss {
    /// Checks every target is a token id below `vocab`.
    pub fn new(d: usize, vocab: usize, targets: Vec<usize>) -> Self {
        check_targets(vocab, &targets);
        Self { d, vocab, targets }
    }

    fn check<E>(&self, x: &[E], w: &[E]) {
        let (d, v, n) = (self.d, self.vocab, self.targets.len());
        assert!(
            x.len() == n * d && w.len() == v * d,
            "LM-head loss: {} hidden values for {n} targets of width {d}, head of {} values for \
             vocabulary {v}",
            x.len(),
            w.len()
        );
    }

    /// Logits `x[first..first + rows] W^T` into `z` (`rows x vocab`).
    fn logits<E: Elem>(&self, x: &[E], w: &[E], first: usize, z: &mut [E]) {
        let (d, v) = (self.d, self.vocab);
        let rows = z.len() / v;
        let w = Mat::new(w, v, d, d).t();
        gemm(
            E::one(),
            Mat::rows(x, first, rows, d),
            w,
            E::zero(),
            MatMut::new(z, rows, v, v),
        );
    }
}

impl HostOp<2> for LmHeadLoss {
    /// `logsumexp` of each row's logits.
    type Saved<E: Elem> = Vec<E>;

    fn forward<E: Elem>(&self, [x, w]: [&[E]; 2]) -> (Vec<E>, Vec<E>) {
        self.check(x, w);
        let n = self.targets.len();
        let chunk = chunk_rows(n, self.vocab);
        let (mut nll, mut lse) = (vec![E::zero(); n], vec![E::zero(); n]);
        nll.par_chunks_mut(chunk)
            .zip(lse.par_chunks_mut(chunk))
            .enumerate()
            .for_each_init(Vec::new, |z, (c, (nll, lse))| {
                let first = c * chunk;
                // The GEMM overwrites the buffer (beta = 0), stale values included.
                z.resize(nll.len() * self.vocab, E::zero());
                self.logits(x, w, first, z);
                let rows = z.chunks_exact(self.vocab).zip(nll.iter_mut().zip(lse));
                vectorized(
                    #[inline(always)]
                    || {
                        for (i, (z, (nll, lse))) in rows.enumerate() {
                            *lse = logsumexp(z);
                            *nll = *lse - z[self.targets[first + i]];
                        }
                    },
                );
            });
        (nll, lse)
    }

    /// `dz = d_nll (softmax(z) - onehot(t))` per row, `dx = dz W` per chunk, `dW = dZ^T X`.
    ///
    /// `dW` is a sum over every row. Summing it per parallel task would take one `vocab x d`
    /// accumulator per task (or per worker: `workers x vocab x d`, 1.6 GB at 64 workers and
    /// GPT-2's head), a reduction over them, and a result that depends on how rows were split.
    /// Instead the chunks write their `dz` into one `tokens x vocab` buffer (the logits'
    /// gradient, which the unfused path holds next to the logits themselves) and `dW` is one
    /// product over all rows, split by rows of `dW`: deterministic whatever the thread count,
    /// and a large GEMM (measured at 2048 x 256 x 4096: as fast per FLOP as the chunks' products,
    /// about a fifth of this backward pass).
    fn backward<E: Elem>(&self, [x, w]: [&[E]; 2], lse: &Vec<E>, d_nll: &[E]) -> [Vec<E>; 2] {
        let (d, v, n) = (self.d, self.vocab, self.targets.len());
        let chunk = chunk_rows(n, v);
        let mut dz = vec![E::zero(); n * v];
        let mut dx = vec![E::zero(); n * d];
        dz.par_chunks_mut(chunk * v)
            .zip(dx.par_chunks_mut(chunk * d))
            .enumerate()
            .for_each(|(c, (dz, dx))| {
                let (first, rows) = (c * chunk, dx.len() / d);
                self.logits(x, w, first, dz);
                vectorized(
                    #[inline(always)]
                    || {
                        for (r, dz) in (first..).zip(dz.chunks_exact_mut(v)) {
                            softmax_grad_in_place(dz, lse[r], d_nll[r], self.targets[r]);
                        }
                    },
                );
                let dz = Mat::new(dz, rows, v, v);
                gemm(
                    E::one(),
                    dz,
                    Mat::new(w, v, d, d),
                    E::zero(),
                    MatMut::new(dx, rows, d, d),
                );
            });
        let mut dw = vec![E::zero(); v * d];
        if n == 0 {
            return [dx, dw];
        }
        dw.par_chunks_mut(VOCAB_BLOCK * d)
            .enumerate()
            .for_each(|(block, dw)| {
                let (first, vb) = (block * VOCAB_BLOCK, dw.len() / d);
                // Columns `first..first + vb` of dZ, transposed: `vb x tokens`.
                let dz_t = Mat::new(&dz[first..], n, vb, v).t();
                gemm(
                    E::one(),
                    dz_t,
                    Mat::new(x, n, d, d),
                    E::zero(),
                    MatMut::new(dw, vb, d, d),
                );
            });
        [dx, dw]
    }
}
