//! The attentions in burn tensor ops: the references the attention kernels are tested against,
//! and what a backend without them runs (docs/castle.md, sections 1-3).
//!
//! `S_U[t, i] = s * qC_t . u_i^t` is computed two exact ways:
//! - [`lookahead_scores_naive`]: Theorem 1, `S_U = A B^T`, O(L^3); the reference.
//! - [`lookahead_scores_chunked`]: the blocked O(L^2 d) form (the fused CPU kernel in
//!   [`crate::lookahead`] runs the same algebra).
//!
//! [`attend`] turns `S_U` into the attention output (eq. 5-8); [`causal_attention`] is the
//! baseline's.

use std::ops::Range;

use burn::prelude::*;
use burn::tensor::activation::softmax;

use crate::precision::{to_dtype, widen};

/// The seven per-head projections one CASTLE layer feeds into attention, `[batch, heads, len, d]`.
/// `qu`, `ku`, `qc`, `kc` carry RoPE; `qc_nope` is `qc` before RoPE, the query that scores the
/// lookahead keys (see [`crate::rope`]).
#[derive(Debug, Clone)]
pub struct CastleHeads<B: Backend> {
    pub qu: Tensor<B, 4>,
    pub ku: Tensor<B, 4>,
    pub vu: Tensor<B, 4>,
    pub qc: Tensor<B, 4>,
    pub kc: Tensor<B, 4>,
    pub vc: Tensor<B, 4>,
    pub qc_nope: Tensor<B, 4>,
}

impl<B: Backend> CastleHeads<B> {
    /// `f` applied to each of the seven.
    pub fn map(&self, f: impl Fn(&Tensor<B, 4>) -> Tensor<B, 4>) -> Self {
        Self {
            qu: f(&self.qu),
            ku: f(&self.ku),
            vu: f(&self.vu),
            qc: f(&self.qc),
            kc: f(&self.kc),
            vc: f(&self.vc),
            qc_nope: f(&self.qc_nope),
        }
    }

    /// The positions `range` of every head.
    pub fn positions(&self, range: Range<usize>) -> Self {
        self.map(|x| {
            let [b, h, _, d] = x.dims();
            x.clone().slice([0..b, 0..h, range.clone(), 0..d])
        })
    }

    /// The heads in at least f32 ([`widen`]): the tensor-op forms below accumulate softmax
    /// statistics and the lookahead prefix sums in f32 under bf16 compute.
    pub fn widened(&self) -> Self {
        self.map(|x| widen(x.clone()))
    }
}

/// `s = 1 / sqrt(d)`.
pub fn scale(head_dim: usize) -> f64 {
    1.0 / (head_dim as f64).sqrt()
}

/// Does position `j` contribute to the lookahead key of `i`? `i < j <= i + W` (eq. 3-4, eq. 9).
pub fn in_lookahead(i: usize, j: usize, window: Option<usize>) -> bool {
    j > i && window.is_none_or(|w| j <= i + w)
}

/// The 0/1 matrix `M[a, c] = keep(a, c)`.
pub fn position_mask<B: Backend>(
    rows: usize,
    cols: usize,
    keep: impl Fn(usize, usize) -> bool,
    device: &B::Device,
) -> Tensor<B, 2> {
    let values: Vec<f32> = (0..rows)
        .flat_map(|a| (0..cols).map(move |c| (a, c)))
        .map(|(a, c)| if keep(a, c) { 1.0 } else { 0.0 })
        .collect();
    Tensor::from_data(TensorData::new(values, [rows, cols]), device)
}

pub fn transpose<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.swap_dims(D - 2, D - 1)
}

/// Block size (at most `len`) and number of blocks covering `len` positions.
fn blocking(len: usize, block: usize) -> (usize, usize) {
    let bs = block.clamp(1, len);
    (bs, len.div_ceil(bs))
}

/// `x: [b, h, len, d]` zero-padded to `padded_len` positions (zero `Vu` rows add nothing).
fn pad_to<B: Backend>(x: &Tensor<B, 4>, padded_len: usize) -> Tensor<B, 4> {
    let [b, h, l, d] = x.dims();
    if padded_len == l {
        return x.clone();
    }
    let zeros = Tensor::zeros([b, h, padded_len - l, d], &x.device());
    Tensor::cat(vec![x.clone(), zeros], 2)
}

/// Theorem 1: `S_U = ((s Qc Vu^T) (.) Mc) (sigmoid(s Qu Ku^T) (.) Mu)^T`. O(L^3) time, the reference.
/// In at least f32.
pub fn lookahead_scores_naive<B: Backend>(
    h: &CastleHeads<B>,
    window: Option<usize>,
) -> Tensor<B, 4> {
    let h = &h.widened();
    let [_, _, l, d] = h.qu.dims();
    let s = scale(d);
    let device = h.qu.device();
    let mc = position_mask::<B>(l, l, |t, j| j <= t, &device).unsqueeze::<4>();
    let mu = position_mask::<B>(l, l, |i, j| in_lookahead(i, j, window), &device).unsqueeze::<4>();
    let a = h.qc_nope.clone().matmul(transpose(h.vu.clone())) * s * mc;
    let b = sigmoid(h.qu.clone().matmul(transpose(h.ku.clone())) * s) * mu;
    a.matmul(transpose(b))
}

/// The exact O(L^2 d) chunked form (docs/castle.md, section 3) in burn tensor ops, one column block `J` of
/// key owners at a time: the GPU backends' training path, and a reference for the fused CPU
/// kernel (`crate::host::lookahead`), which runs the same algebra block by block.
///
/// For owners in block `J` and summed positions in blocks `K >= J`:
/// `sig[J,K] = sigmoid(s Qu_J Ku_K^T) (.) Mu[J,K]`, `G[J,K] = Vu_K^T sig[J,K]^T`,
/// `C[J,I] = sum_{J<=K<I} G[J,K]`, and for every query block `I >= J`
/// `S_U[I,J] = s Qc_I C[J,I] + ((s Qc_I Vu_I^T) (.) Mc[I,I]) sig[J,I]^T`.
/// With a window only `K - J <= ceil(W/B)` can be non-zero, so `sig` and `G` are computed for
/// that band alone; past it `C[J,I]` is the whole band's sum and the diagonal term vanishes.
/// A length that is not a multiple of `block` is zero-padded (zero `Vu` rows add nothing).
/// In at least f32.
pub fn lookahead_scores_chunked<B: Backend>(
    h: &CastleHeads<B>,
    window: Option<usize>,
    block: usize,
) -> Tensor<B, 4> {
    let h = &h.widened();
    let [b, nh, l, d] = h.qu.dims();
    let s = scale(d);
    let device = h.qu.device();
    let (bs, n) = blocking(l, block);
    let lp = n * bs;
    let [qu, ku, vu, qc] = [&h.qu, &h.ku, &h.vu, &h.qc_nope].map(|x| pad_to(x, lp));
    let blocks = |x: &Tensor<B, 4>| x.clone().reshape([b, nh, n, bs, d]);
    let (vu_blocks, qc_blocks) = (blocks(&vu), blocks(&qc));

    // Blocks K - J < band can hold lookahead positions of owners in J.
    let band = window.map_or(n, |w| (w.div_ceil(bs) + 1).min(n));
    // Mu[J, J..J+band] depends only on j - i, so one mask serves every J.
    let mu = position_mask::<B>(bs, band * bs, |a, c| in_lookahead(a, c, window), &device);
    let mc = position_mask::<B>(bs, bs, |t, j| j <= t, &device);
    // (s Qc_I Vu_I^T) (.) Mc[I,I] for every I: [b, nh, n, bs, bs].
    let diag = qc_blocks.clone().matmul(transpose(vu_blocks.clone())) * s * mc.unsqueeze::<5>();

    let mut columns = Vec::with_capacity(n);
    for j in 0..n {
        let k_end = (j + band).min(n);
        let nk = k_end - j;
        let qu_j = qu.clone().slice([0..b, 0..nh, j * bs..(j + 1) * bs, 0..d]);
        let ku_k = ku.clone().slice([0..b, 0..nh, j * bs..k_end * bs, 0..d]);
        let mu_k = mu.clone().slice([0..bs, 0..nk * bs]).unsqueeze::<4>();
        // sig[J,K] for K in the band, laid out [b, nh, K, owner i, position j].
        let sig = (sigmoid(qu_j.matmul(transpose(ku_k)) * s) * mu_k)
            .reshape([b, nh, bs, nk, bs])
            .swap_dims(2, 3);
        let vu_k = vu_blocks
            .clone()
            .slice([0..b, 0..nh, j..k_end, 0..bs, 0..d]);
        let g = sig.clone().matmul(vu_k); // G[J,K]^T: [b, nh, K, bs, d]
        let g_inclusive = g.cumsum(2);
        // C[J,I]^T for I in the band: the exclusive prefix sum, shifted (not `inclusive - G`,
        // whose rounding would let a later block touch earlier outputs).
        let mut c = vec![Tensor::zeros([b, nh, 1, bs, d], &device)];
        if nk > 1 {
            c.push(
                g_inclusive
                    .clone()
                    .slice([0..b, 0..nh, 0..nk - 1, 0..bs, 0..d]),
            );
        }
        let c = Tensor::cat(c, 2);
        let qc_i = qc_blocks
            .clone()
            .slice([0..b, 0..nh, j..k_end, 0..bs, 0..d]);
        let diag_i = diag.clone().slice([0..b, 0..nh, j..k_end, 0..bs, 0..bs]);
        let in_band = qc_i.matmul(transpose(c)) * s + diag_i.matmul(transpose(sig));
        let mut column = vec![];
        if j > 0 {
            column.push(Tensor::zeros([b, nh, j * bs, bs], &device)); // S_U[I,J] = 0 for I < J
        }
        column.push(in_band.reshape([b, nh, nk * bs, bs]));
        if k_end < n {
            let c_all = g_inclusive
                .slice([0..b, 0..nh, nk - 1..nk, 0..bs, 0..d])
                .reshape([b, nh, bs, d]);
            let qc_rest = qc.clone().slice([0..b, 0..nh, k_end * bs..lp, 0..d]);
            column.push(qc_rest.matmul(transpose(c_all)) * s);
        }
        columns.push(Tensor::cat(column, 2));
    }
    Tensor::cat(columns, 3).slice([0..b, 0..nh, 0..l, 0..l])
}

/// Eq. 5-8: `softmax_i( s qC_t . kC_i - SiLU(S_U[t,i]) ) vC`, causal over `i <= t`; computed in
/// at least f32, returned in the heads' type.
pub fn attend<B: Backend>(h: &CastleHeads<B>, lookahead_scores: Tensor<B, 4>) -> Tensor<B, 4> {
    let dtype = h.qc.dtype();
    let (h, lookahead_scores) = (&h.widened(), widen(lookahead_scores));
    let [_, _, l, d] = h.qc.dims();
    let causal = Tensor::<B, 2, Bool>::tril_mask([l, l], 0, &h.qc.device()).unsqueeze::<4>();
    let logits = h.qc.clone().matmul(transpose(h.kc.clone())) * scale(d) - silu(lookahead_scores);
    let out = softmax(logits.mask_fill(causal, f32::NEG_INFINITY), 3).matmul(h.vc.clone());
    to_dtype(out, dtype)
}

/// `softmax(s Q K^T + causal mask) V` in burn tensor ops: the reference. Computed in at least
/// f32, returned in `q`'s type.
pub fn causal_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let dtype = q.dtype();
    let [q, k, v] = [q, k, v].map(widen);
    let [_, _, l, d] = q.dims();
    let causal = Tensor::<B, 2, Bool>::tril_mask([l, l], 0, &q.device()).unsqueeze::<4>();
    let scores = q.matmul(k.swap_dims(2, 3)) * scale(d);
    to_dtype(
        softmax(scores.mask_fill(causal, f32::NEG_INFINITY), 3).matmul(v),
        dtype,
    )
}

/// `sigmoid(x) = (1 + tanh(x/2)) / 2`: exact in the backend's float type (burn's default
/// `sigmoid` rounds through f32) and stable, with a stable gradient, at both tails.
pub fn sigmoid<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    (x * 0.5).tanh() * 0.5 + 0.5
}

/// `SiLU(x) = x sigmoid(x)`.
pub fn silu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.clone() * sigmoid(x)
}
