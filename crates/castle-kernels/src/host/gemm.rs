//! Matrix views and the one matrix product the kernels use: the `gemm` crate's, one thread per
//! call, since the kernels call it from their own rayon tasks.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::elem::Elem;
use super::parallel::{written, written_in_chunks, zeroed};

/// A read-only `rows x cols` matrix inside a slice, element `(r, c)` at `r * rs + c * cs`.
#[derive(Clone, Copy)]
pub struct Mat<'a, E> {
    data: &'a [E],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a, E: Elem> Mat<'a, E> {
    /// Row-major with row stride `rs` (`rs = cols` when the rows are packed).
    pub fn new(data: &'a [E], rows: usize, cols: usize, rs: usize) -> Self {
        let m = Self {
            data,
            rows,
            cols,
            rs,
            cs: 1,
        };
        m.check(data.len());
        m
    }

    /// Rows `first..first + rows` of a packed row-major matrix with `cols` columns.
    pub fn rows(data: &'a [E], first: usize, rows: usize, cols: usize) -> Self {
        Self::new(&data[first * cols..(first + rows) * cols], rows, cols, cols)
    }

    /// Rows `first..first + rows` of this view.
    fn row_block(self, first: usize, rows: usize) -> Self {
        assert!(first + rows <= self.rows, "rows past the matrix");
        let m = Self {
            data: &self.data[(first * self.rs).min(self.data.len())..],
            rows,
            ..self
        };
        m.check(m.data.len());
        m
    }

    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    fn check(&self, len: usize) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
            assert!(last < len, "matrix view runs past its buffer");
        }
    }
}

/// A writable row-major `rows x cols` matrix with row stride `rs`: initialised, or a fresh
/// output that only a product with `beta = 0` may write ([`MatMut::uninit`]).
pub struct MatMut<'a, E> {
    data: &'a mut [MaybeUninit<E>],
    rows: usize,
    cols: usize,
    rs: usize,
    initialized: bool,
}

impl<'a, E: Elem> MatMut<'a, E> {
    pub fn new(data: &'a mut [E], rows: usize, cols: usize, rs: usize) -> Self {
        // SAFETY: `MaybeUninit<E>` has `E`'s layout, and nothing writes an uninitialised value
        // through a `MatMut` (`gemm` writes floats only).
        let data = unsafe { &mut *(data as *mut [E] as *mut [MaybeUninit<E>]) };
        Self::view(data, rows, cols, rs, true)
    }

    /// A view of memory not yet written, for a product that overwrites it (`beta = 0`):
    /// a fresh output needs no zero-fill pass first.
    pub fn uninit(data: &'a mut [MaybeUninit<E>], rows: usize, cols: usize, rs: usize) -> Self {
        Self::view(data, rows, cols, rs, false)
    }

    fn view(
        data: &'a mut [MaybeUninit<E>],
        rows: usize,
        cols: usize,
        rs: usize,
        initialized: bool,
    ) -> Self {
        assert!(
            rows == 0 || cols == 0 || (rows - 1) * rs + cols <= data.len(),
            "matrix view runs past its buffer"
        );
        Self {
            data,
            rows,
            cols,
            rs,
            initialized,
        }
    }

    /// Rows `first..first + rows` of a packed row-major matrix with `cols` columns.
    pub fn rows(data: &'a mut [E], first: usize, rows: usize, cols: usize) -> Self {
        Self::new(
            &mut data[first * cols..(first + rows) * cols],
            rows,
            cols,
            cols,
        )
    }
}

/// `c = alpha a b + beta c` (with `beta = 0`, `c`'s old contents are ignored, NaN included).
pub fn gemm<E: Elem>(alpha: E, a: Mat<E>, b: Mat<E>, beta: E, c: MatMut<E>) {
    assert!(
        a.cols == b.rows && a.rows == c.rows && b.cols == c.cols,
        "gemm shapes: ({} x {}) ({} x {}) -> ({} x {})",
        a.rows,
        a.cols,
        b.rows,
        b.cols,
        c.rows,
        c.cols
    );
    assert!(
        c.initialized || beta == E::zero(),
        "gemm: accumulating into an uninitialised output"
    );
    if c.rows == 0 || c.cols == 0 {
        return;
    }
    // SAFETY: `Mat::new`/`MatMut::new` checked that every addressed element is in bounds, and
    // `c` is borrowed mutably, so it cannot alias `a` or `b`. `gemm` computes
    // `dst = alpha dst + beta lhs rhs` (`dst` not read when told so, which is when `c` may be
    // uninitialised; it then writes every element of `c`, zeros if `k = 0`), column strides
    // first, on this thread only: the kernels call it from their own rayon tasks.
    unsafe {
        gemm::gemm(
            c.rows,
            c.cols,
            a.cols,
            c.data.as_mut_ptr().cast::<E>(),
            1,
            c.rs as isize,
            beta != E::zero(),
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            beta,
            alpha,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `alpha A B` in a new packed row-major matrix, on this thread (no zero-fill first).
pub fn product<E: Elem>(alpha: E, a: Mat<E>, b: Mat<E>) -> Vec<E> {
    let (rows, cols) = (a.rows, b.cols);
    let write = |c: &mut [MaybeUninit<E>]| {
        gemm(alpha, a, b, E::zero(), MatMut::uninit(c, rows, cols, cols));
    };
    // SAFETY: a product with `beta = 0` (the only kind a `MatMut::uninit` admits) writes all of
    // its output.
    unsafe { written(rows * cols, write) }
}

/// `a^T` packed: `cols x rows` from the packed row-major `rows x cols` matrix `a`, in parallel
/// tiles. The `gemm` crate repacks a row-major left factor in every call (its microkernel reads
/// the left factor by columns); a factor that many calls share is cheaper transposed once, as
/// `Mat::new(&a_t, cols, rows, rows).t()`.
pub fn transposed<E: Elem>(a: &[E], rows: usize, cols: usize) -> Vec<E> {
    const TILE: usize = 32;
    assert_eq!(
        a.len(),
        rows * cols,
        "transpose of a {rows} x {cols} matrix"
    );
    let mut t = zeroed(a.len());
    t.par_chunks_mut(TILE * rows.max(1))
        .enumerate()
        .for_each(|(tile, t)| {
            let c0 = tile * TILE;
            for r0 in (0..rows).step_by(TILE) {
                for c in c0..c0 + t.len() / rows {
                    for r in r0..(r0 + TILE).min(rows) {
                        t[(c - c0) * rows + r] = a[r * cols + c];
                    }
                }
            }
        });
    t
}

/// `A B` in a new packed row-major matrix: one product per block of `block` rows of `A` (and of
/// the result), on rayon's workers.
pub fn times_by_rows<E: Elem>(a: Mat<E>, b: Mat<E>, block: usize) -> Vec<E> {
    let (n, m) = (a.rows, b.cols);
    let block = block.max(1);
    let product = |i: usize, [c]: [&mut [MaybeUninit<E>]; 1]| {
        let rows = c.len() / m;
        let a_rows = a.row_block(i * block, rows);
        gemm(
            E::one(),
            a_rows,
            b,
            E::zero(),
            MatMut::uninit(c, rows, m, m),
        );
    };
    // SAFETY: a product with `beta = 0` (the only kind a `MatMut::uninit` admits) writes all of
    // its output.
    let [c] = unsafe { written_in_chunks(n * m, block * m, product) };
    c
}

/// `A^T B` (`m x k`) for packed row-major `a` (`n x m`) and `b` (`n x k`): a weight gradient,
/// the sum over all `n` rows. Split into blocks of `block` rows of the result, each one product
/// over every row, so the result has the same bits whatever the thread count.
pub fn transposed_times<E: Elem>(a: &[E], m: usize, b: &[E], k: usize, block: usize) -> Vec<E> {
    let n = a.len().checked_div(m).unwrap_or(0);
    assert_eq!(
        b.len(),
        n * k,
        "A^T B with {n} rows of A and {} of B",
        b.len() / k.max(1)
    );
    if n == 0 || k == 0 {
        return vec![E::zero(); m * k];
    }
    let block = block.max(1);
    let product = |i: usize, [c]: [&mut [MaybeUninit<E>]; 1]| {
        let (first, rows) = (i * block, c.len() / k);
        // Columns `first..first + rows` of `a`, transposed: `rows x n`.
        gemm(
            E::one(),
            Mat::new(&a[first..], n, rows, m).t(),
            Mat::new(b, n, k, k),
            E::zero(),
            MatMut::uninit(c, rows, k, k),
        );
    };
    // SAFETY: as in `times_by_rows`.
    let [c] = unsafe { written_in_chunks(m * k, block * k, product) };
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_is_within_a_few_ulp_of_exp_on_its_domain() {
        let mut worst = 0.0f64;
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let exact = (x as f64).exp();
            let got = f32::exp_nonpositive(x) as f64;
            worst = worst.max((got - exact).abs() / exact);
        }
        assert!(
            worst < 4.0 * f32::EPSILON as f64,
            "worst relative error {worst:e}"
        );
        assert!(f32::exp_nonpositive(-1e4) < 2e-38);
        assert!(f32::exp_nonpositive(f32::NAN).is_nan());
    }

    #[test]
    fn gemm_transposes_by_strides() {
        // a = [[1, 2, 3], [4, 5, 6]]; a a^T = [[14, 32], [32, 77]].
        let a = [1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut c = [1.0f64; 4];
        let m = Mat::new(&a, 2, 3, 3);
        gemm(1.0, m, m.t(), 0.5, MatMut::new(&mut c, 2, 2, 2));
        assert_eq!(c, [14.5, 32.5, 32.5, 77.5]);
    }

    #[test]
    fn a_fresh_output_is_overwritten_in_full_even_with_no_inner_dimension() {
        // Garbage (NaN) stands in for the uninitialised memory a fresh output would hold.
        let (a, b) = ([1.0f64, 2.0, 3.0, 4.0], [0.5f64, -1.0]);
        for k in [0, 1, 2] {
            let mut c = [MaybeUninit::new(f64::NAN); 4];
            let (am, bm) = (Mat::new(&a[..2 * k], 2, k, k), Mat::new(&b[..k], k, 1, 1));
            gemm(1.0, am, bm, 0.0, MatMut::uninit(&mut c[..2], 2, 1, 1));
            let got: Vec<f64> = c[..2].iter().map(|x| unsafe { x.assume_init() }).collect();
            let want: Vec<f64> = (0..2)
                .map(|r| (0..k).map(|p| a[r * k + p] * b[p]).sum())
                .collect();
            assert_eq!(got, want, "k = {k}");
            assert!(
                unsafe { c[2].assume_init() }.is_nan(),
                "wrote past the view"
            );
        }
    }

    #[test]
    #[should_panic(expected = "uninitialised output")]
    fn a_product_may_not_accumulate_into_a_fresh_output() {
        let a = [1.0f64];
        let mut c = [MaybeUninit::new(0.0f64)];
        let m = Mat::new(&a, 1, 1, 1);
        gemm(1.0, m, m, 1.0, MatMut::uninit(&mut c, 1, 1, 1));
    }

    #[test]
    fn times_by_rows_is_the_product_in_any_block_split() {
        for (n, k, m, block) in [(0, 5, 3, 2), (1, 1, 1, 1), (7, 13, 5, 4), (70, 33, 9, 8)] {
            let a: Vec<f64> = (0..n * k).map(|i| (i as f64 * 0.37).sin()).collect();
            let b: Vec<f64> = (0..k * m).map(|i| (i as f64 * 0.73).cos()).collect();
            let c = times_by_rows(Mat::new(&a, n, k, k), Mat::new(&b, k, m, m), block);
            assert_eq!(c.len(), n * m);
            for i in 0..n {
                for j in 0..m {
                    let want: f64 = (0..k).map(|r| a[i * k + r] * b[r * m + j]).sum();
                    assert!(
                        (c[i * m + j] - want).abs() < 1e-12,
                        "{n} x {k} x {m} at ({i}, {j})"
                    );
                }
            }
        }
    }

    #[test]
    fn transposed_times_sums_over_every_row_in_any_block_split() {
        for (n, m, k, block) in [(0, 5, 3, 2), (1, 1, 1, 1), (7, 13, 5, 4), (70, 33, 9, 8)] {
            let a: Vec<f64> = (0..n * m).map(|i| (i as f64 * 0.37).sin()).collect();
            let b: Vec<f64> = (0..n * k).map(|i| (i as f64 * 0.73).cos()).collect();
            let c = transposed_times(&a, m, &b, k, block);
            for i in 0..m {
                for j in 0..k {
                    let want: f64 = (0..n).map(|r| a[r * m + i] * b[r * k + j]).sum();
                    assert!(
                        (c[i * k + j] - want).abs() < 1e-12,
                        "{n} x {m} x {k} at ({i}, {j})"
                    );
                }
            }
        }
    }

    #[test]
    fn transposed_moves_every_element() {
        for (rows, cols) in [(0, 3), (1, 1), (1, 70), (37, 70), (70, 33)] {
            let a: Vec<f64> = (0..rows * cols).map(|i| i as f64).collect();
            let t = transposed(&a, rows, cols);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        t[c * rows + r],
                        a[r * cols + c],
                        "{rows} x {cols} at ({r}, {c})"
                    );
                }
            }
        }
    }
}
