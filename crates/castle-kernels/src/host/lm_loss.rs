//! The LM head and its softmax cross-entropy fused: per row `nll = logsumexp(x W^T) - (x W^T)[t]`
//! from the final hidden state `x: [tokens, d]` and the head `W: [vocab, d]`, a chunk of rows at
//! a time, so the `tokens x vocab` logits never exist in the forward pass: each chunk's logits
//! are one small GEMM into a per-worker buffer, reduced to the row's log-sum-exp, which is all
//! that is kept. When the backward pass will run, the chunk's logits are turned into their
//! gradient `softmax(z) - onehot(t)` in place and kept instead: the `tokens x vocab` array the
//! backward pass needs anyway, computed while the logits are at hand, so the backward pass runs
//! two products instead of three and one `exp` per logit is saved.

use rayon::prelude::*;

use super::cross_entropy::check_targets;
use super::elem::Elem;
use super::gemm::{gemm, times_by_rows, transposed, transposed_times, Mat, MatMut};
use super::host_op::HostOp;
use super::parallel::zeroed;
use super::simd::vectorized;
use super::softmax::{logsumexp, softmax_in_place};

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

    /// Logits `x[first..first + rows] W^T` into `z` (`rows x vocab`), given `w_t = W^T`
    /// packed (`d x vocab`: see `transposed`).
    fn logits<E: Elem>(&self, x: &[E], w_t: &[E], first: usize, z: &mut [E]) {
        let (d, v) = (self.d, self.vocab);
        let rows = z.len() / v;
        gemm(
            E::one(),
            Mat::rows(x, first, rows, d),
            Mat::new(w_t, d, v, v),
            E::zero(),
            MatMut::new(z, rows, v, v),
        );
    }
}

/// `diag(s) a` for `a` in rows of `d`: row `r` times `s[r]`.
fn scale_rows<E: Elem>(mut a: Vec<E>, d: usize, s: &[E]) -> Vec<E> {
    a.par_chunks_mut(d.max(1))
        .zip(s.par_iter())
        .for_each(|(row, &s)| row.iter_mut().for_each(|e| *e = *e * s));
    a
}

impl HostOp<2> for LmHeadLoss {
    /// `G = softmax(x W^T) - onehot(t)`, `tokens x vocab`, from [`HostOp::forward_tracked`]
    /// (empty after [`HostOp::forward`]).
    type Saved<E: Elem> = Vec<E>;

    fn forward<E: Elem>(&self, [x, w]: [&[E]; 2]) -> (Vec<E>, Vec<E>) {
        self.check(x, w);
        let n = self.targets.len();
        let chunk = chunk_rows(n, self.vocab);
        let w_t = transposed(w, self.vocab, self.d);
        let mut nll = vec![E::zero(); n];
        nll.par_chunks_mut(chunk)
            .enumerate()
            .for_each_init(Vec::new, |z, (c, nll)| {
                let first = c * chunk;
                // The GEMM overwrites the buffer (beta = 0), stale values included.
                z.resize(nll.len() * self.vocab, E::zero());
                self.logits(x, &w_t, first, z);
                let rows = z.chunks_exact(self.vocab).zip(nll);
                vectorized(
                    #[inline(always)]
                    || {
                        for (i, (z, nll)) in rows.enumerate() {
                            *nll = logsumexp(z) - z[self.targets[first + i]];
                        }
                    },
                );
            });
        (nll, Vec::new())
    }

    fn forward_tracked<E: Elem>(&self, [x, w]: [&[E]; 2]) -> (Vec<E>, Vec<E>) {
        self.check(x, w);
        let (v, n) = (self.vocab, self.targets.len());
        let chunk = chunk_rows(n, v);
        let w_t = transposed(w, v, self.d);
        let (mut nll, mut g) = (vec![E::zero(); n], zeroed(n * v));
        nll.par_chunks_mut(chunk)
            .zip(g.par_chunks_mut(chunk * v))
            .enumerate()
            .for_each(|(c, (nll, g))| {
                let first = c * chunk;
                self.logits(x, &w_t, first, g);
                let rows = g.chunks_exact_mut(v).zip(nll);
                vectorized(
                    #[inline(always)]
                    || {
                        for (i, (z, nll)) in rows.enumerate() {
                            let t = self.targets[first + i];
                            let z_t = z[t];
                            *nll = softmax_in_place(z) - z_t;
                            z[t] = z[t] - E::one();
                        }
                    },
                );
            });
        (nll, g)
    }

    /// With `dZ = diag(d_nll) G`, the logits' gradient: `dx = dZ W`,
    /// computed as `diag(d_nll) (G W)` a chunk of rows at a time, and `dW = dZ^T X = G^T
    /// (diag(d_nll) X)`, one product over all rows split by rows of `dW`.
    ///
    /// `dW` is a sum over every row. Summing it per parallel task would take one `vocab x d`
    /// accumulator per task (or per worker: `workers x vocab x d`, 1.6 GB at 64 workers and
    /// GPT-2's head), a reduction over them, and a result that depends on how rows were split;
    /// one product is deterministic whatever the thread count, and a large GEMM.
    fn backward<E: Elem>(&self, [x, w]: [&[E]; 2], g: &Vec<E>, d_nll: &[E]) -> [Vec<E>; 2] {
        let (d, v, n) = (self.d, self.vocab, self.targets.len());
        assert_eq!(
            g.len(),
            n * v,
            "LM-head loss: the backward pass needs the gradient kept by `forward_tracked`"
        );
        let (g_m, w_m) = (Mat::new(g, n, v, v), Mat::new(w, v, d, d));
        let dx = scale_rows(times_by_rows(g_m, w_m, chunk_rows(n, v)), d, d_nll);
        let dw = transposed_times(g, v, &scale_rows(x.to_vec(), d, d_nll), d, VOCAB_BLOCK);
        [dx, dw]
    }
}
