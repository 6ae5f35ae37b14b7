//! RMSNorm `y = x / sqrt(mean(x^2) + eps) (.) gamma` over rows of `d`, in one parallel pass
//! forward and one backward.

use rayon::prelude::*;

use super::elem::Elem;
use super::host_op::HostOp;
use super::parallel::{rows_per_task, zeroed};
use super::simd::{fold_lanes, vectorized};

/// `y = x / sqrt(mean(x^2) + eps) (.) gamma` for one row; returns `1 / sqrt(mean(x^2) + eps)`.
/// Inlined, so that a caller's [`vectorized`] loop compiles it at its SIMD width.
#[inline(always)]
pub fn rms_norm_row<E: Elem>(x: &[E], gamma: &[E], eps: f64, y: &mut [E]) -> E {
    let ms = fold_lanes(x, E::zero(), |s, v| s + v * v, |a, b| a + b) / E::of(x.len() as f64);
    let r = E::one() / (ms + E::of(eps)).sqrt();
    for ((y, &x), &g) in y.iter_mut().zip(x).zip(gamma) {
        *y = x * r * g;
    }
    r
}

/// RMSNorm of rows of width `d`; inputs `[x, gamma]`, `x` a whole number of rows.
#[derive(Debug, Clone, Copy)]
pub struct RmsNormRows {
    pub d: usize,
    pub eps: f64,
}

impl HostOp<2> for RmsNormRows {
    /// `1 / sqrt(mean(x^2) + eps)` per row.
    type Saved<E: Elem> = Vec<E>;

    fn forward<E: Elem>(&self, [x, gamma]: [&[E]; 2]) -> (Vec<E>, Vec<E>) {
        let d = self.d;
        assert!(
            gamma.len() == d && x.len() % d == 0,
            "RMSNorm: gain of {} for rows of {d} over {} values",
            gamma.len(),
            x.len()
        );
        let rows = rows_per_task(d);
        let mut out = zeroed(x.len());
        let mut rstd = vec![E::zero(); x.len() / d];
        out.par_chunks_mut(rows * d)
            .zip(rstd.par_chunks_mut(rows))
            .zip(x.par_chunks(rows * d))
            .for_each(|((out, rstd), x)| {
                vectorized(
                    #[inline(always)]
                    || {
                        for ((y, r), x) in out.chunks_mut(d).zip(rstd.iter_mut()).zip(x.chunks(d)) {
                            *r = rms_norm_row(x, gamma, self.eps, y);
                        }
                    },
                )
            });
        (out, rstd)
    }

    /// `d gamma = sum_rows dy (.) x r`; `dx = r (gamma (.) dy) - r^3 / d x sum(gamma (.) dy (.) x)`.
    fn backward<E: Elem>(&self, [x, gamma]: [&[E]; 2], rstd: &Vec<E>, dy: &[E]) -> [Vec<E>; 2] {
        let d = self.d;
        let rows = rows_per_task(d);
        let mut dx = zeroed(x.len());
        let d_gamma = dx
            .par_chunks_mut(rows * d)
            .zip(rstd.par_chunks(rows))
            .zip(x.par_chunks(rows * d).zip(dy.par_chunks(rows * d)))
            .map(|((dx, rstd), (x, dy))| {
                let (mut d_gamma, mut terms) = (vec![E::zero(); d], vec![E::zero(); d]);
                let rows = dx
                    .chunks_mut(d)
                    .zip(rstd)
                    .zip(x.chunks(d))
                    .zip(dy.chunks(d));
                vectorized(
                    #[inline(always)]
                    || {
                        for (((dx, &r), x), dy) in rows {
                            // `d_gamma` and the terms of `dot`, then their sum in lanes: a serial
                            // sum in the same loop kept it scalar.
                            let each = d_gamma.iter_mut().zip(&mut terms).zip(gamma);
                            for (((dg, t), &g), (&dy, &x)) in each.zip(dy.iter().zip(x)) {
                                *dg = *dg + dy * x * r;
                                *t = g * dy * x;
                            }
                            let dot = fold_lanes(&terms, E::zero(), |a, b| a + b, |a, b| a + b);
                            let c = r * r * r * dot / E::of(d as f64);
                            for (((dx, &g), &dy), &x) in dx.iter_mut().zip(gamma).zip(dy).zip(x) {
                                *dx = r * g * dy - c * x;
                            }
                        }
                    },
                );
                d_gamma
            })
            .reduce_with(|mut a, b| {
                a.iter_mut().zip(b).for_each(|(a, b)| *a = *a + b);
                a
            })
            .unwrap_or_else(|| vec![E::zero(); d]);
        [dx, d_gamma]
    }
}
