//! [`Projected`]: a host attention kernel run straight from its layer's projection, as one
//! [`HostOp`]: `[batch, len, parts * heads * d]` in, `[batch, len, heads * d]` out.
//!
//! The tensor-op route (`split_heads`, RoPE, the kernel, `merge_heads`) reshapes and slices the
//! projection into strided `[batch, heads, len, d]` views, which burn's CPU backends copy element
//! by element on one thread wherever they need contiguous data, and whose slice backward builds
//! a zero tensor of the whole projection per part, to be summed. Here one autodiff node, with no
//! tensor but its input and output, does it in parallel passes over host memory:
//!
//! ```text
//! forward:  gather heads, RoPE     x[i] = R? y[.., part(i), h, ..]   [batch * heads, len, d]
//!           kernel                 o = attention(x[0..N])             [batch * heads, len, d]
//!           merge heads            out[b, t, h, ..] = o[b h, t, ..]   [batch, len, heads * d]
//! backward: split heads, kernel backward, then R?^T dx[i] scattered into its part and head,
//!           inputs of the same part (CASTLE's qc, rotated, and qc_nope, not) summed.
//! ```
//!
//! `R` rotates position `t` by RoPE's angle (`crate::rope`), and `R^T` by the opposite one. The
//! gathered inputs, one `[N, batch * heads, len, d]` buffer, are what the kernel's backward
//! reads, so the node keeps them (as the kernel's own node kept its inputs) and not the
//! projection.
//!
//! One node rather than a gather node feeding the kernel's node: the kernel's inputs and output
//! never become burn tensors, so none is copied to or from host memory again, kept twice, or
//! given a zero-filled gradient per part in the backward pass.

use rayon::prelude::*;

use super::attention::{HeadsShape, HostKernel};
use super::elem::Elem;
use super::host_op::HostOp;
use super::parallel::{rows_per_task, zeroed};
use super::rope::RopeRows;
use super::simd::vectorized;

/// Where a kernel input comes from: a part of the projection, rotated by RoPE or not.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    pub part: usize,
    pub rotated: bool,
}

impl Source {
    /// `part`, rotated by RoPE.
    pub const fn rotated(part: usize) -> Self {
        Self {
            part,
            rotated: true,
        }
    }

    /// `part` as it is.
    pub const fn plain(part: usize) -> Self {
        Self {
            part,
            rotated: false,
        }
    }
}

/// The causal kernel's inputs `q, k, v` as parts of a baseline layer's projection
/// `[W_Q, W_K, W_V]`, `q` and `k` rotated.
pub const CAUSAL_SOURCES: [Source; 3] = [Source::rotated(0), Source::rotated(1), Source::plain(2)];

/// The CASTLE kernel's inputs `qu, ku, vu, qc, kc, vc, qc_nope` as parts of a CASTLE layer's
/// projection `[W_UQ, W_UK, W_UV, W_CQ, W_CK, W_CV]`, rotated as `crate::rope` says.
pub const CASTLE_SOURCES: [Source; 7] = [
    Source::rotated(0),
    Source::rotated(1),
    Source::plain(2),
    Source::rotated(3),
    Source::rotated(4),
    Source::plain(5),
    Source::plain(3),
];

/// The kernel `K` on inputs `sources` of a `[batch, len, parts * heads * d]` projection.
#[derive(Debug)]
pub struct Projected<K, const N: usize> {
    pub kernel: K,
    pub sources: [Source; N],
    pub parts: usize,
    pub batch: usize,
    pub heads: usize,
    pub d: usize,
    /// RoPE's rotation of the positions `0..len`.
    pub rope: RopeRows,
}

impl<K: HostKernel<N>, const N: usize> Projected<K, N> {
    fn len(&self) -> usize {
        self.rope.positions()
    }

    fn shape(&self) -> HeadsShape {
        HeadsShape {
            heads: self.batch * self.heads,
            len: self.len(),
            d: self.d,
        }
    }

    /// Elements of one kernel input (and of the output), `batch * heads * len * d`.
    fn size(&self) -> usize {
        self.batch * self.heads * self.len() * self.d
    }

    /// Offset of head `h` of part `p` at token `(b, t)` in the projection.
    fn projected(&self, b: usize, t: usize, p: usize, h: usize) -> usize {
        (((b * self.len() + t) * self.parts + p) * self.heads + h) * self.d
    }

    /// Offset of token `t` of head `bh = b * heads + h` in a `[batch * heads, len, d]` array.
    fn packed(&self, bh: usize, t: usize) -> usize {
        (bh * self.len() + t) * self.d
    }

    /// The kernel's `N` inputs, `[N, batch * heads, len, d]`, from the projection `y`.
    fn gather<E: Elem>(&self, y: &[E]) -> Vec<E> {
        let (len, d, bh_count) = (self.len(), self.d, self.batch * self.heads);
        let mut x = zeroed(N * self.size());
        x.par_chunks_mut(len * d)
            .with_min_len(rows_per_task(len * d))
            .enumerate()
            .for_each(|(chunk, x)| {
                let (Source { part, rotated }, bh) =
                    (self.sources[chunk / bh_count], chunk % bh_count);
                let (b, h) = (bh / self.heads, bh % self.heads);
                vectorized(
                    #[inline(always)]
                    || {
                        for (t, x) in x.chunks_mut(d).enumerate() {
                            let y = &y[self.projected(b, t, part, h)..][..d];
                            match rotated {
                                true => self.rope.rotate_row(y, x, t, 1.0),
                                false => x.copy_from_slice(y),
                            }
                        }
                    },
                )
            });
        x
    }

    /// The transpose of [`Self::gather`]: `dx`'s gradients rotated back and summed into the
    /// projection's layout.
    fn scatter<E: Elem>(&self, dx: &[Vec<E>; N]) -> Vec<E> {
        let (len, d) = (self.len(), self.d);
        let width = self.parts * self.heads * d;
        let mut dy = zeroed(self.batch * len * width);
        dy.par_chunks_mut(width)
            .with_min_len(rows_per_task(width))
            .enumerate()
            .for_each(|(row, dy)| {
                let (b, t) = (row / len, row % len);
                let mut back = vec![E::zero(); d];
                vectorized(
                    #[inline(always)]
                    || {
                        for (&Source { part, rotated }, dx) in self.sources.iter().zip(dx) {
                            for h in 0..self.heads {
                                let mut g = &dx[self.packed(b * self.heads + h, t)..][..d];
                                if rotated {
                                    self.rope.rotate_row(g, &mut back, t, -1.0);
                                    g = &back;
                                }
                                let at = (part * self.heads + h) * d;
                                for (a, g) in dy[at..at + d].iter_mut().zip(g) {
                                    *a = *a + *g;
                                }
                            }
                        }
                    },
                )
            });
        dy
    }

    /// `[batch * heads, len, d]` -> `[batch, len, heads * d]`.
    fn merge<E: Elem>(&self, o: &[E]) -> Vec<E> {
        let (len, d, width) = (self.len(), self.d, self.heads * self.d);
        let mut out = zeroed(self.size());
        out.par_chunks_mut(width)
            .with_min_len(rows_per_task(width))
            .enumerate()
            .for_each(|(row, out)| {
                let (b, t) = (row / len, row % len);
                for (h, out) in out.chunks_mut(d).enumerate() {
                    out.copy_from_slice(&o[self.packed(b * self.heads + h, t)..][..d]);
                }
            });
        out
    }

    /// The transpose of [`Self::merge`]: `[batch, len, heads * d]` -> `[batch * heads, len, d]`.
    fn split<E: Elem>(&self, out: &[E]) -> Vec<E> {
        let (len, d, width) = (self.len(), self.d, self.heads * self.d);
        let mut o = zeroed(self.size());
        o.par_chunks_mut(len * d)
            .with_min_len(rows_per_task(len * d))
            .enumerate()
            .for_each(|(bh, o)| {
                let (b, h) = (bh / self.heads, bh % self.heads);
                for (t, o) in o.chunks_mut(d).enumerate() {
                    o.copy_from_slice(&out[(b * len + t) * width + h * d..][..d]);
                }
            });
        o
    }

    /// The `N` inputs in the stacked buffer of [`Self::gather`].
    fn inputs<'a, E: Elem>(&self, x: &'a [E]) -> [&'a [E]; N] {
        let size = self.size();
        std::array::from_fn(|i| &x[i * size..(i + 1) * size])
    }
}

impl<K: HostKernel<N>, const N: usize> HostOp<1> for Projected<K, N> {
    /// The gathered inputs and the kernel's own saved state.
    type Saved<E: Elem> = (Vec<E>, K::Saved<E>);
    const BACKWARD_READS_INPUTS: bool = false;

    fn forward<E: Elem>(&self, [y]: [&[E]; 1]) -> (Vec<E>, Self::Saved<E>) {
        assert_eq!(
            y.len(),
            self.batch * self.len() * self.parts * self.heads * self.d,
            "projection of {} tokens into {} parts of {} heads of {}",
            self.batch * self.len(),
            self.parts,
            self.heads,
            self.d
        );
        let x = self.gather(y);
        let (o, saved) = self.kernel.forward(self.inputs(&x), self.shape());
        (self.merge(&o), (x, saved))
    }

    fn backward<E: Elem>(
        &self,
        _: [&[E]; 1],
        (x, saved): &Self::Saved<E>,
        d_out: &[E],
    ) -> [Vec<E>; 1] {
        let d_o = self.split(d_out);
        let dx = self
            .kernel
            .backward(self.inputs(x), self.shape(), saved, &d_o);
        [self.scatter(&dx)]
    }
}
