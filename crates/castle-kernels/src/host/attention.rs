//! [`HostKernel`]: a fused attention on host memory, all heads packed `[heads, len, d]`, each
//! head zero-padded to a whole number of blocks and cropped back; [`Castle`] and [`Causal`]
//! run the lookahead and causal-softmax kernels head by head on rayon's pool.

use std::borrow::Cow;
use std::fmt::Debug;
use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::blocks::Blocking;
use super::causal_softmax::{self, SoftmaxSaved};
use super::elem::Elem;
use super::lookahead::{self, LookaheadInputs, LookaheadSaved};
use super::parallel::{workers_per_head, written_in_chunks};

/// The layout of every array here: `heads` (batch times heads) packed `len x d` matrices.
#[derive(Debug, Clone, Copy)]
pub struct HeadsShape {
    pub heads: usize,
    pub len: usize,
    pub d: usize,
}

/// A fused attention on host memory: `N` inputs and one output, each `[heads, len, d]`.
pub trait HostKernel<const N: usize>: Copy + Send + Sync + Debug + 'static {
    /// What a forward pass keeps for its backward pass.
    type Saved<E: Elem>: Send + Sync + Debug;

    fn forward<E: Elem>(&self, x: [&[E]; N], shape: HeadsShape) -> (Vec<E>, Self::Saved<E>);

    /// Gradients of the `N` inputs given `d_out = dLoss/d(output)`.
    fn backward<E: Elem>(
        &self,
        x: [&[E]; N],
        shape: HeadsShape,
        saved: &Self::Saved<E>,
        d_out: &[E],
    ) -> [Vec<E>; N];
}

/// CASTLE attention (eq. 3-8; eq. 9 with a window). Inputs in
/// [`crate::reference::CastleHeads`]' order: `qu, ku, vu, qc, kc, vc, qc_nope`.
#[derive(Debug, Clone, Copy)]
pub struct Castle {
    pub window: Option<usize>,
    pub block: usize,
}

/// Causal softmax attention `softmax(s Q K^T + causal mask) V`. Inputs `q, k, v`.
#[derive(Debug, Clone, Copy)]
pub struct Causal {
    pub block: usize,
}

/// Per head, what the lookahead and the softmax forward passes keep.
#[derive(Debug)]
pub struct CastleSaved<E>(Vec<(LookaheadSaved<E>, SoftmaxSaved<E>)>);

/// Head `h` of `x`, zero-padded to `g.padded()` rows: borrowed when `len` is a whole number
/// of blocks, a padded copy otherwise.
fn head<'a, E: Elem>(x: &'a [E], h: usize, g: &Blocking) -> Cow<'a, [E]> {
    let rows = &x[h * g.len * g.d..(h + 1) * g.len * g.d];
    if g.padded() == g.len {
        return Cow::Borrowed(rows);
    }
    let mut out = rows.to_vec();
    out.resize(g.padded() * g.d, E::zero());
    Cow::Owned(out)
}

/// Per-head results, `N` per head, each cropped to `len` rows and packed back to
/// `[heads, len, d]`, one head per parallel chunk.
fn pack<E: Elem, T: AsRef<[E]> + Sync, const N: usize>(
    g: &Blocking,
    per_head: &[[T; N]],
) -> [Vec<E>; N] {
    let size = g.len * g.d;
    let copy = |h: usize, chunks: [&mut [MaybeUninit<E>]; N]| {
        for (chunk, one) in chunks.into_iter().zip(&per_head[h]) {
            chunk.write_copy_of_slice(&one.as_ref()[..size]);
        }
    };
    // SAFETY: `copy` writes every element of head `h`'s chunk of each output.
    unsafe { written_in_chunks(per_head.len() * size, size, copy) }
}

impl HostKernel<7> for Castle {
    type Saved<E: Elem> = CastleSaved<E>;

    fn forward<E: Elem>(&self, x: [&[E]; 7], shape: HeadsShape) -> (Vec<E>, CastleSaved<E>) {
        let g = Blocking::new(shape.len, shape.d, self.block, self.window);
        let heads: Vec<_> = (0..shape.heads)
            .into_par_iter()
            .map(|h| {
                let [qu, ku, vu, qc, kc, vc, qc_nope] = x.map(|t| head(t, h, &g));
                let la = LookaheadInputs {
                    qu: &qu,
                    ku: &ku,
                    vu: &vu,
                    qc: &qc_nope,
                };
                let (su, la_saved) = lookahead::forward(&g, &la);
                (
                    la_saved,
                    causal_softmax::forward(&g, &qc, &kc, &vc, Some(su)),
                )
            })
            .collect();
        let outs: Vec<_> = heads.iter().map(|(_, s)| [s.out.as_slice()]).collect();
        let [out] = pack(&g, &outs);
        (out, CastleSaved(heads))
    }

    fn backward<E: Elem>(
        &self,
        x: [&[E]; 7],
        shape: HeadsShape,
        saved: &CastleSaved<E>,
        d_out: &[E],
    ) -> [Vec<E>; 7] {
        let g = Blocking::new(shape.len, shape.d, self.block, self.window);
        let workers = workers_per_head(shape.heads);
        let grads: Vec<[Vec<E>; 7]> = saved
            .0
            .par_iter()
            .enumerate()
            .map(|(h, (la_saved, softmax))| {
                let [qu, ku, vu, qc, kc, vc, qc_nope] = x.map(|t| head(t, h, &g));
                let d_out = head(d_out, h, &g);
                let sm = causal_softmax::backward(&g, workers, &qc, &kc, &vc, softmax, &d_out);
                let d_su = sm
                    .d_lookahead
                    .expect("the forward pass had a lookahead term");
                let la = LookaheadInputs {
                    qu: &qu,
                    ku: &ku,
                    vu: &vu,
                    qc: &qc_nope,
                };
                let la = lookahead::backward(&g, workers, &la, la_saved, &d_su);
                [la.dqu, la.dku, la.dvu, sm.dq, sm.dk, sm.dv, la.dqc]
            })
            .collect();
        pack(&g, &grads)
    }
}

impl HostKernel<3> for Causal {
    type Saved<E: Elem> = Vec<SoftmaxSaved<E>>;

    fn forward<E: Elem>(&self, x: [&[E]; 3], shape: HeadsShape) -> (Vec<E>, Vec<SoftmaxSaved<E>>) {
        let g = Blocking::new(shape.len, shape.d, self.block, None);
        let heads: Vec<_> = (0..shape.heads)
            .into_par_iter()
            .map(|h| {
                let [q, k, v] = x.map(|t| head(t, h, &g));
                causal_softmax::forward(&g, &q, &k, &v, None)
            })
            .collect();
        let outs: Vec<_> = heads.iter().map(|s| [s.out.as_slice()]).collect();
        let [out] = pack(&g, &outs);
        (out, heads)
    }

    fn backward<E: Elem>(
        &self,
        x: [&[E]; 3],
        shape: HeadsShape,
        saved: &Vec<SoftmaxSaved<E>>,
        d_out: &[E],
    ) -> [Vec<E>; 3] {
        let g = Blocking::new(shape.len, shape.d, self.block, None);
        let workers = workers_per_head(shape.heads);
        let grads: Vec<[Vec<E>; 3]> = saved
            .par_iter()
            .enumerate()
            .map(|(h, softmax)| {
                let [q, k, v] = x.map(|t| head(t, h, &g));
                let d_out = head(d_out, h, &g);
                let sm = causal_softmax::backward(&g, workers, &q, &k, &v, softmax, &d_out);
                [sm.dq, sm.dk, sm.dv]
            })
            .collect();
        pack(&g, &grads)
    }
}
