//! What surrounds attention in a layer, in burn tensor ops.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use super::attention::silu;
use crate::host::adamw::AdamWStep;
use crate::precision::to_dtype;

/// `[batch, len, P * heads * d]` -> `P` tensors of `[batch, heads, len, d]`, in projection
/// order (strided views).
pub fn split_heads<B: Backend, const P: usize>(y: Tensor<B, 3>, heads: usize) -> [Tensor<B, 4>; P] {
    let [b, l, width] = y.dims();
    let d = width / (P * heads);
    let y = y.reshape([b, l, P * heads, d]).swap_dims(1, 2);
    std::array::from_fn(|p| {
        y.clone()
            .slice([0..b, p * heads..(p + 1) * heads, 0..l, 0..d])
    })
}

/// `[batch, heads, len, d]` -> `[batch, len, heads * d]`.
pub fn merge_heads<B: Backend>(o: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, h, l, d] = o.dims();
    o.swap_dims(1, 2).reshape([b, l, h * d])
}

/// RMSNorm over the last dimension: `x / sqrt(mean(x^2) + eps) (.) gamma`, in `x`'s type.
pub fn rms_norm<B: Backend>(x: Tensor<B, 3>, gamma: Tensor<B, 1>, eps: f64) -> Tensor<B, 3> {
    let rms = (x.clone().square().mean_dim(2) + eps).sqrt();
    let gamma = to_dtype(gamma, x.dtype());
    x / rms * gamma.unsqueeze()
}

/// SwiGLU's gate `SiLU(g) (.) u`.
pub fn swiglu_gate<B: Backend, const D: usize>(g: Tensor<B, D>, u: Tensor<B, D>) -> Tensor<B, D> {
    silu(g) * u
}

/// Per-token negative log-likelihood `[batch, len]` of `targets` under `logits`
/// (`log_softmax`, then `gather`).
pub fn token_nll<B: Backend>(logits: Tensor<B, 3>, targets: Tensor<B, 2, Int>) -> Tensor<B, 2> {
    let [b, l, _] = logits.dims();
    log_softmax(logits, 2)
        .gather(2, targets.reshape([b, l, 1]))
        .reshape([b, l])
        .neg()
}

/// One AdamW update of `p` with gradient `g`: the new `[p, m1, m2]`. `moments` is `None` at the
/// first step. burn 0.21's `AdamW`, op for op (`crate::host::adamw` gives its formula).
pub fn adamw<B: Backend, const D: usize>(
    s: &AdamWStep,
    [p, g]: [Tensor<B, D>; 2],
    moments: Option<[Tensor<B, D>; 2]>,
) -> [Tensor<B, D>; 3] {
    let (factor_1, factor_2) = (1.0 - s.beta_1, 1.0 - s.beta_2);
    let (m1, m2) = match moments {
        Some([m1, m2]) => (
            m1 * s.beta_1 + g.clone() * factor_1,
            m2 * s.beta_2 + g.square() * factor_2,
        ),
        None => (g.clone() * factor_1, g.square() * factor_2),
    };
    let m1_hat = m1.clone() / s.correction_1;
    let m2_hat = m2.clone() / s.correction_2;
    let delta = m1_hat / (m2_hat.sqrt() + s.epsilon);
    [p * s.decay - delta * s.lr, m1, m2]
}
