//! Rotary position embedding (RoPE), "rotate half" convention.
//!
//! Where RoPE sits inside CASTLE (the paper does not say; this is our choice, applied identically in
//! the naive, chunked and cached paths): it rotates the two pairs whose dot product compares two
//! positions, `qC . kC` (causal scores) and `qU . kU` (lookahead weights). A lookahead key `u_i^t`
//! is a sigmoid-weighted sum of value vectors `vU_j`, which carry no position, so the causal query
//! scores it *unrotated*: `sU[t,i] = s * qC_t . u_i^t` with `qC_t` before RoPE.
//!
//! The cos/sin tables of every position are computed once per model ([`Rope`], float64 on the
//! host); a forward or a decoded token takes a window of them ([`Rope::tables`]). On CPU the
//! rotation is one fused parallel pass each way ([`RopeRows`]); elsewhere it is burn tensor ops on
//! tables uploaded once per window ([`RopeTables::apply_reference`]).

use std::sync::OnceLock;

use burn::prelude::*;

pub use crate::host::rope::{Rope, RopeRows};
use crate::precision::to_dtype;

impl Rope {
    /// The tables of positions `start .. start + len`.
    pub fn tables<B: Backend>(
        &self,
        start: usize,
        len: usize,
        device: &B::Device,
    ) -> RopeTables<B> {
        assert!(
            start + len <= self.max_len,
            "sequence of {} positions exceeds model.max_seq_len = {}",
            start + len,
            self.max_len
        );
        RopeTables {
            rope: RopeRows {
                rope: self.clone(),
                start,
                len,
            },
            device: device.clone(),
            uploaded: OnceLock::new(),
        }
    }
}

/// The tables of a contiguous range of positions.
#[derive(Debug, Clone)]
pub struct RopeTables<B: Backend> {
    rope: RopeRows,
    device: B::Device,
    /// `[len, d / 2]` cos and sin on the device, for the tensor-op form; uploaded on first use.
    uploaded: OnceLock<[Tensor<B, 2>; 2]>,
}

impl<B: Backend> RopeTables<B> {
    /// The rotation of `len` positions of `head_dim` values, for fused host ops; panics when
    /// these tables are not for that shape.
    pub fn rows(&self, len: usize, head_dim: usize) -> &RopeRows {
        assert_eq!(
            [len, head_dim / 2],
            [self.rope.len, self.rope.rope.half],
            "RoPE tables for {} positions of head_dim {}",
            self.rope.len,
            2 * self.rope.rope.half
        );
        &self.rope
    }

    /// Rotates `x: [batch, heads, len, head_dim]`: `(x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)`,
    /// in burn tensor ops: the reference, and what a backend without the host op runs
    /// (`crate::KernelBackend::rope`).
    pub fn apply_reference(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, h, l, d] = x.dims();
        let (half, dtype) = (d / 2, x.dtype());
        let [cos, sin] = self
            .uploaded
            .get_or_init(|| {
                let RopeRows { rope, start, len } = &self.rope;
                let range = start * rope.half..(start + len) * rope.half;
                [&rope.cos, &rope.sin].map(|t| {
                    let data = TensorData::new(t[range.clone()].to_vec(), [*len, rope.half]);
                    Tensor::from_data(data, &self.device)
                })
            })
            .clone()
            .map(|t| to_dtype(t, dtype).unsqueeze::<4>());
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
