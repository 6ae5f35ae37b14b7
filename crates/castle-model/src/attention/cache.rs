//! Per-position rows of a decoding cache, `[batch, heads, len, d]`, in a buffer that grows
//! geometrically and is written in place: appending a token costs O(d) amortised, not the
//! O(t d) copy of a `Tensor::cat` (O(T^2) over a generation).

use std::ops::Range;

use burn::prelude::*;

#[derive(Debug, Clone)]
pub struct CacheRows<B: Backend> {
    /// `[batch, heads, capacity, d]`; rows `len..` are zero and not part of the cache.
    buf: Tensor<B, 4>,
    len: usize,
}

impl<B: Backend> CacheRows<B> {
    /// A cache holding `rows` as they are, a prompt's: the first append copies them into a
    /// grown buffer, and a host decoder reads them once (`crate::decode`), so a prompt's rows are
    /// never copied twice.
    pub fn new(rows: Tensor<B, 4>) -> Self {
        let len = rows.dims()[2];
        Self { buf: rows, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The cached rows `0..len`.
    pub fn rows(&self) -> Tensor<B, 4> {
        self.rows_in(0..self.len)
    }

    /// The cached rows `range`.
    pub fn rows_in(&self, range: Range<usize>) -> Tensor<B, 4> {
        debug_assert!(range.end <= self.len);
        let [b, h, _, d] = self.buf.dims();
        self.buf.clone().slice([0..b, 0..h, range, 0..d])
    }

    /// Appends `rows` (`[batch, heads, n, d]`), doubling the buffer when it is full.
    pub fn push(&mut self, rows: Tensor<B, 4>) {
        let [b, h, n, d] = rows.dims();
        let capacity = self.buf.dims()[2];
        if self.len + n > capacity {
            let capacity = (2 * capacity).max(self.len + n);
            let grown = Tensor::zeros([b, h, capacity, d], &rows.device());
            let old = self.rows();
            self.buf = grown.slice_assign([0..b, 0..h, 0..self.len, 0..d], old);
        }
        let at = self.len..self.len + n;
        self.assign(at, rows);
        self.len += n;
    }

    /// Writes `rows` at `range`. The buffer is moved out first so that it is not shared and the
    /// CPU backends write into it rather than copy it.
    fn assign(&mut self, range: Range<usize>, rows: Tensor<B, 4>) {
        let [b, h, _, d] = self.buf.dims();
        let device = self.buf.device();
        let buf = std::mem::replace(&mut self.buf, Tensor::empty([0, 0, 0, 0], &device));
        self.buf = buf.slice_assign([0..b, 0..h, range, 0..d], rows);
    }
}
