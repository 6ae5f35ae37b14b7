//! How a head's positions are cut into blocks, and `B x B` block storage for `L x L` matrices.

use std::ops::Range;

use super::elem::Elem;
use super::gemm::{Mat, MatMut};

/// One head's geometry: `len` positions of dimension `d` in `n` blocks of `bs` (the last one
/// zero-padded to `padded() = n bs` rows), and CASTLE-SWL's window.
#[derive(Debug, Clone, Copy)]
pub struct Blocking {
    pub len: usize,
    pub d: usize,
    pub bs: usize,
    pub n: usize,
    pub window: Option<usize>,
}

impl Blocking {
    pub fn new(len: usize, d: usize, block: usize, window: Option<usize>) -> Self {
        let bs = block.clamp(1, len.max(1));
        Self {
            len,
            d,
            bs,
            n: len.div_ceil(bs),
            window,
        }
    }

    pub fn padded(&self) -> usize {
        self.n * self.bs
    }

    /// `s = 1 / sqrt(d)`.
    pub fn scale<E: Elem>(&self) -> E {
        E::of(crate::reference::scale(self.d))
    }

    /// Can block `k` hold lookahead positions `j` of owners `i` in block `j_blk`
    /// (`i < j <= i + W`)? Outside this band `sig[J,K]` is all zero.
    pub fn in_band(&self, j_blk: usize, k: usize) -> bool {
        k >= j_blk
            && self
                .window
                .is_none_or(|w| k * self.bs <= j_blk * self.bs + self.bs - 1 + w)
    }

    /// Row `r` of `Mu[J, K]`: the columns `c` whose position `K bs + c` is in the lookahead of
    /// owner `i = J bs + r`, i.e. `i < K bs + c <= i + W` (eq. 3-4, eq. 9).
    pub fn lookahead_columns(&self, j_blk: usize, k: usize, r: usize) -> Range<usize> {
        let (i, first) = (j_blk * self.bs + r, k * self.bs);
        let start = (i + 1).saturating_sub(first).min(self.bs);
        let end = self
            .window
            .map_or(self.bs, |w| (i + w + 1).saturating_sub(first).min(self.bs));
        start..end.max(start)
    }

    /// Rows `blk bs .. (blk + 1) bs` of a packed `padded() x d` matrix.
    pub fn block_rows<'a, E: Elem>(&self, x: &'a [E], blk: usize) -> Mat<'a, E> {
        Mat::rows(x, blk * self.bs, self.bs, self.d)
    }

    /// Block `blk` of `x^T` as a `d x bs` view of `x_t`, the packed transpose (`d x padded()`)
    /// of a packed `padded() x d` matrix `x`: a right-hand factor `x_blk^T` that the `gemm`
    /// crate reads without repacking.
    pub fn block_cols<'a, E: Elem>(&self, x_t: &'a [E], blk: usize) -> Mat<'a, E> {
        Mat::new(&x_t[blk * self.bs..], self.d, self.bs, self.padded())
    }

    pub fn block_rows_mut<'a, E: Elem>(&self, x: &'a mut [E], blk: usize) -> MatMut<'a, E> {
        MatMut::rows(x, blk * self.bs, self.bs, self.d)
    }

    /// A packed `bs x bs` block.
    pub fn square<'a, E: Elem>(&self, x: &'a [E]) -> Mat<'a, E> {
        Mat::new(x, self.bs, self.bs, self.bs)
    }
}

/// Some `bs x bs` blocks of an `n bs x n bs` matrix, each packed row-major; absent blocks are zero.
#[derive(Debug, Clone)]
pub struct Blocks<E> {
    n: usize,
    blocks: Vec<Vec<E>>,
}

impl<E: Elem> Blocks<E> {
    pub fn new(n: usize) -> Self {
        Self {
            n,
            blocks: vec![Vec::new(); n * n],
        }
    }

    /// Block `(row, col)`; panics if it was never set.
    pub fn get(&self, row: usize, col: usize) -> &[E] {
        let b = &self.blocks[row * self.n + col];
        assert!(!b.is_empty(), "block ({row}, {col}) was not computed");
        b
    }

    pub fn set(&mut self, row: usize, col: usize, block: Vec<E>) {
        self.blocks[row * self.n + col] = block;
    }

    /// The block rows, each `n` blocks (absent ones empty).
    pub fn into_rows(self) -> Vec<Vec<Vec<E>>> {
        let mut blocks = self.blocks.into_iter();
        (0..self.n)
            .map(|_| blocks.by_ref().take(self.n).collect())
            .collect()
    }
}
