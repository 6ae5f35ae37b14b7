//! A bias-free linear layer `y = x W` (`x: [tokens, d_in]`, `W: [d_in, d_out]`, burn's `Linear`
//! layout) as one host op on CPU, forward and backward.
//!
//! burn-flex's matmul allocates each output zero-filled and then copies it to realign it, both on
//! the calling thread while rayon's workers wait, and sums the weight gradient of a batched
//! product over the batch in another pass; those serial passes were a third of the main
//! thread's samples in a training step. Here every product is split into row blocks, each
//! block one single-threaded GEMM on a worker (`gemm::times_by_rows`, `gemm::transposed_times`).

use super::elem::Elem;
use super::gemm::{times_by_rows, transposed, transposed_times, Mat};
use super::host_op::HostOp;

/// Rows per parallel product: about four per worker, at least 32 rows (each product packs its
/// other factor, which its rows amortise).
fn rows_per_product(rows: usize) -> usize {
    rows.div_ceil(4 * rayon::current_num_threads()).max(32)
}

/// `x W` for `x` a whole number of rows of `d_in`; inputs `[x, W]`.
#[derive(Debug, Clone, Copy)]
pub struct LinearRows {
    pub d_in: usize,
    pub d_out: usize,
}

impl LinearRows {
    /// Rows of `x`, after checking both inputs' sizes.
    fn rows<E>(&self, x: &[E], w: &[E]) -> usize {
        let (d_in, d_out) = (self.d_in, self.d_out);
        assert!(
            d_in > 0 && x.len().is_multiple_of(d_in) && w.len() == d_in * d_out,
            "linear: {} inputs for rows of {d_in}, weight of {} values for {d_in} x {d_out}",
            x.len(),
            w.len()
        );
        x.len() / d_in
    }
}

impl HostOp<2> for LinearRows {
    type Saved<E: Elem> = ();

    fn forward<E: Elem>(&self, [x, w]: [&[E]; 2]) -> (Vec<E>, ()) {
        let (d_in, d_out, n) = (self.d_in, self.d_out, self.rows(x, w));
        let (x, w) = (Mat::new(x, n, d_in, d_in), Mat::new(w, d_in, d_out, d_out));
        (times_by_rows(x, w, rows_per_product(n)), ())
    }

    /// `dx = dy W^T` by row blocks of `dx`; `dW = x^T dy` by row blocks of `dW`, each a sum
    /// over every token in one product (the same result whatever the thread count).
    fn backward<E: Elem>(&self, [x, w]: [&[E]; 2], _: &(), dy: &[E]) -> [Vec<E>; 2] {
        let (d_in, d_out) = (self.d_in, self.d_out);
        let n = self.rows(x, w);
        // `W^T` packed once (see `transposed`), not repacked by every block's product.
        let w_t = transposed(w, d_in, d_out);
        let (dy_m, w_t) = (
            Mat::new(dy, n, d_out, d_out),
            Mat::new(&w_t, d_out, d_in, d_in),
        );
        let dx = times_by_rows(dy_m, w_t, rows_per_product(n));
        let block = d_in.div_ceil(4 * rayon::current_num_threads()).max(8);
        let dw = transposed_times(x, d_in, dy, d_out, block);
        [dx, dw]
    }
}
