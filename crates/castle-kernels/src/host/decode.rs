//! One decoding step of each attention on host memory (docs/castle.md, section 4): the new
//! position's output from one sequence's cache, preallocated to the model's context and written
//! in place, so that a step allocates nothing and costs `O(t d)` per head.
//!
//! - [`KvRows`]: the baseline's keys and values. A step appends the new position's `k, v` and
//!   runs causal softmax attention from its `q` over every cached position.
//! - [`UqKvRows`]: CASTLE's lookahead keys `U`, lookahead queries `Qu`, causal keys `Kc` and
//!   values `Vc`. A step first adds `sigmoid(s qU_i . kU_t) vU_t` to every row `U_i` still inside
//!   the lookahead window (all earlier rows without one; eq. 13), sets `U_t = 0`, appends
//!   `qU_t, kC_t, vC_t`, then scores `s qC_t . kC_j - SiLU(s qC'_t . U_j)` over every position
//!   `j <= t` (eq. 5-8; `qC'_t` is `qC_t` before RoPE, see `crate::rope`).
//!
//! Each head keeps its own `[capacity, d]` rows per field and two scratch rows: its scores,
//! and the lookahead weights or scores that go through a sigmoid, which a pass of their own
//! computes in SIMD lanes (inside the loop of dot products, the sigmoid ran one at a time).
//! Heads run in parallel on rayon's pool once a step's work outweighs scheduling.

use rayon::prelude::*;

use super::elem::Elem;
use super::simd::{dot, fold_lanes, vectorized};

/// Cached values (positions x head dimension x heads) below which a step runs its heads on the
/// calling thread: rayon's scheduling, microseconds, would outweigh the work.
pub(crate) const PARALLEL_WORK: usize = 64 * 1024;

/// The size of one sequence's cache of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheShape {
    pub heads: usize,
    pub d: usize,
    /// Positions it can hold (the model's context).
    pub capacity: usize,
}

/// One head's rows of `F` fields, `[capacity, d]` each, and its scratch rows.
#[derive(Debug, Clone)]
struct Head<E, const F: usize> {
    fields: [Vec<E>; F],
    scores: Vec<E>,
    lookahead: Vec<E>,
}

/// One sequence's cache of one layer: `F` fields per head, positions `0..len` filled.
#[derive(Debug, Clone)]
struct Rows<E, const F: usize> {
    shape: CacheShape,
    len: usize,
    heads: Vec<Head<E, F>>,
}

impl<E: Elem, const F: usize> Rows<E, F> {
    fn new(shape: CacheShape) -> Self {
        let head = Head {
            fields: std::array::from_fn(|_| vec![E::zero(); shape.capacity * shape.d]),
            scores: vec![E::zero(); shape.capacity],
            lookahead: vec![E::zero(); shape.capacity],
        };
        Self {
            shape,
            len: 0,
            heads: vec![head; shape.heads],
        }
    }

    /// Makes room for `n` more positions; returns the first. Panics past the capacity (callers
    /// check the model's context first).
    fn reserve(&mut self, n: usize) -> usize {
        let at = self.len;
        assert!(
            at + n <= self.shape.capacity,
            "{} positions exceed the cache's {}",
            at + n,
            self.shape.capacity
        );
        self.len += n;
        at
    }

    /// Writes `n` positions of `rows` (`[heads, n, d]`) into field `f` at `at..at + n`.
    fn write(&mut self, f: usize, rows: &[E], at: usize, n: usize) {
        let d = self.shape.d;
        assert_eq!(
            rows.len(),
            self.shape.heads * n * d,
            "rows of {n} positions"
        );
        if n == 0 {
            return;
        }
        for (head, src) in self.heads.iter_mut().zip(rows.chunks(n * d)) {
            head.fields[f][at * d..(at + n) * d].copy_from_slice(src);
        }
    }

    /// Runs `step(h, head, out_h)` for every head, `out` split into rows of `d`; in parallel
    /// when the `t` cached positions make enough work.
    fn each_head(
        &mut self,
        t: usize,
        out: &mut [E],
        step: impl Fn(usize, &mut Head<E, F>, &mut [E]) + Sync,
    ) {
        let d = self.shape.d;
        let run = |(h, (head, out)): (usize, (&mut Head<E, F>, &mut [E]))| step(h, head, out);
        if t * d * self.shape.heads < PARALLEL_WORK {
            self.heads
                .iter_mut()
                .zip(out.chunks_mut(d))
                .enumerate()
                .for_each(run);
        } else {
            let heads = self.heads.par_iter_mut().zip(out.par_chunks_mut(d));
            heads.enumerate().for_each(run);
        }
    }
}

/// Row `h` of a `[heads, d]` input.
fn row<E>(x: &[E], h: usize, d: usize) -> &[E] {
    &x[h * d..(h + 1) * d]
}

/// The baseline's KV cache of one sequence and layer.
#[derive(Debug, Clone)]
pub struct KvRows<E>(Rows<E, 2>);

impl<E: Elem> KvRows<E> {
    const K: usize = 0;
    const V: usize = 1;

    pub fn new(shape: CacheShape) -> Self {
        Self(Rows::new(shape))
    }

    /// Cached positions.
    pub fn len(&self) -> usize {
        self.0.len
    }

    /// Empties the cache, keeping its memory for the next sequence.
    pub fn clear(&mut self) {
        self.0.len = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }

    /// Appends `n` positions of `k` and `v`, each `[heads, n, d]`: a prompt's, after its
    /// forward pass.
    pub fn extend(&mut self, k: &[E], v: &[E], n: usize) {
        let at = self.0.reserve(n);
        self.0.write(Self::K, k, at, n);
        self.0.write(Self::V, v, at, n);
    }

    /// One new position: `q, k, v` (`[heads, d]` each) in, its output `[heads, d]` into `out`.
    pub fn step(&mut self, q: &[E], k: &[E], v: &[E], out: &mut [E]) {
        let d = self.0.shape.d;
        let t = self.0.reserve(1);
        self.0.each_head(t + 1, out, |h, head, out| {
            let [kh, vh] = &mut head.fields;
            kh[t * d..(t + 1) * d].copy_from_slice(row(k, h, d));
            vh[t * d..(t + 1) * d].copy_from_slice(row(v, h, d));
            let scratch = [&mut head.scores[..=t], &mut head.lookahead[..=t]];
            attend(row(q, h, d), kh, None, vh, scratch, out);
        });
    }
}

/// CASTLE's UQ-KV cache of one sequence and layer, with its lookahead window `W` (eq. 9).
#[derive(Debug, Clone)]
pub struct UqKvRows<E> {
    rows: Rows<E, 4>,
    window: Option<usize>,
}

/// What a CASTLE step takes for the new position, `[heads, d]` each: the seven projections in
/// `crate::reference::CastleHeads`' order.
pub struct CastleStep<'a, E> {
    pub qu: &'a [E],
    pub ku: &'a [E],
    pub vu: &'a [E],
    pub qc: &'a [E],
    pub kc: &'a [E],
    pub vc: &'a [E],
    pub qc_nope: &'a [E],
}

impl<E: Elem> UqKvRows<E> {
    const U: usize = 0;
    const QU: usize = 1;
    const KC: usize = 2;
    const VC: usize = 3;

    pub fn new(shape: CacheShape, window: Option<usize>) -> Self {
        Self {
            rows: Rows::new(shape),
            window,
        }
    }

    /// Cached positions.
    pub fn len(&self) -> usize {
        self.rows.len
    }

    /// Empties the cache, keeping its memory for the next sequence.
    pub fn clear(&mut self) {
        self.rows.len = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.rows.len == 0
    }

    /// Appends a prompt's `n` positions to an empty cache: its final lookahead keys `u` (eq. 3-4
    /// at its last position) and `qu, kc, vc`, each `[heads, n, d]`.
    pub fn prefill(&mut self, [u, qu, kc, vc]: [&[E]; 4], n: usize) {
        assert!(self.is_empty(), "a prompt fills an empty cache");
        let at = self.rows.reserve(n);
        for (f, rows) in [(Self::U, u), (Self::QU, qu), (Self::KC, kc), (Self::VC, vc)] {
            self.rows.write(f, rows, at, n);
        }
    }

    /// One new position: eq. 13 on the lookahead keys, then eq. 5-8 for its output `[heads, d]`
    /// into `out`.
    pub fn step(&mut self, x: &CastleStep<E>, out: &mut [E]) {
        let d = self.rows.shape.d;
        let t = self.rows.reserve(1);
        let first = self.window.map_or(0, |w| t.saturating_sub(w));
        let s = E::of(1.0 / (d as f64).sqrt());
        self.rows.each_head(t + 1, out, |h, head, out| {
            let [u, qu, kc, vc] = &mut head.fields;
            let (ku_t, vu_t) = (row(x.ku, h, d), row(x.vu, h, d));
            let weights = &mut head.lookahead[first..t];
            vectorized(
                #[inline(always)]
                || {
                    // Eq. 13: `u_i^t = u_i^{t-1} + sigmoid(s qU_i . kU_t) vU_t` inside the window.
                    for (i, w) in (first..t).zip(weights.iter_mut()) {
                        *w = s * dot(row(qu, i, d), ku_t);
                    }
                    for w in weights.iter_mut() {
                        *w = E::sigmoid(*w);
                    }
                    for (i, &w) in (first..t).zip(weights.iter()) {
                        axpy(w, vu_t, &mut u[i * d..(i + 1) * d]);
                    }
                },
            );
            u[t * d..(t + 1) * d].fill(E::zero()); // u_t^t = 0
            qu[t * d..(t + 1) * d].copy_from_slice(row(x.qu, h, d));
            kc[t * d..(t + 1) * d].copy_from_slice(row(x.kc, h, d));
            vc[t * d..(t + 1) * d].copy_from_slice(row(x.vc, h, d));
            let lookahead = Some((row(x.qc_nope, h, d), &u[..]));
            let scratch = [&mut head.scores[..=t], &mut head.lookahead[..=t]];
            attend(row(x.qc, h, d), kc, lookahead, vc, scratch, out);
        });
    }
}

/// `softmax_j(s q . k_j - SiLU(s q' . u_j)) v_j` over the first `scores.len()` rows of `k`, `v`
/// (and `u`) into `out`; the lookahead term only when `lookahead = Some((q', u))` (eq. 5-8).
/// `[scores, su]` are scratch rows as long as the context.
fn attend<E: Elem>(
    q: &[E],
    k: &[E],
    lookahead: Option<(&[E], &[E])>,
    v: &[E],
    [scores, su]: [&mut [E]; 2],
    out: &mut [E],
) {
    let d = q.len();
    let s = E::of(1.0 / (d as f64).sqrt());
    vectorized(
        #[inline(always)]
        || {
            for (j, z) in scores.iter_mut().enumerate() {
                *z = s * dot(q, row(k, j, d));
            }
            if let Some((q_nope, u)) = lookahead {
                for (j, su) in su.iter_mut().enumerate() {
                    *su = s * dot(q_nope, row(u, j, d));
                }
                for (z, &su) in scores.iter_mut().zip(su.iter()) {
                    *z = *z - su * E::sigmoid(su);
                }
            }
            let max = fold_lanes(scores, E::neg_infinity(), E::max, E::max);
            for z in scores.iter_mut() {
                *z = E::exp_nonpositive(*z - max);
            }
            let sum = fold_lanes(scores, E::zero(), |a, z| a + z, |a, b| a + b);
            let inv = E::one() / sum;
            out.fill(E::zero());
            for (j, &p) in scores.iter().enumerate() {
                axpy(p * inv, row(v, j, d), out);
            }
        },
    );
}

/// `y += a x`.
#[inline(always)]
fn axpy<E: Elem>(a: E, x: &[E], y: &mut [E]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = *y + a * x;
    }
}
