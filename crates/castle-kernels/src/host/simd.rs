//! The kernels' elementwise loops and row reductions at the CPU's widest SIMD, chosen at run
//! time.
//!
//! The workspace builds for baseline x86-64, where a loop over `f32` packs at most four lanes
//! (SSE). [`vectorized`] runs a closure compiled again for AVX-512 or AVX2 + FMA (`pulp`'s
//! `Arch`, detected once per process) when the CPU has them, and as it is otherwise. Only code
//! inlined into the closure is recompiled: every function its loop calls must be
//! `#[inline(always)]`, and the closure itself too (`vectorized(#[inline(always)] || ...)`).
//! Float results are those of the plain loop: wider registers change neither the operations
//! nor their order (Rust fuses `a * b + c` only where told to, `mul_add`, and never reorders
//! sums). A sum or max over a row
//! packs only when written in independent lanes, [`fold_lanes`].

use std::sync::LazyLock;

use pulp::Arch;

use super::elem::Elem;

/// The instruction set [`vectorized`] compiles for, detected on first use.
static ARCH: LazyLock<Arch> = LazyLock::new(Arch::new);

/// `f()`, run as code compiled for the widest instruction set this CPU has.
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    ARCH.dispatch(f)
}

/// Independent accumulators of [`fold_lanes`]: a float sum or max in one accumulator is a
/// serial chain LLVM may not reorder, so it compiles to scalar code; sixteen lanes compile to
/// packed instructions, one AVX-512 register of `f32` (two AVX2 ones, four SSE ones).
pub const LANES: usize = 16;

/// The reduction `step(..step(step(init, x[0]), x[1]).., x[n-1])` in [`LANES`] interleaved
/// accumulators, which `merge` combines: for a sum or a max, the serial fold's value up to float
/// rounding, in SIMD instructions. (Indexing the chunks instead of zipping them made LLVM
/// vectorise across chunks, with gathers.)
#[inline(always)]
pub fn fold_lanes<E: Elem>(
    x: &[E],
    init: E,
    step: impl Fn(E, E) -> E,
    merge: impl Fn(E, E) -> E,
) -> E {
    let (chunks, rest) = x.as_chunks::<LANES>();
    let mut lanes = [init; LANES];
    for c in chunks {
        for (acc, &v) in lanes.iter_mut().zip(c) {
            *acc = step(*acc, v);
        }
    }
    let tail = rest.iter().fold(init, |acc, &v| step(acc, v));
    lanes.into_iter().fold(tail, merge)
}

/// `a . b` over `a`'s length in [`LANES`] interleaved accumulators, as [`fold_lanes`] sums.
#[inline(always)]
pub fn dot<E: Elem>(a: &[E], b: &[E]) -> E {
    let (a_chunks, a_rest) = a.as_chunks::<LANES>();
    let (b_chunks, b_rest) = b[..a.len()].as_chunks::<LANES>();
    let mut lanes = [E::zero(); LANES];
    for (x, y) in a_chunks.iter().zip(b_chunks) {
        for ((acc, &p), &q) in lanes.iter_mut().zip(x).zip(y) {
            *acc = *acc + p * q;
        }
    }
    let tail = a_rest
        .iter()
        .zip(b_rest)
        .fold(E::zero(), |acc, (&p, &q)| acc + p * q);
    lanes.into_iter().fold(tail, |x, y| x + y)
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::super::softmax::logsumexp;
    use super::*;

    /// Lengths around the 4, 8 and 16 lanes of SSE, AVX2 and AVX-512 (in `f32`) and
    /// [`LANES`], and one vocabulary-sized row.
    const LENGTHS: [usize; 9] = [1, 3, 7, 8, 9, 15, 16, 17, 4099];

    fn random<E: Elem>(rng: &mut StdRng, n: usize, scale: f64) -> Vec<E> {
        (0..n)
            .map(|_| E::of(rng.random_range(-scale..scale)))
            .collect()
    }

    /// The dispatched loop gives the plain loop's bits: the log-sum-exp (its lanes and `exp`'s
    /// bit trick) and the sigmoid over a slice, in `f32` and `f64`.
    fn same_bits_as_plain_loop<E: Elem>(to_bits: fn(E) -> u64) {
        let mut rng = StdRng::seed_from_u64(11);
        for n in LENGTHS {
            // Logits out to +-60: exp's arguments reach below its clamp at -87.
            let z = random::<E>(&mut rng, n, 60.0);
            let plain = logsumexp(&z);
            let wide = vectorized(
                #[inline(always)]
                || logsumexp(&z),
            );
            assert_eq!(to_bits(wide), to_bits(plain), "logsumexp of {n} values");
            let plain: Vec<u64> = z.iter().map(|&x| to_bits(E::sigmoid(x))).collect();
            let wide = vectorized(
                #[inline(always)]
                || {
                    z.iter()
                        .map(|&x| to_bits(E::sigmoid(x)))
                        .collect::<Vec<_>>()
                },
            );
            assert_eq!(wide, plain, "sigmoid of {n} values");
        }
    }

    #[test]
    fn vectorized_f32_loops_give_the_plain_loops_bits() {
        same_bits_as_plain_loop::<f32>(|x| x.to_bits().into());
    }

    #[test]
    fn vectorized_f64_loops_give_the_plain_loops_bits() {
        same_bits_as_plain_loop::<f64>(f64::to_bits);
    }

    /// [`fold_lanes`] against the serial fold: a sum of squares (within the bound
    /// `n eps sum |terms|` of either summation order) and a max (exactly), at lengths around
    /// and below [`LANES`].
    #[test]
    fn fold_lanes_is_the_serial_fold() {
        let mut rng = StdRng::seed_from_u64(12);
        for n in LENGTHS.into_iter().chain([0, 2 * LANES, 2 * LANES + 5]) {
            let x = random::<f64>(&mut rng, n, 3.0);
            let serial = x.iter().fold(0.0, |s, &v| s + v * v);
            let lanes = fold_lanes(&x, 0.0, |s, v| s + v * v, |s, t| s + t);
            assert!(
                (lanes - serial).abs() <= n as f64 * f64::EPSILON * serial,
                "sum of {n} squares: {lanes} against {serial}"
            );
            let max = fold_lanes(&x, f64::NEG_INFINITY, f64::max, f64::max);
            assert_eq!(
                max,
                x.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                "max of {n}"
            );
        }
    }

    /// On a CPU with AVX-512 the dispatch runs the AVX-512 code (pulp's `x86-v4` feature is on).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn dispatch_runs_avx512_code_where_the_cpu_has_it() {
        let avx512 = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512cd")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vl");
        assert_eq!(
            matches!(*ARCH, Arch::V4(_)),
            avx512,
            "dispatching to {:?}",
            *ARCH
        );
    }
}
