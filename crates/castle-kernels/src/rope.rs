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
//! tables uploaded once per window.

use crate::precision::to_dtype;
use std::sync::{Arc, OnceLock};

use burn::prelude::*;
use rayon::prelude::*;

use crate::backend::AttentionBackend;
use crate::host::host_op::HostOp;
use crate::host::parallel::{rows_per_task, zeroed};
use crate::host::simd::vectorized;
use crate::host::Elem;

/// cos/sin of `pos * theta^(-2k/d)` for every position below `max_len`, `[max_len, d / 2]`.
#[derive(Debug, Clone)]
pub struct Rope {
    half: usize,
    max_len: usize,
    cos: Arc<[f64]>,
    sin: Arc<[f64]>,
}

impl Rope {
    pub fn new(max_len: usize, head_dim: usize, theta: f64) -> Self {
        let half = head_dim / 2;
        let angles: Vec<f64> = (0..max_len)
            .flat_map(|pos| {
                (0..half).map(move |k| pos as f64 * theta.powf(-2.0 * k as f64 / head_dim as f64))
            })
            .collect();
        Self {
            half,
            max_len,
            cos: angles.iter().map(|a| a.cos()).collect(),
            sin: angles.iter().map(|a| a.sin()).collect(),
        }
    }

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

impl<B: AttentionBackend> RopeTables<B> {
    /// Rotates `x: [batch, heads, len, head_dim]`: `(x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)`;
    /// one fused kernel on CPU.
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        if !B::HOST_KERNELS {
            return self.apply_reference(x);
        }
        let dims = x.dims();
        let rows = self.rows(dims[2], dims[3]).clone();
        B::host_op(rows, [x.reshape([-1])]).reshape(dims)
    }

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

    /// [`RopeTables::apply`] in burn tensor ops: the reference, and what GPU backends run.
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

/// The rotation of rows of `head_dim` values at positions `start .. start + len`, repeating
/// every `len` rows (the heads of a batch): a [`HostOp`] with one input.
#[derive(Debug, Clone)]
pub struct RopeRows {
    rope: Rope,
    start: usize,
    len: usize,
}

impl RopeRows {
    /// The number of positions.
    pub(crate) fn positions(&self) -> usize {
        self.len
    }

    /// Rotates every row of `x` into `out` by `sign` times its position's angle.
    fn rotate<E: Elem>(&self, x: &[E], sign: f64) -> Vec<E> {
        let d = 2 * self.rope.half;
        let rows = rows_per_task(d);
        let mut out = zeroed(x.len());
        out.par_chunks_mut(rows * d)
            .zip(x.par_chunks(rows * d))
            .enumerate()
            .for_each(|(task, (out, x))| {
                vectorized(
                    #[inline(always)]
                    || {
                        for (i, (y, x)) in out.chunks_mut(d).zip(x.chunks(d)).enumerate() {
                            self.rotate_row(x, y, (task * rows + i) % self.len, sign);
                        }
                    },
                )
            });
        out
    }

    /// Rotates the row `x` of the `t`-th position (`start + t`) into `y` by `sign` times its
    /// angle. Inlined, so that a caller's [`vectorized`] loop compiles it at its SIMD width.
    #[inline(always)]
    pub(crate) fn rotate_row<E: Elem>(&self, x: &[E], y: &mut [E], t: usize, sign: f64) {
        let half = self.rope.half;
        let pos = self.start + t;
        let cos = &self.rope.cos[pos * half..(pos + 1) * half];
        let sin = &self.rope.sin[pos * half..(pos + 1) * half];
        let (x1, x2) = x.split_at(half);
        let (y1, y2) = y.split_at_mut(half);
        for k in 0..half {
            let (c, s) = (E::of(cos[k]), E::of(sign * sin[k]));
            y1[k] = x1[k] * c - x2[k] * s;
            y2[k] = x2[k] * c + x1[k] * s;
        }
    }
}

impl HostOp<1> for RopeRows {
    type Saved<E: Elem> = ();
    const BACKWARD_READS_INPUTS: bool = false;

    fn forward<E: Elem>(&self, [x]: [&[E]; 1]) -> (Vec<E>, ()) {
        (self.rotate(x, 1.0), ())
    }

    /// The transpose of a rotation is the rotation by the opposite angle.
    fn backward<E: Elem>(&self, _: [&[E]; 1], _: &(), d_out: &[E]) -> [Vec<E>; 1] {
        [self.rotate(d_out, -1.0)]
    }
}
