//! One layer's attention for the new position of every sequence of a batch: RoPE at each
//! sequence's own position, the cache update, and attention over the cache ([`super::decode`]),
//! from the rows of the layer's projection to the rows of its merged output. Sequences run in
//! parallel once their caches make enough work.

use rayon::prelude::*;

use super::decode::{CacheShape, CastleStep, KvRows, UqKvRows, PARALLEL_WORK};
use super::elem::Elem;
use super::rope::Rope;
use super::simd::vectorized;
use crate::device::AttentionOp;

/// One sequence's cache of one layer, of the layer's kind.
#[derive(Debug, Clone)]
pub enum LayerCache<E> {
    Kv(KvRows<E>),
    UqKv(UqKvRows<E>),
}

impl<E: Elem> LayerCache<E> {
    pub fn new(op: AttentionOp, shape: CacheShape) -> Self {
        match op {
            AttentionOp::Causal => Self::Kv(KvRows::new(shape)),
            AttentionOp::Castle { window } => Self::UqKv(UqKvRows::new(shape, window)),
        }
    }

    /// Cached positions: the position of the next one.
    pub fn len(&self) -> usize {
        match self {
            Self::Kv(c) => c.len(),
            Self::UqKv(c) => c.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Empties the cache, keeping its memory.
    pub fn clear(&mut self) {
        match self {
            Self::Kv(c) => c.clear(),
            Self::UqKv(c) => c.clear(),
        }
    }

    /// The next position's output `out: [heads, d]` from its projection row `y: [parts, heads,
    /// d]` (in `crate::reference::split_heads`' order), rotated by RoPE into `rot` on the way.
    fn step(&mut self, y: &[E], rope: &Rope, rot: &mut [E], out: &mut [E]) {
        let hd = out.len();
        let part = |p: usize| &y[p * hd..(p + 1) * hd];
        let pos = self.len();
        // `rot[r] = RoPE(y[p])` for each pair `(p, r)`.
        let rotate = |rot: &mut [E], pairs: &[(usize, usize)]| {
            let d = 2 * rope.half;
            vectorized(
                #[inline(always)]
                || {
                    for &(p, r) in pairs {
                        let to = &mut rot[r * hd..(r + 1) * hd];
                        for (x, y) in part(p).chunks(d).zip(to.chunks_mut(d)) {
                            rope.rotate(x, y, pos, 1.0);
                        }
                    }
                },
            )
        };
        match self {
            Self::Kv(cache) => {
                rotate(rot, &[(0, 0), (1, 1)]); // q, k
                let (q, k) = rot.split_at(hd);
                cache.step(q, &k[..hd], part(2), out);
            }
            Self::UqKv(cache) => {
                rotate(rot, &[(0, 0), (1, 1), (3, 2), (4, 3)]); // qu, ku, qc, kc
                let r = |i: usize| &rot[i * hd..(i + 1) * hd];
                let x = CastleStep {
                    qu: r(0),
                    ku: r(1),
                    vu: part(2),
                    qc: r(2),
                    kc: r(3),
                    vc: part(5),
                    qc_nope: part(3),
                };
                cache.step(&x, out);
            }
        }
    }
}

/// The attention of layer `layer` for one new position per sequence: row `i` of `y`
/// (`[n, parts heads d]`, the layer's projection) is the next position of sequence `seqs[i]`
/// (its caches, one per layer), its output row `i` of `out` (`[n, heads d]`). `rot` is
/// scratch, at least `n` rows of `4 heads d`.
pub fn decode_attention<E: Elem>(
    seqs: &mut [&mut [LayerCache<E>]],
    layer: usize,
    y: &[E],
    rope: &Rope,
    rot: &mut [E],
    out: &mut [E],
) {
    let n = seqs.len();
    if n == 0 {
        return;
    }
    let (y_row, out_row) = (y.len() / n, out.len() / n);
    let rot = &mut rot[..4 * out_row * n];
    let work: usize = seqs.iter().map(|c| c[layer].len()).sum::<usize>() * out_row;
    if n == 1 || work < PARALLEL_WORK {
        let rows = seqs.iter_mut().zip(y.chunks(y_row));
        rows.zip(rot.chunks_mut(4 * out_row))
            .zip(out.chunks_mut(out_row))
            .for_each(|(((seq, y), rot), out)| seq[layer].step(y, rope, rot, out));
    } else {
        let rows = seqs.par_iter_mut().zip(y.par_chunks(y_row));
        rows.zip(rot.par_chunks_mut(4 * out_row))
            .zip(out.par_chunks_mut(out_row))
            .for_each(|(((seq, y), rot), out)| seq[layer].step(y, rope, rot, out));
    }
}
