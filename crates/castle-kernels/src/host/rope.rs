//! RoPE on host memory: the cos/sin tables of every position ([`Rope`], float64), and the
//! rotation of rows as one fused parallel pass each way ([`RopeRows`], a [`HostOp`]). Where RoPE
//! sits inside CASTLE: `crate::rope`.

use std::sync::Arc;

use rayon::prelude::*;

use super::elem::Elem;
use super::host_op::HostOp;
use super::parallel::{rows_per_task, zeroed};
use super::simd::vectorized;

/// cos/sin of `pos * theta^(-2k/d)` for every position below `max_len`, `[max_len, d / 2]`.
#[derive(Debug, Clone)]
pub struct Rope {
    pub(crate) half: usize,
    pub(crate) max_len: usize,
    pub(crate) cos: Arc<[f64]>,
    pub(crate) sin: Arc<[f64]>,
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

    /// Rotates the row `x` of position `pos` into `y` by `sign` times its angle. Inlined, so
    /// that a caller's [`vectorized`] loop compiles it at its SIMD width.
    #[inline(always)]
    pub fn rotate<E: Elem>(&self, x: &[E], y: &mut [E], pos: usize, sign: f64) {
        let half = self.half;
        let cos = &self.cos[pos * half..(pos + 1) * half];
        let sin = &self.sin[pos * half..(pos + 1) * half];
        let (x1, x2) = x.split_at(half);
        let (y1, y2) = y.split_at_mut(half);
        for k in 0..half {
            let (c, s) = (E::of(cos[k]), E::of(sign * sin[k]));
            y1[k] = x1[k] * c - x2[k] * s;
            y2[k] = x2[k] * c + x1[k] * s;
        }
    }
}

/// The rotation of rows of `head_dim` values at positions `start .. start + len`, repeating
/// every `len` rows (the heads of a batch): a [`HostOp`] with one input.
#[derive(Debug, Clone)]
pub struct RopeRows {
    pub(crate) rope: Rope,
    pub(crate) start: usize,
    pub(crate) len: usize,
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

    /// Rotates the row `x` of the `t`-th position (`start + t`) into `y` ([`Rope::rotate`]).
    #[inline(always)]
    pub(crate) fn rotate_row<E: Elem>(&self, x: &[E], y: &mut [E], t: usize, sign: f64) {
        self.rope.rotate(x, y, self.start + t, sign);
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
