//! Shared test helpers: random tensors, and the independent slow reference of docs/castle.md,
//! section 1 (CASTLE's output position by position, in f64 on plain vectors).
#![allow(dead_code)] // castle-model's tests include this file too, and use a different subset

use burn::prelude::*;
use castle_kernels::reference::CastleHeads;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Uniform values in [-scale, scale].
pub fn random_vec(rng: &mut StdRng, n: usize, scale: f64) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

pub fn tensor4<B: Backend>(v: &[f64], shape: [usize; 4], device: &B::Device) -> Tensor<B, 4> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), device)
}

pub fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data().convert::<f64>().to_vec::<f64>().unwrap()
}

pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// `|a - b| / |b|` over all the vectors together; `|a - b|` where `b` is all zeros (e.g. a
/// vocabulary of one: every loss and gradient is 0), NaN where `a` has a NaN.
pub fn relative_error(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    let sq = |x: f64| x * x;
    let diff: f64 = a
        .iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len(), "length mismatch");
            x.iter().zip(y).map(|(p, q)| sq(p - q))
        })
        .sum();
    let norm: f64 = b.iter().flatten().map(|&x| sq(x)).sum();
    (diff / if norm > 0.0 { norm } else { 1.0 }).sqrt()
}

/// The seven per-head inputs as flat `[b, h, l, d]` vectors, in `CastleHeads` field order.
#[derive(Clone)]
pub struct RawHeads {
    pub shape: [usize; 4],
    pub qu: Vec<f64>,
    pub ku: Vec<f64>,
    pub vu: Vec<f64>,
    pub qc: Vec<f64>,
    pub kc: Vec<f64>,
    pub vc: Vec<f64>,
    pub qc_nope: Vec<f64>,
}

impl RawHeads {
    pub fn random(shape: [usize; 4], seed: u64) -> Self {
        let mut r = rng(seed);
        let n = shape.iter().product();
        let mut next = || random_vec(&mut r, n, 1.5);
        Self {
            shape,
            qu: next(),
            ku: next(),
            vu: next(),
            qc: next(),
            kc: next(),
            vc: next(),
            qc_nope: next(),
        }
    }

    pub fn fields_mut(&mut self) -> [&mut Vec<f64>; 7] {
        [
            &mut self.qu,
            &mut self.ku,
            &mut self.vu,
            &mut self.qc,
            &mut self.kc,
            &mut self.vc,
            &mut self.qc_nope,
        ]
    }

    pub fn to_tensors<B: Backend>(&self, device: &B::Device) -> CastleHeads<B> {
        let t = |v: &Vec<f64>| tensor4::<B>(v, self.shape, device);
        CastleHeads {
            qu: t(&self.qu),
            ku: t(&self.ku),
            vu: t(&self.vu),
            qc: t(&self.qc),
            kc: t(&self.kc),
            vc: t(&self.vc),
            qc_nope: t(&self.qc_nope),
        }
    }

    /// Positions `range` of every field (for feeding a decoder one token at a time).
    pub fn positions<B: Backend>(
        &self,
        range: std::ops::Range<usize>,
        device: &B::Device,
    ) -> CastleHeads<B> {
        self.to_tensors::<B>(device).positions(range)
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// docs/castle.md, section 1, straight from the definition: for every t, materialise every
/// lookahead key `u_i^t` (eq. 3-4, with the SWL window of eq. 9), score with eq. 5-8, and return
/// `o_t`.
/// Output `[b, h, l, d]` flattened, in float64.
pub fn reference_output(x: &RawHeads, window: Option<usize>) -> Vec<f64> {
    let [nb, nh, l, d] = x.shape;
    let s = 1.0 / (d as f64).sqrt();
    let mut out = vec![0.0; nb * nh * l * d];
    for bh in 0..nb * nh {
        let row = |v: &Vec<f64>, i: usize| v[(bh * l + i) * d..(bh * l + i + 1) * d].to_vec();
        for t in 0..l {
            // U^t: u_i^t = sum_{i < j <= t, j <= i + W} sigmoid(s qU_i . kU_j) vU_j
            let mut u = vec![vec![0.0; d]; t + 1];
            for (i, u_i) in u.iter_mut().enumerate() {
                for j in i + 1..=t {
                    if window.is_some_and(|w| j > i + w) {
                        continue;
                    }
                    let weight = sigmoid(s * dot(&row(&x.qu, i), &row(&x.ku, j)));
                    for (acc, v) in u_i.iter_mut().zip(row(&x.vu, j)) {
                        *acc += weight * v;
                    }
                }
            }
            let logits: Vec<f64> = (0..=t)
                .map(|i| {
                    let s_c = s * dot(&row(&x.qc, t), &row(&x.kc, i));
                    let s_u = s * dot(&row(&x.qc_nope, t), &u[i]);
                    s_c - s_u * sigmoid(s_u)
                })
                .collect();
            let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = logits.iter().map(|z| (z - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            for (i, w) in weights.iter().enumerate() {
                for (k, v) in row(&x.vc, i).iter().enumerate() {
                    out[(bh * l + t) * d + k] += w / total * v;
                }
            }
        }
    }
    out
}
