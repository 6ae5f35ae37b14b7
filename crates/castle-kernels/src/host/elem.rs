//! [`Elem`]: the float types the host kernels run in.

use std::fmt::Debug;

use num_traits::Float;

/// A float type the kernels run in: `f32` for training, `f64` for the reference tests.
pub trait Elem: Float + bytemuck::Pod + Send + Sync + Debug + 'static {
    /// `self` as `f64`, exactly.
    fn to_f64_exact(self) -> f64;

    fn of(x: f64) -> Self {
        // Cannot fail: `Elem` is f32 or f64, and num-traits' f64 -> f32/f64 cast always returns
        // `Some` (an out-of-range value becomes infinity, NaN stays NaN).
        Self::from(x).expect("a float converts to a float")
    }

    /// `exp(x)` for `x <= 0` (softmax and sigmoid need no other), written so that loops over it
    /// vectorise.
    #[inline(always)]
    fn exp_nonpositive(x: Self) -> Self {
        x.exp()
    }

    /// `1 / (1 + exp(-x))`, stable for both signs (and branch-free, so loops over it vectorise).
    #[inline(always)]
    fn sigmoid(x: Self) -> Self {
        let t = Self::exp_nonpositive(-x.abs());
        let num = if x >= Self::zero() { Self::one() } else { t };
        num / (Self::one() + t)
    }
}

impl Elem for f32 {
    fn to_f64_exact(self) -> f64 {
        self as f64
    }

    /// Cephes' `expf` without its branches: `2^n p(r)` with `x = n ln 2 + r`, `|r| <= ln 2 / 2`,
    /// within 2 ulp of `f32::exp` on `[-87, 0]`; below that it returns `exp(-87)` (about
    /// `1.6e-38`) where the true value is smaller still.
    #[inline(always)]
    fn exp_nonpositive(x: f32) -> f32 {
        const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23
        let x = x.clamp(-87.0, 0.0);
        // Round x / ln 2 to the nearest integer by the 1.5 * 2^23 trick (vectorises, unlike round()).
        let shifted = x * std::f32::consts::LOG2_E + ROUND;
        let n = shifted - ROUND;
        let r = n.mul_add(2.121_944_4e-4, n.mul_add(-0.693_359_4, x));
        // Horner's rule in fused multiply-adds (one instruction each under `simd::vectorized`).
        let p = [
            1.398_2e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ]
        .into_iter()
        .fold(1.987_569_1e-4, |p, c| p.mul_add(r, c));
        let y = (p * r).mul_add(r, r) + 1.0;
        // 2^n from the integer `n` in the low bits of `shifted` (`n as i32`, a saturating
        // conversion, would not vectorise).
        let biased = shifted
            .to_bits()
            .wrapping_sub(ROUND.to_bits())
            .wrapping_add(127);
        y * f32::from_bits(biased << 23)
    }
}

impl Elem for f64 {
    fn to_f64_exact(self) -> f64 {
        self
    }
}
