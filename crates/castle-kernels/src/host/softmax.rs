//! Softmax over one row of values, computed in place: what causal attention's softmax
//! ([`super::causal_softmax`]) and the losses ([`super::cross_entropy`], [`super::lm_loss`])
//! share. Each reduction runs in [`fold_lanes`]' lanes, so the result is the same bits at any
//! SIMD width.

use super::elem::Elem;
use super::simd::fold_lanes;

/// `log sum_i exp(z_i)`, shifted by the row's maximum, each reduction in [`fold_lanes`]' lanes.
/// Inlined, so that a caller's [`vectorized`] loop compiles it at its SIMD width.
#[inline(always)]
pub(crate) fn logsumexp<E: Elem>(z: &[E]) -> E {
    let max = fold_lanes(z, E::neg_infinity(), E::max, E::max);
    let sum = fold_lanes(
        z,
        E::zero(),
        |s, v| s + E::exp_nonpositive(v - max),
        |a, b| a + b,
    );
    max + sum.ln()
}

/// A row of logits `z` turned in place into `softmax(z)`; returns `logsumexp(z)`. One `exp`
/// per element, where [`logsumexp`] then `cross_entropy::softmax_grad_in_place` take two. Inlined, as
/// [`logsumexp`] is.
#[inline(always)]
pub(crate) fn softmax_in_place<E: Elem>(z: &mut [E]) -> E {
    let max = fold_lanes(z, E::neg_infinity(), E::max, E::max);
    for v in z.iter_mut() {
        *v = E::exp_nonpositive(*v - max);
    }
    let sum = fold_lanes(z, E::zero(), |s, v| s + v, |a, b| a + b);
    let inv = E::one() / sum;
    for v in z.iter_mut() {
        *v = *v * inv;
    }
    max + sum.ln()
}
