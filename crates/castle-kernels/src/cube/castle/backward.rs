//! The backward kernel: one cube per (head, segment) walks the segment's query tiles `I`
//! downwards, recomputing the forward's tiles from `O(L d)` state. With `D[i] = dLoss/dU[i]` summed over the query tiles
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
//! As in the forward kernel, the dot products over `d` read the rows of `c` (`kU`, `vU`, `U`,
//! `kC`, `vC`) from tiles staged in shared memory, `chunk` columns at a time.
//!
//! Segments: `U` at the end of segment `g` is `u_final` minus the later segments' terms `du`,
//! and `D` there is the later segments' share of `dLoss/dU`, `d_sums`. So the kernel runs twice:
//! with `sums_only` it walks (2) and (3) and writes its segment's `D` sum into `d_sums[g]`;
//! then in full, starting from the later segments' `d_sums`. Query-row gradients belong to
//! the segment; the owner-row ones (`dqU`, `dkC`, `dvC`) go to segment `g`'s partial sums.

use cubecl::prelude::*;

use super::super::tile::load_tile;
use super::tiles::{
    clamp_row, diagonal_entry, dot, dot_staged, in_band, lookahead_mask, lookahead_score,
    segment_end, sig_value, silu, silu_grad, sync_all, tile_lookahead,
};

/// The seven gradients (f32) from the forward's `out`, `lse`, `u_final` and `d_out`, for the
/// rows of segment `CUBE_POS_Y`: the query-row ones (`dkU`, `dvU`, `dqC`, `dqC_nope`, shaped as
/// the inputs) and the owner-row partial sums (`dqU`, `dkC`, `dvC`, `[segments, b, h, L, d]`).
/// `du` and `d_sums` are `[segments, b, h, L, d]`; `state` (`[2, segments, b, h, L, d]`) holds
/// each segment's working `U` and `D`.
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
    du: &Tensor<f32>,
    d_sums: &mut Tensor<f32>,
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
    seg: u32,
    scale: f32,
    #[comptime] tile: usize,
    #[comptime] chunk: usize,
    #[comptime] windowed: bool,
    #[comptime] sums_only: bool,
    #[define(F)] _dtype: StorageType,
) {
    let bh = CUBE_POS_X as usize;
    let g = CUBE_POS_Y as usize;
    let segments = CUBE_COUNT_Y as usize;
    let r = UNIT_POS_Y as usize;
    let c = UNIT_POS_X as usize;
    let l = len as usize;
    let d = dim as usize;
    let w = window as usize;
    let s = scale;
    let head = bh * l * d;
    let slot = CUBE_COUNT_X as usize * l * d;
    // This segment's U[i] lives at `uw + i d`, its D[i] at `dd + uw + i d`, its owner-row
    // partial gradients at `uw + i d`.
    let uw = g * slot + head;
    let dd = state.len() / 2;
    let lo = g * seg as usize;
    let hi = segment_end(lo, seg as usize, l.div_ceil(tile));
    let mut a = SharedMemory::<f32>::new(tile * tile);
    let mut sig = SharedMemory::<f32>::new(tile * tile);
    let mut prob = SharedMemory::<f32>::new(tile * tile);
    let mut dl = SharedMemory::<f32>::new(tile * tile);
    let mut dsu = SharedMemory::<f32>::new(tile * tile);
    let mut da = SharedMemory::<f32>::new(tile * tile);
    let mut draw = SharedMemory::<f32>::new(tile * tile);
    // Staged column chunks of the rows of `c`: kU / vU of tile `it`, then U, kC, vC of tile `jt`.
    let mut s0 = SharedMemory::<f32>::new(tile * (chunk + 1));
    let mut s1 = SharedMemory::<f32>::new(tile * (chunk + 1));
    let mut s2 = SharedMemory::<f32>::new(tile * (chunk + 1));

    // U and D at the segment's end, gradients 0, on the entries this unit owns.
    let mut p = r;
    while p < l {
        let mut k = c;
        while k < d {
            let e = head + p * d + k;
            let mut u = u_final[e];
            let mut dv = 0.0f32;
            for g2 in g + 1..segments {
                u -= du[g2 * slot + e];
                if !sums_only {
                    dv += d_sums[g2 * slot + e];
                }
            }
            state[uw + p * d + k] = u;
            state[dd + uw + p * d + k] = dv;
            if !sums_only {
                g_qu[uw + p * d + k] = 0.0;
                g_kc[uw + p * d + k] = 0.0;
                g_vc[uw + p * d + k] = 0.0;
                if p >= lo * tile && p < hi * tile {
                    g_ku[e] = 0.0;
                    g_vu[e] = 0.0;
                    g_qc[e] = 0.0;
                    g_qc_nope[e] = 0.0;
                }
            }
            k += tile;
        }
        p += tile;
    }
    sync_all();

    for it_rev in lo..hi {
        let it = hi - 1 - (it_rev - lo);
        let t = it * tile + r;
        let live = t < l;
        let row = head + t * d;
        let row_r = head + clamp_row(t, l) * d;
        a[r * tile + c] = diagonal_entry::<F>(
            qc_nope, vu, &mut s0, head, it, t, row_r, c, l, d, s, tile, chunk,
        );
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
            let own_w = uw + own * d;
            let own_r = clamp_row(own, l) * d;
            // qU_own . kU_j (sig) and, for (4), D[own] . vU_j, before (4) adds tile `it` to D.
            let mut qu_ku = 0.0f32;
            let mut d_vu = 0.0f32;
            if band {
                let mut k0 = 0;
                while k0 < d {
                    sync_all();
                    load_tile::<F>(ku, &mut s0, head, it * tile, k0, l, d, tile, chunk);
                    if !sums_only {
                        load_tile::<F>(vu, &mut s1, head, it * tile, k0, l, d, tile, chunk);
                    }
                    sync_cube();
                    qu_ku += dot_staged::<F>(qu, head + own_r + k0, &s0, c, chunk);
                    if !sums_only {
                        d_vu += dot_staged::<f32>(state, dd + uw + own_r + k0, &s1, c, chunk);
                    }
                    k0 += chunk;
                }
            }
            sig[r * tile + c] = sig_value(qu_ku, own, it * tile + c, band, l, w, s, windowed);
            sync_all();
            if band {
                // (1) position j = t, D still without tile `it`.
                if live && !sums_only {
                    let mut k = c;
                    while k < d {
                        let mut acc = 0.0f32;
                        for c2 in 0..tile {
                            let i = jt * tile + c2;
                            if i < l {
                                acc += sig[c2 * tile + r] * state[dd + uw + i * d + k];
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
                        state[own_w + k] -= tile_lookahead(&sig, vu, head, it, l, d, r, k, tile);
                        k += tile;
                    }
                }
            }
            // (3) query t, owner i: recompute S_U, the logit and p from lse, with U as peeled.
            let mut qc_u = 0.0f32;
            let mut qc_kc = 0.0f32;
            let mut do_vc = 0.0f32;
            let mut k0 = 0;
            while k0 < d {
                sync_all();
                load_tile::<f32>(state, &mut s0, uw, jt * tile, k0, l, d, tile, chunk);
                load_tile::<F>(kc, &mut s1, head, jt * tile, k0, l, d, tile, chunk);
                load_tile::<F>(vc, &mut s2, head, jt * tile, k0, l, d, tile, chunk);
                sync_cube();
                qc_u += dot_staged::<F>(qc_nope, row_r + k0, &s0, c, chunk);
                qc_kc += dot_staged::<F>(qc, row_r + k0, &s1, c, chunk);
                do_vc += dot_staged::<F>(d_out, row_r + k0, &s2, c, chunk);
                k0 += chunk;
            }
            let i = jt * tile + c;
            let mut pv = 0.0f32;
            let mut dlv = 0.0f32;
            let mut dsv = 0.0f32;
            if live && i <= t {
                let su = lookahead_score(qc_u, &a, &sig, r, c, s, tile);
                let logit = s * qc_kc - silu(su);
                pv = f32::exp(logit - lse_t);
                dlv = pv * (do_vc - delta);
                dsv = -dlv * silu_grad(su);
            }
            prob[r * tile + c] = pv;
            dl[r * tile + c] = dlv;
            dsu[r * tile + c] = dsv;
            sync_all();
            // (3) continued, query t: dqC_t, dqC_nope_t and dA[t, j].
            if live && !sums_only {
                let mut k = c;
                while k < d {
                    let mut dq = 0.0f32;
                    let mut dq_nope = 0.0f32;
                    for c2 in 0..tile {
                        let i2 = jt * tile + c2;
                        if i2 < l {
                            dq += dl[r * tile + c2] * f32::cast_from(kc[head + i2 * d + k]);
                            dq_nope += dsu[r * tile + c2] * state[uw + i2 * d + k];
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
            if !sums_only && own < l && band && j < l && lookahead_mask(own, j, w, windowed) {
                let mut ds = d_vu;
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
                            dd_k += dsu[c2 * tile + r] * f32::cast_from(qc_nope[q]);
                            if !sums_only {
                                dk += dl[c2 * tile + r] * f32::cast_from(qc[q]);
                                dv += prob[c2 * tile + r] * f32::cast_from(d_out[q]);
                                dq += draw[r * tile + c2] * f32::cast_from(ku[q]);
                            }
                        }
                    }
                    if !sums_only {
                        g_kc[own_w + k] += s * dk;
                        g_vc[own_w + k] += dv;
                        g_qu[own_w + k] += s * dq;
                    }
                    state[dd + own_w + k] += s * dd_k;
                    k += tile;
                }
            }
            // (5) position j = t.
            if band && live && !sums_only {
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
        if live && !sums_only {
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
    // This segment's share of D, for the earlier segments. Unit (r, c) wrote these entries.
    if sums_only {
        let mut p = r;
        while p < l {
            let mut k = c;
            while k < d {
                d_sums[uw + p * d + k] = state[dd + uw + p * d + k];
                k += tile;
            }
            p += tile;
        }
    }
}

/// `sum[e] = sum_g parts[g][e]` over `segments` slots of `n` elements: the owner-row
/// gradients from every segment's partial sums.
#[cube(launch)]
pub(super) fn sum_segments_kernel(
    parts: &Tensor<f32>,
    sum: &mut Tensor<f32>,
    n: u32,
    segments: u32,
) {
    let n = n as usize;
    let mut e = ABSOLUTE_POS;
    while e < n {
        let mut acc = 0.0f32;
        for g in 0..segments as usize {
            acc += parts[g * n + e];
        }
        sum[e] = acc;
        e += CUBE_COUNT * CUBE_DIM as usize;
    }
}
