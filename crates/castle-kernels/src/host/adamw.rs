//! One AdamW update (decoupled weight decay) of one parameter tensor on host memory, in one
//! parallel pass: it reads the parameter, its gradient and both moments once and writes the
//! new parameter and moments once. burn's `AdamW` runs the same update as about a dozen
//! single-threaded tensor ops, each a pass over memory.
//!
//! The arithmetic is burn 0.21's `AdamW` (`burn-optim/src/optim/adamw.rs`), op for op in f32,
//! so the two agree bit for bit (`castle-train`'s optimizer tests check it):
//!
//! ```text
//! m1 = b1 m1 + (1 - b1) g                  m2 = b2 m2 + (1 - b2) g^2
//! p  = (1 - lr wd) p - lr (m1 / (1 - b1^t)) / (sqrt(m2 / (1 - b2^t)) + eps)
//! ```

use std::mem::MaybeUninit;

use burn::prelude::*;

use super::host_array::{from_host, ReadHost};
use super::parallel::written_in_chunks;

/// The constants of one AdamW step `t` (counted from 1) at learning rate `lr`, in f32 as burn
/// applies them.
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    /// `1 - lr wd`, the decay factor (`1` without weight decay).
    pub decay: f32,
    pub lr: f32,
    /// `1 - b1^t` and `1 - b2^t`, the bias corrections.
    pub correction_1: f32,
    pub correction_2: f32,
}

impl AdamWStep {
    /// Step `t` at learning rate `lr` (both as burn computes them: `lr wd` in f64, the bias
    /// corrections in f32).
    pub fn new(beta_1: f32, beta_2: f32, epsilon: f32, weight_decay: f32, lr: f64, t: i32) -> Self {
        Self {
            beta_1,
            beta_2,
            epsilon,
            decay: (1.0 - lr * weight_decay as f64) as f32,
            lr: lr as f32,
            correction_1: 1.0 - beta_1.powi(t),
            correction_2: 1.0 - beta_2.powi(t),
        }
    }
}

/// The updated parameter and moments: `[p, m1, m2]`. `moments` is `None` at the first step
/// (both moments zero).
pub fn adamw_step(
    step: &AdamWStep,
    p: &[f32],
    g: &[f32],
    moments: Option<(&[f32], &[f32])>,
) -> [Vec<f32>; 3] {
    const CHUNK: usize = 16 * 1024;
    let n = p.len();
    assert_eq!(g.len(), n, "AdamW: gradient and parameter sizes differ");
    if let Some((m1, m2)) = moments {
        assert!(m1.len() == n && m2.len() == n, "AdamW: moment sizes differ");
    }
    let chunk = |c: usize, [p_new, m1_new, m2_new]: [&mut [MaybeUninit<f32>]; 3]| {
        let at = c * CHUNK..c * CHUNK + p_new.len();
        let old = moments.map(|(m1, m2)| (&m1[at.clone()], &m2[at.clone()]));
        update(step, &p[at.clone()], &g[at], old, p_new, m1_new, m2_new);
    };
    // SAFETY: `update` writes every element of the three chunks.
    unsafe { written_in_chunks(n, CHUNK, chunk) }
}

/// [`adamw_step`] on f32 tensors, each read by `read`: the new `[p, m1, m2]`, each of `p`'s
/// shape.
pub(crate) fn adamw_step_tensors<B: Backend, const D: usize>(
    step: &AdamWStep,
    [p, g]: [Tensor<B, D>; 2],
    moments: Option<[Tensor<B, D>; 2]>,
    read: ReadHost<B, f32>,
) -> [Tensor<B, D>; 3] {
    let (dims, device, n) = (p.dims(), p.device(), p.shape().num_elements());
    let host = |t: Tensor<B, D>| read(t.reshape([n]));
    let (p, g) = (host(p), host(g));
    let moments = moments.map(|[m1, m2]| (host(m1), host(m2)));
    adamw_step(step, &p, &g, moments.as_ref().map(|(a, b)| (&**a, &**b)))
        .map(|v| from_host(v, dims, &device))
}

/// One chunk of [`adamw_step`].
fn update(
    s: &AdamWStep,
    p: &[f32],
    g: &[f32],
    old: Option<(&[f32], &[f32])>,
    p_new: &mut [MaybeUninit<f32>],
    m1_new: &mut [MaybeUninit<f32>],
    m2_new: &mut [MaybeUninit<f32>],
) {
    let (factor_1, factor_2) = (1.0 - s.beta_1, 1.0 - s.beta_2);
    for i in 0..p.len() {
        let (m1_old, m2_old) = old.map_or((0.0, 0.0), |(m1, m2)| (m1[i], m2[i]));
        let gi = g[i];
        // burn: moment_1.mul_scalar(b1).add(grad.mul_scalar(1 - b1)); the first step's
        // `grad.mul_scalar(1 - b1)` is the same value, as `0 b1 + x = x`.
        let m1 = m1_old * s.beta_1 + gi * factor_1;
        let m2 = m2_old * s.beta_2 + (gi * gi) * factor_2;
        let delta = (m1 / s.correction_1) / ((m2 / s.correction_2).sqrt() + s.epsilon);
        p_new[i].write(p[i] * s.decay - delta * s.lr);
        m1_new[i].write(m1);
        m2_new[i].write(m2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The update written out in f64 from its definition.
    fn reference(s: &AdamWStep, p: f64, g: f64, m1: f64, m2: f64) -> [f64; 3] {
        let (b1, b2) = (s.beta_1 as f64, s.beta_2 as f64);
        let m1 = b1 * m1 + (1.0 - b1) * g;
        let m2 = b2 * m2 + (1.0 - b2) * g * g;
        let m1_hat = m1 / s.correction_1 as f64;
        let m2_hat = m2 / s.correction_2 as f64;
        let p = s.decay as f64 * p - s.lr as f64 * m1_hat / (m2_hat.sqrt() + s.epsilon as f64);
        [p, m1, m2]
    }

    #[test]
    fn matches_the_definition_at_every_chunk_boundary() {
        // Longer than one chunk and not a multiple of it; the second step carries moments.
        let n = 16 * 1024 * 2 + 37;
        let p: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let g: Vec<f32> = (0..n).map(|i| (i as f32 * 0.73).cos() * 1e-2).collect();
        let first = AdamWStep::new(0.9, 0.95, 1e-8, 0.1, 3e-3, 1);
        let [p1, m1, m2] = adamw_step(&first, &p, &g, None);
        let second = AdamWStep::new(0.9, 0.95, 1e-8, 0.1, 2e-3, 2);
        let [p2, m1b, m2b] = adamw_step(&second, &p1, &g, Some((&m1, &m2)));
        for i in [0, 1, 16 * 1024 - 1, 16 * 1024, n - 1] {
            let want = reference(&first, p[i] as f64, g[i] as f64, 0.0, 0.0);
            let got = [p1[i], m1[i], m2[i]];
            let want2 = reference(
                &second,
                p1[i] as f64,
                g[i] as f64,
                m1[i] as f64,
                m2[i] as f64,
            );
            let got2 = [p2[i], m1b[i], m2b[i]];
            for (w, x) in want.iter().zip(got).chain(want2.iter().zip(got2)) {
                assert!(
                    (w - x as f64).abs() <= 1e-6 * w.abs().max(1e-6),
                    "element {i}: {x} against {w}"
                );
            }
        }
    }
}
