//! The backward kernel: one cube per head walks the query tiles `I` downwards, recomputing the
//! forward's tiles from `O(L d)` state. With `D[i] = dLoss/dU[i]` summed over the query tiles
//! after `I` (so `D` is the gradient of every `sig[i,j] vU_j` with `j` in `I`), for each owner
//! tile `J <= I`:
//!
//! ```text
//! (1) dvU_j  += sum_i sig[i,j] D[i]                       j in I
//! (2) U[i]   -= sum_j sig[i,j] vU_j                       i in J: the keys tile I's queries saw
//! (3) p = exp(logit - lse_t), dl = p (dO_t . vC_i - delta_t), dsu = -dl SiLU'(S_U)
//!     dqC_t += s dl kC_i, dqC_nope_t += s dsu U[i], dA[t,j] += dsu[t,i] sig[i,j]
//! (4) dkC_i += s sum_t dl qC_t, dvC_i += sum_t p dO_t
//!     dsig[i,j] = (D[i] . vU_j + sum_t dsu[t,i] A[t,j]) Mu[i,j], draw = dsig sig (1 - sig)
//!     dqU_i += s sum_j draw kU_j, then D[i] += s sum_t dsu[t,i] qC_nope_t
//! (5) dkU_j += s sum_i draw[i,j] qU_i
//! ```
//!
//! and after the last `J`: `dqC_nope_t += s sum_j dA[t,j] vU_j`, `dvU_j += s sum_t dA[t,j] qC_nope_t`
//! (`delta_t = dO_t . out_t`). Unit `(r, c)` computes the `(r, c)` entries of the tiles
//! (`sig`, `A`, `p`, `dl`, `dsu`, `draw`, `dA`); in the row phases it owns columns
//! `c, c + T, ...` of row `I T + r` (query `t` in (3), position `j` in (1), (5) and the `dA`
//! step) and of owner row `J T + r` in (2), (4). Each gradient entry has one owner: no atomics.

use cubecl::prelude::*;

use super::tiles::{
    diagonal_entry, dot, in_band, lookahead_mask, lookahead_score, sig_entry, silu, silu_grad,
    sync_all,
};

/// The seven gradients (f32, same shapes as the inputs) from the forward's `out`, `lse`,
/// `u_final` and `d_out`; `state` (`[2, b, h, L, d]`) holds the working `U` and `D`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn castle_backward_kernel<F: Float>(
    qu: &Tensor<F>,
    ku: &Tensor<F>,
    vu: &Tensor<F>,
    qc: &Tensor<F>,
    kc: &Tensor<F>,
    vc: &Tensor<F>,
    qc_nope: &Tensor<F>,
    out: &Tensor<F>,
    d_out: &Tensor<F>,
    lse: &Tensor<f32>,
    u_final: &Tensor<f32>,
    state: &mut Tensor<f32>,
    g_qu: &mut Tensor<f32>,
    g_ku: &mut Tensor<f32>,
    g_vu: &mut Tensor<f32>,
    g_qc: &mut Tensor<f32>,
    g_kc: &mut Tensor<f32>,
    g_vc: &mut Tensor<f32>,
    g_qc_nope: &mut Tensor<f32>,
    len: u32,
    dim: u32,
    window: u32,
    scale: f32,
    #[comptime] tile: usize,
    #[comptime] windowed: bool,
    #[define(F)] _dtype: StorageType,
) {
    let bh = CUBE_POS_X as usize;
    let r = UNIT_POS_Y as usize;
    let c = UNIT_POS_X as usize;
    let l = len as usize;
    let d = dim as usize;
    let w = window as usize;
    let s = scale;
    let head = bh * l * d;
    // D[i] lives at `dd + head + i d`, after every head's U.
    let dd = state.len() / 2;
    let n_tiles = l.div_ceil(tile);
    let mut a = SharedMemory::<f32>::new(tile * tile);
    let mut sig = SharedMemory::<f32>::new(tile * tile);
    let mut prob = SharedMemory::<f32>::new(tile * tile);
    let mut dl = SharedMemory::<f32>::new(tile * tile);
    let mut dsu = SharedMemory::<f32>::new(tile * tile);
    let mut da = SharedMemory::<f32>::new(tile * tile);
    let mut draw = SharedMemory::<f32>::new(tile * tile);

    // U = u_final, D = 0, gradients 0, on the entries this unit owns.
    let mut p = r;
    while p < l {
        let mut k = c;
        while k < d {
            let e = head + p * d + k;
            state[e] = u_final[e];
            state[dd + e] = 0.0;
            g_qu[e] = 0.0;
            g_ku[e] = 0.0;
            g_vu[e] = 0.0;
            g_qc[e] = 0.0;
            g_kc[e] = 0.0;
            g_vc[e] = 0.0;
            g_qc_nope[e] = 0.0;
            k += tile;
        }
        p += tile;
    }
    sync_all();

    for it_rev in 0..n_tiles {
        let it = n_tiles - 1 - it_rev;
        let t = it * tile + r;
        let live = t < l;
        let row = head + t * d;
        a[r * tile + c] = diagonal_entry(qc_nope, vu, head, t, it * tile + c, l, d, s);
        da[r * tile + c] = 0.0;
        let mut delta = 0.0f32;
        let mut lse_t = 0.0f32;
        if live {
            delta = dot(d_out, row, out, row, d);
            lse_t = lse[bh * l + t];
        }
        for jt in 0..it + 1 {
            let band = in_band(jt, it, w, tile, windowed);
            let own = jt * tile + r;
            let own_row = head + own * d;
            sig[r * tile + c] =
                sig_entry(qu, ku, head, own, it * tile + c, band, l, d, w, s, windowed);
            sync_all();
            if band {
                // (1) position j = t, D still without tile `it`.
                if live {
                    let mut k = c;
                    while k < d {
                        let mut acc = 0.0f32;
                        for c2 in 0..tile {
                            let i = jt * tile + c2;
                            if i < l {
                                acc += sig[c2 * tile + r] * state[dd + head + i * d + k];
                            }
                        }
                        g_vu[row + k] += acc;
                        k += tile;
                    }
                }
                // (2) owner `own`: peel tile `it` off U.
                if own < l {
                    let mut k = c;
                    while k < d {
                        let mut acc = 0.0f32;
                        for c2 in 0..tile {
                            let j = it * tile + c2;
                            if j < l {
                                acc += sig[r * tile + c2] * f32::cast_from(vu[head + j * d + k]);
                            }
                        }
                        state[own_row + k] -= acc;
                        k += tile;
                    }
                }
            }
            sync_all();
            // (3) query t, owner i: recompute S_U, the logit and p from lse.
            let i = jt * tile + c;
            let mut pv = 0.0f32;
            let mut dlv = 0.0f32;
            let mut dsv = 0.0f32;
            if live && i <= t {
                let key = head + i * d;
                let su = lookahead_score(qc_nope, state, &a, &sig, row, key, r, c, d, s, tile);
                let logit = s * dot(qc, row, kc, key, d) - silu(su);
                pv = f32::exp(logit - lse_t);
                dlv = pv * (dot(d_out, row, vc, key, d) - delta);
                dsv = -dlv * silu_grad(su);
            }
            prob[r * tile + c] = pv;
            dl[r * tile + c] = dlv;
            dsu[r * tile + c] = dsv;
            sync_all();
            // (3) continued, query t: dqC_t, dqC_nope_t and dA[t, j].
            if live {
                let mut k = c;
                while k < d {
                    let mut dq = 0.0f32;
                    let mut dq_nope = 0.0f32;
                    for c2 in 0..tile {
                        let i2 = jt * tile + c2;
                        if i2 < l {
                            let key = head + i2 * d + k;
                            dq += dl[r * tile + c2] * f32::cast_from(kc[key]);
                            dq_nope += dsu[r * tile + c2] * state[key];
                        }
                    }
                    g_qc[row + k] += s * dq;
                    g_qc_nope[row + k] += s * dq_nope;
                    k += tile;
                }
                let mut acc = 0.0f32;
                for c2 in 0..tile {
                    acc += dsu[r * tile + c2] * sig[c2 * tile + c];
                }
                da[r * tile + c] += acc;
            }
            // (4) owner `own`, position j: dsig uses D[own] before D takes tile `it`'s share.
            let j = it * tile + c;
            let mut val = 0.0f32;
            if own < l && band && j < l && lookahead_mask(own, j, w, windowed) {
                let mut ds = dot(state, dd + own_row, vu, head + j * d, d);
                for c3 in c..tile {
                    ds += dsu[c3 * tile + r] * a[c3 * tile + c];
                }
                let sg = sig[r * tile + c];
                val = ds * sg * (1.0 - sg);
            }
            draw[r * tile + c] = val;
            sync_all();
            // (4) continued, owner `own`: dkC, dvC, dqU and D += s dsu^T qC_nope.
            if own < l {
                let mut k = c;
                while k < d {
                    let mut dk = 0.0f32;
                    let mut dv = 0.0f32;
                    let mut dd_k = 0.0f32;
                    let mut dq = 0.0f32;
                    for c2 in 0..tile {
                        let pos = it * tile + c2;
                        if pos < l {
                            let q = head + pos * d + k;
                            dk += dl[c2 * tile + r] * f32::cast_from(qc[q]);
                            dv += prob[c2 * tile + r] * f32::cast_from(d_out[q]);
                            dd_k += dsu[c2 * tile + r] * f32::cast_from(qc_nope[q]);
                            dq += draw[r * tile + c2] * f32::cast_from(ku[q]);
                        }
                    }
                    g_kc[own_row + k] += s * dk;
                    g_vc[own_row + k] += dv;
                    g_qu[own_row + k] += s * dq;
                    state[dd + own_row + k] += s * dd_k;
                    k += tile;
                }
            }
            // (5) position j = t.
            if band && live {
                let mut k = c;
                while k < d {
                    let mut acc = 0.0f32;
                    for c2 in 0..tile {
                        let i2 = jt * tile + c2;
                        if i2 < l {
                            acc += draw[c2 * tile + r] * f32::cast_from(qu[head + i2 * d + k]);
                        }
                    }
                    g_ku[row + k] += s * acc;
                    k += tile;
                }
            }
            sync_all();
        }
        // The diagonal correction's own gradient: A[t,j] = s qC_nope_t . vU_j.
        if live {
            let mut k = c;
            while k < d {
                let mut dq = 0.0f32;
                let mut dv = 0.0f32;
                for c2 in 0..tile {
                    let pos = it * tile + c2;
                    if pos < l {
                        let e = head + pos * d + k;
                        if c2 <= r {
                            dq += da[r * tile + c2] * f32::cast_from(vu[e]);
                        }
                        if c2 >= r {
                            dv += da[c2 * tile + r] * f32::cast_from(qc_nope[e]);
                        }
                    }
                }
                g_qc_nope[row + k] += s * dq;
                g_vu[row + k] += s * dv;
                k += tile;
            }
        }
        sync_all();
    }
}
