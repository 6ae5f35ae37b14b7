//! Softmax cross-entropy per row: `nll = logsumexp(z) - z[target]`, one parallel pass forward
//! (keeping only each row's log-sum-exp) and one backward (`softmax(z) - onehot(target)`), where
//! burn's `log_softmax` + `gather` form makes about ten single-threaded passes over the
//! `tokens x vocab` logits. This op takes logits that exist already (evaluation, or any caller
//! of `lm::token_nll`); training fuses the LM head in as well ([`super::lm_loss`]) and never
//! holds them. The row helpers here serve both.

use rayon::prelude::*;

use super::elem::Elem;
use super::host_op::HostOp;
use super::parallel::rows_per_task;
use super::simd::vectorized;
use super::softmax::logsumexp;

/// Cross-entropy of rows of `vocab` logits against `targets`, one per row.
#[derive(Debug, Clone)]
pub struct CrossEntropyRows {
    pub vocab: usize,
    pub targets: Vec<usize>,
}

impl CrossEntropyRows {
    /// Checks every target is a token id below `vocab`.
    pub fn new(vocab: usize, targets: Vec<usize>) -> Self {
        check_targets(vocab, &targets);
        Self { vocab, targets }
    }
}

/// Panics naming the first target that is not a token id below `vocab`.
pub(super) fn check_targets(vocab: usize, targets: &[usize]) {
    if let Some(bad) = targets.iter().find(|&&t| t >= vocab) {
        panic!("target token id {bad} is outside the vocabulary of {vocab} (0..{vocab})");
    }
}

/// A row of logits `z` (with log-sum-exp `lse`) turned in place into the gradient of
/// `d_nll * nll`: `d_nll (softmax(z) - onehot(target))`. Inlined, as [`logsumexp`] is.
#[inline(always)]
pub(super) fn softmax_grad_in_place<E: Elem>(z: &mut [E], lse: E, d_nll: E, target: usize) {
    for z in z.iter_mut() {
        *z = d_nll * E::exp_nonpositive(*z - lse);
    }
    z[target] = z[target] - d_nll;
}

impl HostOp<1> for CrossEntropyRows {
    /// `logsumexp` per row.
    type Saved<E: Elem> = Vec<E>;

    fn forward<E: Elem>(&self, [z]: [&[E]; 1]) -> (Vec<E>, Vec<E>) {
        let v = self.vocab;
        assert_eq!(
            z.len(),
            v * self.targets.len(),
            "cross-entropy: {} logits for {} targets of vocabulary {v}",
            z.len(),
            self.targets.len()
        );
        let lse: Vec<E> = z
            .par_chunks(v)
            .map(|z| {
                vectorized(
                    #[inline(always)]
                    || logsumexp(z),
                )
            })
            .collect();
        let nll = lse
            .iter()
            .zip(z.chunks(v).zip(&self.targets))
            .map(|(&l, (z, &t))| l - z[t])
            .collect();
        (nll, lse)
    }

    fn backward<E: Elem>(&self, [z]: [&[E]; 1], lse: &Vec<E>, d_nll: &[E]) -> [Vec<E>; 1] {
        let v = self.vocab;
        let rows = rows_per_task(v);
        let mut dz = z.to_vec();
        dz.par_chunks_mut(rows * v)
            .enumerate()
            .for_each(|(task, dz)| {
                vectorized(
                    #[inline(always)]
                    || {
                        for (r, dz) in (task * rows..).zip(dz.chunks_mut(v)) {
                            softmax_grad_in_place(dz, lse[r], d_nll[r], self.targets[r]);
                        }
                    },
                )
            });
        [dz]
    }
}
