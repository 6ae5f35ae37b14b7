//! The forward kernels. `segment_sums_kernel`: one cube per (head, segment) sums its segment's
//! terms of every lookahead key. `castle_forward_kernel`: one cube per (head, segment) starts
//! from the earlier segments' sums and walks its query tiles in order (module doc of
//! `castle`). Unit `(r, c)` computes the `(r, c)` entries of the `A`, `sig` and logit tiles;
//! in the row phases it owns columns `c, c + T, ...` of query row `t = I T + r` (its output
//! accumulator) and of owner row `i = J T + r` (its lookahead key `U[i]`). The row's softmax
//! state `(m, l)` is kept, identically, by each of the row's `T` units. The dot products over
//! `d` read the rows of `c` (`kU`, `vU`, `U`, `kC`) from tiles staged in shared memory,
//! `chunk` columns at a time, and the rows of `r` from global memory.

use cubecl::prelude::*;

use super::super::tile::{load_tile, MASKED};
use super::tiles::{
    clamp_row, diagonal_entry, dot_staged, in_band, lookahead_score, segment_end, sig_value, silu,
    sync_all, tile_lookahead,
};

/// `du[g][i] = sum_{j in segment g} sig[i,j] vU_j` for every owner `i` (zero for owners after
/// the segment): segment `g`'s terms of the lookahead keys (eq. 3-4). `du` is
/// `[segments, b, h, L, d]`; a segment is `seg` query tiles.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn segment_sums_kernel<F: Float>(
    qu: &Tensor<F>,
    ku: &Tensor<F>,
    vu: &Tensor<F>,
    du: &mut Tensor<f32>,
    len: u32,
    dim: u32,
    window: u32,
    seg: u32,
    scale: f32,
    #[comptime] tile: usize,
    #[comptime] chunk: usize,
    #[comptime] windowed: bool,
    #[define(F)] _dtype: StorageType,
) {
    let bh = CUBE_POS_X as usize;
    let g = CUBE_POS_Y as usize;
    let r = UNIT_POS_Y as usize;
    let c = UNIT_POS_X as usize;
    let l = len as usize;
    let d = dim as usize;
    let w = window as usize;
    let head = bh * l * d;
    let mine = g * CUBE_COUNT_X as usize * l * d + head;
    let lo = g * seg as usize;
    let hi = segment_end(lo, seg as usize, l.div_ceil(tile));
    let mut sig = SharedMemory::<f32>::new(tile * tile);
    let mut ks = SharedMemory::<f32>::new(tile * (chunk + 1));
    let mut p = r;
    while p < l {
        let mut k = c;
        while k < d {
            du[mine + p * d + k] = 0.0;
            k += tile;
        }
        p += tile;
    }
    for it in lo..hi {
        for jt in 0..it + 1 {
            let band = in_band(jt, it, w, tile, windowed);
            let owner = jt * tile + r;
            let j = it * tile + c;
            let mut qu_ku = 0.0f32;
            if band {
                let own_row = head + clamp_row(owner, l) * d;
                let mut k0 = 0;
                while k0 < d {
                    sync_cube();
                    load_tile::<F>(ku, &mut ks, head, it * tile, k0, l, d, tile, chunk);
                    sync_cube();
                    qu_ku += dot_staged::<F>(qu, own_row + k0, &ks, c, chunk);
                    k0 += chunk;
                }
            }
            sig[r * tile + c] = sig_value(qu_ku, owner, j, band, l, w, scale, windowed);
            sync_all();
            if band && owner < l {
                let mut k = c;
                while k < d {
                    du[mine + owner * d + k] +=
                        tile_lookahead(&sig, vu, head, it, l, d, r, k, tile);
                    k += tile;
                }
            }
            sync_all();
        }
    }
}

/// `out` and `lse = m + ln l` for the rows of segment `CUBE_POS_Y`; the last segment also writes
/// `u = u_final`. `work` (`[segments, b, h, L, d]`) holds each segment's running `U`, which
/// starts as the earlier segments' sums in `du`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn castle_forward_kernel<F: Float>(
    qu: &Tensor<F>,
    ku: &Tensor<F>,
    vu: &Tensor<F>,
    qc: &Tensor<F>,
    kc: &Tensor<F>,
    vc: &Tensor<F>,
    qc_nope: &Tensor<F>,
    out: &mut Tensor<F>,
    lse: &mut Tensor<f32>,
    u: &mut Tensor<f32>,
    work: &mut Tensor<f32>,
    du: &Tensor<f32>,
    len: u32,
    dim: u32,
    window: u32,
    seg: u32,
    scale: f32,
    #[comptime] tile: usize,
    #[comptime] slots: usize,
    #[comptime] chunk: usize,
    #[comptime] windowed: bool,
    #[define(F)] _dtype: StorageType,
) {
    let bh = CUBE_POS_X as usize;
    let g = CUBE_POS_Y as usize;
    let r = UNIT_POS_Y as usize;
    let c = UNIT_POS_X as usize;
    let l = len as usize;
    let d = dim as usize;
    let w = window as usize;
    let head = bh * l * d;
    let slot = CUBE_COUNT_X as usize * l * d;
    // This segment's running keys: `U[i]` at `uw + i d`.
    let uw = g * slot + head;
    let lo = g * seg as usize;
    let hi = segment_end(lo, seg as usize, l.div_ceil(tile));
    let mut a = SharedMemory::<f32>::new(tile * tile);
    let mut sig = SharedMemory::<f32>::new(tile * tile);
    let mut logits = SharedMemory::<f32>::new(tile * tile);
    // Staged column chunks of the rows of `c`: kU / vU of tile `it`, U and kC of tile `jt`.
    let mut s0 = SharedMemory::<f32>::new(tile * (chunk + 1));
    let mut s1 = SharedMemory::<f32>::new(tile * (chunk + 1));
    let mut s2 = SharedMemory::<f32>::new(tile * (chunk + 1));
    // Row t's output, columns c, c + T, ...
    let mut o = Array::<f32>::new(slots);

    // U = the earlier segments' terms.
    let mut p = r;
    while p < l {
        let mut k = c;
        while k < d {
            let mut acc = 0.0f32;
            for g2 in 0..g {
                acc += du[g2 * slot + head + p * d + k];
            }
            work[uw + p * d + k] = acc;
            k += tile;
        }
        p += tile;
    }
    sync_all();

    for it in lo..hi {
        let t = it * tile + r;
        let live = t < l;
        let row = head + t * d;
        let row_r = head + clamp_row(t, l) * d;
        a[r * tile + c] = diagonal_entry::<F>(
            qc_nope, vu, &mut s0, head, it, t, row_r, c, l, d, scale, tile, chunk,
        );
        for s in 0..slots {
            o[s] = 0.0;
        }
        let mut m = f32::new(MASKED);
        let mut sum = 0.0f32;
        for jt in 0..it + 1 {
            let band = in_band(jt, it, w, tile, windowed);
            let owner = jt * tile + r;
            let own_row = head + clamp_row(owner, l) * d;
            // The dot products over d: qU_i . kU_j (sig), qC_t . U[i] (S_U), qC_t . kC_i.
            let mut qu_ku = 0.0f32;
            let mut qc_u = 0.0f32;
            let mut qc_kc = 0.0f32;
            let mut k0 = 0;
            while k0 < d {
                sync_all();
                load_tile::<F>(ku, &mut s0, head, it * tile, k0, l, d, tile, chunk);
                load_tile::<f32>(work, &mut s1, uw, jt * tile, k0, l, d, tile, chunk);
                load_tile::<F>(kc, &mut s2, head, jt * tile, k0, l, d, tile, chunk);
                sync_cube();
                if band {
                    qu_ku += dot_staged::<F>(qu, own_row + k0, &s0, c, chunk);
                }
                qc_u += dot_staged::<F>(qc_nope, row_r + k0, &s1, c, chunk);
                qc_kc += dot_staged::<F>(qc, row_r + k0, &s2, c, chunk);
                k0 += chunk;
            }
            sig[r * tile + c] = sig_value(qu_ku, owner, it * tile + c, band, l, w, scale, windowed);
            sync_all();
            // eq. 7 for query t and owner i.
            let i = jt * tile + c;
            let mut logit = f32::new(MASKED);
            if live && i <= t {
                let su = lookahead_score(qc_u, &a, &sig, r, c, scale, tile);
                logit = scale * qc_kc - silu(su);
            }
            logits[r * tile + c] = logit;
            sync_all();
            // U[i] += sum_j sig[i,j] vU_j: the keys as of the end of tile `it` (eq. 3-4), once
            // every query of the tile has read them.
            if band && owner < l {
                let mut k = c;
                while k < d {
                    work[uw + owner * d + k] +=
                        tile_lookahead(&sig, vu, head, it, l, d, r, k, tile);
                    k += tile;
                }
            }
            // The online softmax of eq. 8 on row t.
            let mut m_new = m;
            for c2 in 0..tile {
                m_new = f32::max(m_new, logits[r * tile + c2]);
            }
            let rescale = f32::exp(m - m_new);
            sum *= rescale;
            for s in 0..slots {
                o[s] = o[s] * rescale;
            }
            for c2 in 0..tile {
                let i2 = jt * tile + c2;
                if i2 < l {
                    let weight = f32::exp(logits[r * tile + c2] - m_new);
                    sum += weight;
                    for s in 0..slots {
                        let k = c + s * tile;
                        if k < d {
                            o[s] = o[s] + weight * f32::cast_from(vc[head + i2 * d + k]);
                        }
                    }
                }
            }
            m = m_new;
            sync_all();
        }
        if live {
            let inv = 1.0 / sum;
            for s in 0..slots {
                let k = c + s * tile;
                if k < d {
                    out[row + k] = F::cast_from(o[s] * inv);
                }
            }
            if c == 0 {
                lse[bh * l + t] = m + f32::ln(sum);
            }
        }
    }
    // After the last segment, U is every key's final lookahead key. Unit (r, c) wrote these
    // entries of `work` itself.
    if g == CUBE_COUNT_Y as usize - 1 {
        let mut p = r;
        while p < l {
            let mut k = c;
            while k < d {
                u[head + p * d + k] = work[uw + p * d + k];
                k += tile;
            }
            p += tile;
        }
    }
}
