//! Rotary position embedding (RoPE), "rotate half" convention.
//!
//! Where RoPE sits inside CASTLE (the paper does not say; this is our choice, applied identically in
//! the naive, chunked and cached paths): it rotates the two pairs whose dot product compares two
//! positions, `qC . kC` (causal scores) and `qU . kU` (lookahead weights). A lookahead key `u_i^t`
//! is a sigmoid-weighted sum of value vectors `vU_j`, which carry no position, so the causal query
//! scores it *unrotated*: `sU[t,i] = s * qC_t . u_i^t` with `qC_t` before RoPE.

use burn::prelude::*;

/// cos/sin tables for a contiguous range of positions, `[len, head_dim / 2]` each.
#[derive(Debug, Clone)]
pub struct RopeTables<B: Backend> {
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
}

impl<B: Backend> RopeTables<B> {
    /// Tables for positions `start .. start + len`; frequencies `theta^(-2k/d)`.
    pub fn new(start: usize, len: usize, head_dim: usize, theta: f64, device: &B::Device) -> Self {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for pos in start..start + len {
            for k in 0..half {
                let angle = pos as f64 * theta.powf(-2.0 * k as f64 / head_dim as f64);
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let table = |v: Vec<f64>| Tensor::from_data(TensorData::new(v, [len, half]), device);
        Self {
            cos: table(cos),
            sin: table(sin),
        }
    }

    /// Rotates `x: [batch, heads, len, head_dim]`: `(x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)`.
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, h, l, d] = x.dims();
        let half = d / 2;
        let cos = self.cos.clone().unsqueeze::<4>();
        let sin = self.sin.clone().unsqueeze::<4>();
        let x1 = x.clone().slice([0..b, 0..h, 0..l, 0..half]);
        let x2 = x.slice([0..b, 0..h, 0..l, half..d]);
        Tensor::cat(
            vec![
                x1.clone() * cos.clone() - x2.clone() * sin.clone(),
                x2 * cos + x1 * sin,
            ],
            3,
        )
    }
}
