//! The backward kernels of [`super::causal`]: `delta = rowsum(dO * O)`, then `dQ` per query
//! tile and `dK, dV` per key tile, each recomputing `P = exp(s q . k - lse)` tile by tile.

use cubecl::prelude::*;

use super::tile::{dot, load_tile};

/// `delta[t] = dO_t . O_t`, one unit per row.
#[cube(launch)]
pub(super) fn delta_kernel<F: Float>(
    out: &Tensor<F>,
    d_out: &Tensor<F>,
    delta: &mut Tensor<f32>,
    #[comptime] d: usize,
    #[define(F)] _dtype: StorageType,
) {
    let row = ABSOLUTE_POS;
    if row < delta.len() {
        let mut acc = 0.0f32;
        for e in 0..d {
            acc += f32::cast_from(out[row * d + e]) * f32::cast_from(d_out[row * d + e]);
        }
        delta[row] = acc;
    }
}

/// `dP = dO V^T`, `dZ = P (dP - delta)`: entry `(r, c)` of a (query tile, key tile) pair, with
/// `P = exp(s q . k - lse)` recomputed (zero above the diagonal and on padding rows).
#[cube]
#[allow(clippy::too_many_arguments)]
fn probs_and_grad(
    qs: &SharedMemory<f32>,
    ks: &SharedMemory<f32>,
    vs: &SharedMemory<f32>,
    dos: &SharedMemory<f32>,
    lse: &Tensor<f32>,
    delta: &Tensor<f32>,
    row_base: usize,
    t: usize,
    i: usize,
    len: usize,
    r: usize,
    c: usize,
    scale: f32,
    #[comptime] d: usize,
) -> (f32, f32) {
    let mut p = 0.0f32;
    let mut dz = 0.0f32;
    if i <= t && t < len {
        p = (scale * dot(qs, ks, r, c, d) - lse[row_base + t]).exp();
        dz = p * (dot(dos, vs, r, c, d) - delta[row_base + t]);
    }
    (p, dz)
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn dq_kernel<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    d_out: &Tensor<F>,
    lse: &Tensor<f32>,
    delta: &Tensor<f32>,
    dq: &mut Tensor<F>,
    scale: f32,
    #[comptime] b: usize,
    #[comptime] d: usize,
    #[comptime] slots: usize,
    #[define(F)] _dtype: StorageType,
) {
    let len = q.shape(2);
    let bh = CUBE_POS_Y as usize;
    let q0 = CUBE_POS_X as usize * b;
    let tid = UNIT_POS as usize;
    let r = tid / b;
    let c = tid % b;
    let base = bh * len * d;
    let mut qs = SharedMemory::<f32>::new(b * (d + 1));
    let mut dos = SharedMemory::<f32>::new(b * (d + 1));
    let mut ks = SharedMemory::<f32>::new(b * (d + 1));
    let mut vs = SharedMemory::<f32>::new(b * (d + 1));
    let mut dzs = SharedMemory::<f32>::new(b * b);
    load_tile::<F>(q, &mut qs, base, q0, 0, len, d, b, d);
    load_tile::<F>(d_out, &mut dos, base, q0, 0, len, d, b, d);
    let mut acc = Array::<f32>::new(slots);
    for s in 0..slots {
        acc[s] = 0.0;
    }
    for kt in 0..CUBE_POS_X as usize + 1 {
        let k0 = kt * b;
        sync_cube();
        load_tile::<F>(k, &mut ks, base, k0, 0, len, d, b, d);
        load_tile::<F>(v, &mut vs, base, k0, 0, len, d, b, d);
        sync_cube();
        let t = q0 + r;
        let pg = probs_and_grad(
            &qs,
            &ks,
            &vs,
            &dos,
            lse,
            delta,
            bh * len,
            t,
            k0 + c,
            len,
            r,
            c,
            scale,
            d,
        );
        dzs[r * b + c] = pg.1;
        sync_cube();
        // dQ_t += s dZ[t, :] K (eq. dQ = s dZ K).
        for s in 0..slots {
            let col = c + s * b;
            if col < d {
                let mut g = acc[s];
                for j in 0..b {
                    g += dzs[r * b + j] * ks[j * (d + 1) + col];
                }
                acc[s] = g;
            }
        }
    }
    let t = q0 + r;
    if t < len {
        for s in 0..slots {
            let col = c + s * b;
            if col < d {
                dq[base + t * d + col] = F::cast_from(scale * acc[s]);
            }
        }
    }
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn dkv_kernel<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    d_out: &Tensor<F>,
    lse: &Tensor<f32>,
    delta: &Tensor<f32>,
    dk: &mut Tensor<F>,
    dv: &mut Tensor<F>,
    scale: f32,
    #[comptime] b: usize,
    #[comptime] d: usize,
    #[comptime] slots: usize,
    #[define(F)] _dtype: StorageType,
) {
    let len = q.shape(2);
    let bh = CUBE_POS_Y as usize;
    let k0 = CUBE_POS_X as usize * b;
    let tid = UNIT_POS as usize;
    let r = tid / b;
    let c = tid % b;
    let base = bh * len * d;
    let mut ks = SharedMemory::<f32>::new(b * (d + 1));
    let mut vs = SharedMemory::<f32>::new(b * (d + 1));
    let mut qs = SharedMemory::<f32>::new(b * (d + 1));
    let mut dos = SharedMemory::<f32>::new(b * (d + 1));
    let mut ps = SharedMemory::<f32>::new(b * b);
    let mut dzs = SharedMemory::<f32>::new(b * b);
    load_tile::<F>(k, &mut ks, base, k0, 0, len, d, b, d);
    load_tile::<F>(v, &mut vs, base, k0, 0, len, d, b, d);
    let mut dk_acc = Array::<f32>::new(slots);
    let mut dv_acc = Array::<f32>::new(slots);
    for s in 0..slots {
        dk_acc[s] = 0.0;
        dv_acc[s] = 0.0;
    }
    // One cube per tile along x: the query tiles at or below this key tile.
    for qt in CUBE_POS_X as usize..CUBE_COUNT_X as usize {
        let q0 = qt * b;
        sync_cube();
        load_tile::<F>(q, &mut qs, base, q0, 0, len, d, b, d);
        load_tile::<F>(d_out, &mut dos, base, q0, 0, len, d, b, d);
        sync_cube();
        let pg = probs_and_grad(
            &qs,
            &ks,
            &vs,
            &dos,
            lse,
            delta,
            bh * len,
            q0 + r,
            k0 + c,
            len,
            r,
            c,
            scale,
            d,
        );
        ps[r * b + c] = pg.0;
        dzs[r * b + c] = pg.1;
        sync_cube();
        // Key row r: dV += P^T dO, dK += s dZ^T Q.
        for s in 0..slots {
            let col = c + s * b;
            if col < d {
                let mut gv = dv_acc[s];
                let mut gk = dk_acc[s];
                for a in 0..b {
                    gv += ps[a * b + r] * dos[a * (d + 1) + col];
                    gk += dzs[a * b + r] * qs[a * (d + 1) + col];
                }
                dv_acc[s] = gv;
                dk_acc[s] = gk;
            }
        }
    }
    let i = k0 + r;
    if i < len {
        for s in 0..slots {
            let col = c + s * b;
            if col < d {
                dk[base + i * d + col] = F::cast_from(scale * dk_acc[s]);
                dv[base + i * d + col] = F::cast_from(dv_acc[s]);
            }
        }
    }
}
