//! The forward kernel: one cube per head walks the query tiles in order (module doc of
//! `castle`), thread `r` holding query row `t = I T + r`'s online-softmax state `(m, l, o)` and
//! owning the lookahead key `U[i]` of every `i = J T + r`.

use cubecl::prelude::*;

use super::tiles::{diagonal_row, dot, in_band, lookahead_score, sig_row, silu, sync_all};

/// `out`, `lse = m + ln l` per row and `u = u_final`; `o` is an `f32` scratch of `out`'s shape.
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
    o: &mut Tensor<f32>,
    len: u32,
    dim: u32,
    window: u32,
    scale: f32,
    #[comptime] tile: usize,
    #[comptime] windowed: bool,
    #[define(F)] _dtype: StorageType,
) {
    let bh = CUBE_POS_X as usize;
    let r = UNIT_POS_X as usize;
    let l = len as usize;
    let d = dim as usize;
    let w = window as usize;
    let head = bh * l * d;
    let n_tiles = l.div_ceil(tile);
    let mut a = SharedMemory::<f32>::new(tile * tile);
    let mut sig = SharedMemory::<f32>::new(tile * tile);

    // U = 0: no lookahead yet.
    let mut p = r;
    while p < l {
        for k in 0..d {
            u[head + p * d + k] = 0.0;
        }
        p += tile;
    }
    sync_all();

    for it in 0..n_tiles {
        let t = it * tile + r;
        let live = t < l;
        let row = head + t * d;
        diagonal_row(qc_nope, vu, &mut a, head, it, l, d, scale, tile);
        if live {
            for k in 0..d {
                o[row + k] = 0.0;
            }
        }
        let mut m = f32::new(-1.0e30);
        let mut sum = 0.0f32;
        for jt in 0..it + 1 {
            sig_row(
                qu, ku, &mut sig, head, jt, it, l, d, w, scale, tile, windowed,
            );
            sync_all();
            if live {
                for c in 0..tile {
                    let i = jt * tile + c;
                    if i <= t {
                        let su = lookahead_score(
                            qc_nope,
                            u,
                            &a,
                            &sig,
                            row,
                            head + i * d,
                            c,
                            d,
                            scale,
                            tile,
                        );
                        // eq. 7, then the online softmax of eq. 8.
                        let logit = scale * dot(qc, row, kc, head + i * d, d) - silu(su);
                        let m_new = f32::max(m, logit);
                        let rescale = f32::exp(m - m_new);
                        let weight = f32::exp(logit - m_new);
                        sum = sum * rescale + weight;
                        for k in 0..d {
                            o[row + k] = o[row + k] * rescale
                                + weight * f32::cast_from(vc[head + i * d + k]);
                        }
                        m = m_new;
                    }
                }
            }
            sync_all();
            // U[i] += sum_j sig[i,j] vU_j: the keys as of the end of tile `it` (eq. 3-4).
            let i = jt * tile + r;
            if in_band(jt, it, w, tile, windowed) && i < l {
                for k in 0..d {
                    let mut acc = 0.0f32;
                    for c in 0..tile {
                        let j = it * tile + c;
                        if j < l {
                            acc += sig[r * tile + c] * f32::cast_from(vu[head + j * d + k]);
                        }
                    }
                    u[head + i * d + k] += acc;
                }
            }
        }
        if live {
            let inv = 1.0 / sum;
            for k in 0..d {
                out[row + k] = F::cast_from(o[row + k] * inv);
            }
            lse[bh * l + t] = m + f32::ln(sum);
        }
    }
}
