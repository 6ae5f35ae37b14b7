//! Softmax cross-entropy per row: `nll = logsumexp(z) - z[target]`, one parallel pass forward
//! (keeping only each row's log-sum-exp) and one backward (`softmax(z) - onehot(target)`), where
//! burn's `log_softmax` + `gather` form makes about ten single-threaded passes over the
//! `tokens x vocab` logits.

use rayon::prelude::*;

use super::host_op::{rows_per_task, HostOp};
use super::Elem;

/// Cross-entropy of rows of `vocab` logits against `targets`, one per row.
#[derive(Debug, Clone)]
pub struct CrossEntropyRows {
    pub vocab: usize,
    pub targets: Vec<usize>,
}

impl CrossEntropyRows {
    /// Checks every target is a token id below `vocab`.
    pub fn new(vocab: usize, targets: Vec<usize>) -> Self {
        if let Some(bad) = targets.iter().find(|&&t| t >= vocab) {
            panic!("target token id {bad} is outside the vocabulary of {vocab} (0..{vocab})");
        }
        Self { vocab, targets }
    }
}

fn logsumexp<E: Elem>(z: &[E]) -> E {
    let max = z.iter().fold(E::neg_infinity(), |m, &v| m.max(v));
    let sum = z
        .iter()
        .fold(E::zero(), |s, &v| s + E::exp_nonpositive(v - max));
    max + sum.ln()
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
        let lse: Vec<E> = z.par_chunks(v).map(logsumexp).collect();
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
        let mut dz = vec![E::zero(); z.len()];
        dz.par_chunks_mut(rows * v)
            .zip(z.par_chunks(rows * v))
            .enumerate()
            .for_each(|(task, (dz, z))| {
                for (i, (dz, z)) in dz.chunks_mut(v).zip(z.chunks(v)).enumerate() {
                    let r = task * rows + i;
                    let (l, d) = (lse[r], d_nll[r]);
                    for (dz, &z) in dz.iter_mut().zip(z) {
                        *dz = d * E::exp_nonpositive(z - l);
                    }
                    dz[self.targets[r]] = dz[self.targets[r]] - d;
                }
            });
        [dz]
    }
}
