//! Causal softmax attention `softmax(s Q K^T + causal mask) V`, `s = 1/sqrt(d)`, as
//! FlashAttention-2 CubeCL kernels on `[batch, heads, L, d]` tensors.
//!
//! Forward: one cube per (head, query tile) walks the key tiles up to the diagonal (tiles above
//! it are never read) with an online softmax, and keeps only the output and each row's
//! logsumexp. Backward: `delta = rowsum(dO * O)`; one cube per (head, key tile) accumulates
//! `dK, dV` over the query tiles at or below the diagonal, one cube per (head, query tile)
//! accumulates `dQ`; both recompute `P = exp(s q . k - lse)` instead of reading it (no float
//! atomics, which wgpu lacks). Sums run in `f32` whatever the tensors' float type.
//!
//! A cube has `b x b` units: in the score phase unit `(r, c)` computes the entry of query row
//! `r` and key row `c`; in the accumulation phase it owns row `r`'s columns `c, c + b, ...`.

use burn::tensor::{DType, TensorMetadata};
use burn_cubecl::{kernel::into_contiguous, tensor::CubeTensor, CubeRuntime};
use cubecl::prelude::*;

use super::causal_grad::{delta_kernel, dkv_kernel, dq_kernel};
use super::tile::{dot, empty_like, load_tile, Tiling, MASKED};

#[cube(launch)]
fn forward_kernel<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    out: &mut Tensor<F>,
    lse: &mut Tensor<f32>,
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
    let mut ks = SharedMemory::<f32>::new(b * (d + 1));
    let mut vs = SharedMemory::<f32>::new(b * (d + 1));
    let mut ps = SharedMemory::<f32>::new(b * b);
    // Per row: running maximum, running sum of exp(z - max), rescale of the last step.
    let mut row_max = SharedMemory::<f32>::new(b);
    let mut row_sum = SharedMemory::<f32>::new(b);
    let mut rescale = SharedMemory::<f32>::new(b);
    load_tile::<F>(q, &mut qs, base, q0, 0, len, d, b, d);
    if tid < b {
        row_max[tid] = MASKED;
        row_sum[tid] = 0.0;
    }
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
        let mut z = scale * dot(&qs, &ks, r, c, d);
        if k0 + c > q0 + r {
            z = MASKED;
        }
        ps[r * b + c] = z;
        sync_cube();
        if c == 0 {
            let old = row_max[r];
            let mut m = old;
            for j in 0..b {
                m = max(m, ps[r * b + j]);
            }
            rescale[r] = (old - m).exp();
            row_max[r] = m;
        }
        sync_cube();
        ps[r * b + c] = (z - row_max[r]).exp();
        sync_cube();
        let alpha = rescale[r];
        if c == 0 {
            let mut sum = 0.0f32;
            for j in 0..b {
                sum += ps[r * b + j];
            }
            row_sum[r] = row_sum[r] * alpha + sum;
        }
        for s in 0..slots {
            let col = c + s * b;
            if col < d {
                let mut o = acc[s] * alpha;
                for j in 0..b {
                    o += ps[r * b + j] * vs[j * (d + 1) + col];
                }
                acc[s] = o;
            }
        }
    }
    sync_cube();
    let t = q0 + r;
    if t < len {
        let sum = row_sum[r];
        for s in 0..slots {
            let col = c + s * b;
            if col < d {
                out[base + t * d + col] = F::cast_from(acc[s] / sum);
            }
        }
        if c == 0 {
            lse[bh * len + t] = row_max[r] + sum.ln();
        }
    }
}

/// Output `[batch, heads, L, d]` and the rows' logsumexp `[batch, heads, L]` (`f32`).
pub fn forward<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let [q, k, v] = [q, k, v].map(into_contiguous);
    let t = Tiling::of(&q);
    let out = empty_like(&q, q.shape(), q.dtype);
    let lse = empty_like(&q, t.rows_shape(), DType::F32);
    forward_kernel::launch::<R>(
        &q.client,
        t.cube_count(),
        t.cube_dim(),
        q.clone().into_tensor_arg(),
        k.into_tensor_arg(),
        v.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        t.scale,
        t.b,
        t.d,
        t.slots,
        q.dtype.into(),
    );
    (out, lse)
}

/// Gradients `[dq, dk, dv]` given `d_out` and what [`forward`] returned.
pub fn backward<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    out: CubeTensor<R>,
    lse: CubeTensor<R>,
    d_out: CubeTensor<R>,
) -> [CubeTensor<R>; 3] {
    let [q, k, v, out, d_out] = [q, k, v, out, d_out].map(into_contiguous);
    let t = Tiling::of(&q);
    let rows = t.rows_shape().num_elements();
    let delta = empty_like(&q, t.rows_shape(), DType::F32);
    delta_kernel::launch::<R>(
        &q.client,
        CubeCount::Static(rows.div_ceil(64) as u32, 1, 1),
        CubeDim::new_1d(64),
        out.into_tensor_arg(),
        d_out.clone().into_tensor_arg(),
        delta.clone().into_tensor_arg(),
        t.d,
        q.dtype.into(),
    );
    let [dq, dk, dv] = [0; 3].map(|_| empty_like(&q, q.shape(), q.dtype));
    let args = || [&q, &k, &v, &d_out, &lse, &delta].map(|x| x.clone().into_tensor_arg());
    let [qa, ka, va, da, la, ea] = args();
    dq_kernel::launch::<R>(
        &q.client,
        t.cube_count(),
        t.cube_dim(),
        qa,
        ka,
        va,
        da,
        la,
        ea,
        dq.clone().into_tensor_arg(),
        t.scale,
        t.b,
        t.d,
        t.slots,
        q.dtype.into(),
    );
    let [qa, ka, va, da, la, ea] = args();
    dkv_kernel::launch::<R>(
        &q.client,
        t.cube_count(),
        t.cube_dim(),
        qa,
        ka,
        va,
        da,
        la,
        ea,
        dk.clone().into_tensor_arg(),
        dv.clone().into_tensor_arg(),
        t.scale,
        t.b,
        t.d,
        t.slots,
        q.dtype.into(),
    );
    [dq, dk, dv]
}
