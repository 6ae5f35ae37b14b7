//! A bias-free projection `y = x W` of a few rows at a time, into buffers the caller keeps: a
//! decoding step's, one row per sequence. The weight stays in burn's `Linear` layout
//! (`[d_in, d_out]`), which read as `W^T` is column-major, the layout `gemm`'s microkernel reads
//! its left factor in: `y^T = W^T x^T` costs no packing of the weight, and splits into blocks
//! of output columns, contiguous rows of `y^T`, one product per worker.

use rayon::prelude::*;

use super::elem::Elem;
use super::gemm::{gemm, Mat, MatMut};

/// Multiply-adds below which a projection runs on the calling thread, and the least each
/// parallel block gets: rayon's scheduling costs microseconds.
const PARALLEL_WORK: usize = 64 * 1024;

/// `W: [d_in, d_out]`, row-major.
#[derive(Debug, Clone)]
pub struct Projection<E> {
    w: Vec<E>,
    d_in: usize,
    d_out: usize,
}

impl<E: Elem> Projection<E> {
    pub fn new(w: Vec<E>, d_in: usize, d_out: usize) -> Self {
        assert_eq!(w.len(), d_in * d_out, "a {d_in} x {d_out} weight");
        Self { w, d_in, d_out }
    }

    pub fn d_in(&self) -> usize {
        self.d_in
    }

    pub fn d_out(&self) -> usize {
        self.d_out
    }

    /// `y = x W` for `n` rows `x: [n, d_in]` into `y: [n, d_out]`; `yt` (at least `n d_out`
    /// long) holds `y^T` on the way when `n > 1`.
    pub fn apply(&self, x: &[E], n: usize, yt: &mut [E], y: &mut [E]) {
        let (d_in, d_out) = (self.d_in, self.d_out);
        assert!(
            x.len() == n * d_in && y.len() == n * d_out && yt.len() >= n * d_out,
            "projection of {n} rows of {d_in} to {d_out}"
        );
        if n == 1 {
            self.transposed_into(x, n, y); // `y^T` of one row is `y`
            return;
        }
        let yt = &mut yt[..n * d_out];
        self.transposed_into(x, n, yt);
        for (j, col) in yt.chunks(n).enumerate() {
            for (i, &v) in col.iter().enumerate() {
                y[i * d_out + j] = v;
            }
        }
    }

    /// `y^T = W^T x^T`, `[d_out, n]`, by blocks of output columns.
    fn transposed_into(&self, x: &[E], n: usize, yt: &mut [E]) {
        let (d_in, d_out) = (self.d_in, self.d_out);
        let work = n * d_in * d_out;
        let tasks = (work / PARALLEL_WORK).clamp(1, 2 * rayon::current_num_threads());
        let cols = d_out.div_ceil(tasks);
        let x_t = Mat::new(x, n, d_in, d_in).t();
        let block = |(b, yt): (usize, &mut [E])| {
            let (first, rows) = (b * cols, yt.len() / n);
            // Columns `first..first + rows` of `W`, transposed: `rows x d_in`, column-major.
            let w_t = Mat::new(&self.w[first..], d_in, rows, d_out).t();
            gemm(E::one(), w_t, x_t, E::zero(), MatMut::new(yt, rows, n, n));
        };
        if tasks == 1 {
            block((0, yt));
        } else {
            yt.par_chunks_mut(cols * n).enumerate().for_each(block);
        }
    }
}
