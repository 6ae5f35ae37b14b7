//! CASTLE's decoding cache, one token at a time (eq. 13; docs/castle.md, section 4).

use burn::prelude::*;
use burn::tensor::activation::softmax;
use castle_kernels::reference::{
    in_lookahead, position_mask, scale, sigmoid, silu, transpose, CastleHeads,
};

use super::cache::CacheRows;

/// The UQ-KV cache of one layer (docs/castle.md, section 4): lookahead keys `U` (rewritten every step),
/// lookahead queries `Qu`, causal keys `Kc` and values `Vc`, each `[batch, heads, t, d]`.
/// `Qu`, `Kc`, `Vc` only grow, in place ([`CacheRows`]). Every row of `U` inside the window
/// changes at each step, so `U` is rebuilt instead: one O(t d) copy, the order of the rewrite
/// itself (a strided in-place update measured slower on the CPU backends).
#[derive(Debug, Clone)]
pub struct UqKvCache<B: Backend> {
    u: Tensor<B, 4>,
    qu: CacheRows<B>,
    kc: CacheRows<B>,
    vc: CacheRows<B>,
}

impl<B: Backend> UqKvCache<B> {
    /// The cache after a prompt: `U = (sigmoid(s Qu Ku^T) (.) Mu) Vu`, eq. 3-4 at `t = L - 1`.
    pub fn prefill(h: &CastleHeads<B>, window: Option<usize>) -> Self {
        let [_, _, l, d] = h.qu.dims();
        let mu = position_mask::<B>(l, l, |i, j| in_lookahead(i, j, window), &h.qu.device());
        let weights = sigmoid(h.qu.clone().matmul(transpose(h.ku.clone())) * scale(d));
        Self {
            u: (weights * mu.unsqueeze::<4>()).matmul(h.vu.clone()),
            qu: CacheRows::new(h.qu.clone()),
            kc: CacheRows::new(h.kc.clone()),
            vc: CacheRows::new(h.vc.clone()),
        }
    }

    /// The cached `[U, Qu, Kc, Vc]`, `[batch, heads, t, d]` each.
    pub(crate) fn rows(&self) -> [Tensor<B, 4>; 4] {
        [
            self.u.clone(),
            self.qu.rows(),
            self.kc.rows(),
            self.vc.rows(),
        ]
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.kc.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The positions of `h` after those cached, one at a time: their outputs `[b, nh, n, d]`.
    pub fn step(&mut self, h: &CastleHeads<B>, window: Option<usize>) -> Tensor<B, 4> {
        let n = h.qu.dims()[2];
        if n == 1 {
            return self.step_one(h, window);
        }
        let outputs = (0..n).map(|t| self.step_one(&h.positions(t..t + 1), window));
        Tensor::cat(outputs.collect(), 2)
    }

    /// One new token (`h` holds one position): eq. 13, then eq. 5-8 for its output `[b, nh, 1, d]`.
    /// Only rows still inside the window (`i >= t - W`) are rewritten: O(W d) under SWL.
    fn step_one(&mut self, h: &CastleHeads<B>, window: Option<usize>) -> Tensor<B, 4> {
        let [b, nh, t, d] = self.u.dims();
        let s = scale(d);
        let first = window.map_or(0, |w| t.saturating_sub(w));
        let mut u = vec![];
        if first > 0 {
            u.push(self.u.clone().slice([0..b, 0..nh, 0..first, 0..d])); // outside the window
        }
        if first < t {
            let qu = self.qu.rows_in(first..t);
            let weights = sigmoid(qu.matmul(transpose(h.ku.clone())) * s); // [b, nh, rows, 1]
            let rows = self.u.clone().slice([0..b, 0..nh, first..t, 0..d]);
            u.push(rows + weights * h.vu.clone());
        }
        u.push(Tensor::zeros([b, nh, 1, d], &h.vu.device())); // u_t^t = 0
        self.u = Tensor::cat(u, 2);
        self.qu.push(h.qu.clone());
        self.kc.push(h.kc.clone());
        self.vc.push(h.vc.clone());

        let causal = h.qc.clone().matmul(transpose(self.kc.rows())) * s;
        let lookahead = h.qc_nope.clone().matmul(transpose(self.u.clone())) * s;
        softmax(causal - silu(lookahead), 3).matmul(self.vc.rows())
    }
}
