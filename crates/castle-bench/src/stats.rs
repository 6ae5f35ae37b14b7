//! Medians, sizes and timing shared by the tables.

use std::time::Instant;

use burn::prelude::*;
use burn::tensor::Distribution;

use crate::alloc;

pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

pub fn median_usize(v: &[usize]) -> usize {
    median(&v.iter().map(|&x| x as f64).collect::<Vec<_>>()) as usize
}

pub fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Runs `f`, returning seconds and the peak heap bytes above the usage at the start.
pub fn measure(f: impl FnOnce()) -> (f64, usize) {
    alloc::reset_peak();
    let base = alloc::current();
    let t = Instant::now();
    f();
    let dt = t.elapsed().as_secs_f64();
    (dt, alloc::peak().saturating_sub(base))
}

/// GFLOP/s of an `n x n x n` matrix product on the (non-autodiff) backend: the best of at least
/// ten timed products after a warm-up, since MFU divides by what the machine can reach (a
/// median on a shared machine reads low, which would flatter MFU).
pub fn matmul_rate<B: Backend>(n: usize, reps: usize) -> f64 {
    let device = B::Device::default();
    let a = Tensor::<B, 2>::random([n, n], Distribution::Normal(0.0, 1.0), &device);
    let b = Tensor::<B, 2>::random([n, n], Distribution::Normal(0.0, 1.0), &device);
    let mut times = vec![];
    for rep in 0..=reps.max(10) {
        let t = Instant::now();
        let c = a.clone().matmul(b.clone());
        B::sync(&device).expect("backend sync");
        drop(c);
        if rep > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let best = times.iter().copied().fold(f64::INFINITY, f64::min);
    2.0 * (n as f64).powi(3) / best / 1e9
}

/// CPU seconds (user + system) this process has used so far, all threads.
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes one `rusage` into the zeroed value we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// A target's verdict in the report.
pub(crate) fn yes(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**not met**"
    }
}
