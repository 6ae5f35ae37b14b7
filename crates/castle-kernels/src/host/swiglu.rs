//! SwiGLU's gate `SiLU(g) * u`, elementwise over the MLP's hidden activations, in one parallel
//! pass forward and one backward (burn's form is six passes forward on one core).

use std::mem::MaybeUninit;

use super::elem::Elem;
use super::host_op::HostOp;
use super::parallel::written_in_chunks;
use super::simd::vectorized;

/// Elements per parallel task.
const CHUNK: usize = 16 * 1024;

/// `SiLU(g) u` for one value, inlined into its caller's [`vectorized`] loop.
#[inline(always)]
pub fn silu_gate<E: Elem>(g: E, u: E) -> E {
    g * E::sigmoid(g) * u
}

/// `SiLU(g) (.) u` for inputs `[g, u]` of equal length.
#[derive(Debug, Clone, Copy)]
pub struct SwiGluGate;

impl HostOp<2> for SwiGluGate {
    type Saved<E: Elem> = ();

    fn forward<E: Elem>(&self, [g, u]: [&[E]; 2]) -> (Vec<E>, ()) {
        assert_eq!(
            g.len(),
            u.len(),
            "SwiGLU gate and up projections differ in size"
        );
        let gate = |i: usize, [o]: [&mut [MaybeUninit<E>]; 1]| {
            let at = i * CHUNK..i * CHUNK + o.len();
            let (g, u) = (&g[at.clone()], &u[at]);
            vectorized(
                #[inline(always)]
                || {
                    for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                        o.write(silu_gate(g, u));
                    }
                },
            )
        };
        // SAFETY: `gate` writes every element of its chunk.
        let [out] = unsafe { written_in_chunks(g.len(), CHUNK, gate) };
        (out, ())
    }

    /// `d g = d u s (1 + g (1 - s))`, `d u = d g s` with `s = sigmoid(g)`.
    fn backward<E: Elem>(&self, [g, u]: [&[E]; 2], _: &(), d_out: &[E]) -> [Vec<E>; 2] {
        let grads = |i: usize, [dg, du]: [&mut [MaybeUninit<E>]; 2]| {
            let at = i * CHUNK..i * CHUNK + dg.len();
            let (g, u, d) = (&g[at.clone()], &u[at.clone()], &d_out[at]);
            vectorized(
                #[inline(always)]
                || {
                    for i in 0..g.len() {
                        let s = E::sigmoid(g[i]);
                        dg[i].write(d[i] * u[i] * s * (E::one() + g[i] * (E::one() - s)));
                        du[i].write(d[i] * g[i] * s);
                    }
                },
            )
        };
        // SAFETY: `grads` writes every element of both chunks.
        unsafe { written_in_chunks(g.len(), CHUNK, grads) }
    }
}
