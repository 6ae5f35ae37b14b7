//! A bias-free projection `y = x W` of a few rows at a time, into buffers the caller keeps: a
//! decoding step's, one row per sequence. The weight stays in burn's `Linear` layout
//! (`[d_in, d_out]`), and the product splits into blocks of output columns, one product per
//! worker. One row is computed as `y^T = W^T x^T`: `W^T` is column-major, the layout `gemm`'s
//! microkernel reads its left factor in (no packing of the weight), and each block of `y` is
//! contiguous. Several rows: each block `x W[:, cols]` into its own scratch rows, then copied
//! into place.

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
    /// long) holds the column blocks on the way when `n > 1`.
    pub fn apply(&self, x: &[E], n: usize, yt: &mut [E], y: &mut [E]) {
        let (d_in, d_out) = (self.d_in, self.d_out);
        assert!(
            x.len() == n * d_in && y.len() == n * d_out && yt.len() >= n * d_out,
            "projection of {n} rows of {d_in} to {d_out}"
        );
        if n == 1 {
            self.one_row(x, y);
            return;
        }
        // Several rows: `x W` by blocks of output columns, each into its own rows of `yt`
        // (`[n, cols]` per block), then into place.
        let cols = self.block_columns(n);
        let x_m = Mat::new(x, n, d_in, d_in);
        let block = |(b, yb): (usize, &mut [E])| {
            let (first, width) = (b * cols, yb.len() / n);
            let w = Mat::new(&self.w[first..], d_in, width, d_out);
            gemm(
                E::one(),
                x_m,
                w,
                E::zero(),
                MatMut::new(yb, n, width, width),
            );
        };
        let yt = &mut yt[..n * d_out];
        if cols == d_out {
            block((0, yt));
        } else {
            yt.par_chunks_mut(cols * n).enumerate().for_each(block);
        }
        for (b, yb) in yt.chunks(cols * n).enumerate() {
            let width = yb.len() / n;
            for (row, y) in yb.chunks(width).zip(y.chunks_mut(d_out)) {
                y[b * cols..b * cols + width].copy_from_slice(row);
            }
        }
    }

    /// Output columns per parallel block for `n` rows: the whole width below
    /// [`PARALLEL_WORK`] multiply-adds, else about two blocks per worker.
    fn block_columns(&self, n: usize) -> usize {
        let work = n * self.d_in * self.d_out;
        let tasks = (work / PARALLEL_WORK).clamp(1, 2 * rayon::current_num_threads());
        self.d_out.div_ceil(tasks)
    }

    /// `y = x W` for one row as `y^T = W^T x^T`, by blocks of output columns.
    fn one_row(&self, x: &[E], y: &mut [E]) {
        let (d_in, d_out) = (self.d_in, self.d_out);
        let cols = self.block_columns(1);
        let x_t = Mat::new(x, 1, d_in, d_in).t();
        let block = |(b, y): (usize, &mut [E])| {
            let (first, rows) = (b * cols, y.len());
            // Columns `first..first + rows` of `W`, transposed: `rows x d_in`, column-major.
            let w_t = Mat::new(&self.w[first..], d_in, rows, d_out).t();
            gemm(E::one(), w_t, x_t, E::zero(), MatMut::new(y, rows, 1, 1));
        };
        if cols == d_out {
            block((0, y));
        } else {
            y.par_chunks_mut(cols).enumerate().for_each(block);
        }
    }
}
