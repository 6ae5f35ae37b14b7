//! CASTLE attention (eq. 3-8; CASTLE-SWL's eq. 9) as two CubeCL kernels, forward and backward,
//! with `O(L d)` saved state: FlashAttention's design carried to CASTLE (the paper's
//! Algorithms 1 and 3 in spirit, spec sections 3-4).
//!
//! Positions are cut into tiles of [`TILE`]. The chunked form's prefix sum `C[J, I]` is,
//! transposed, the lookahead keys "as of the end of the previous query tile":
//! `U[i] = sum_{j in tiles < I, Mu[i,j]} sig(i, j) vU_j`. So one cube per (batch, head) walks the
//! query tiles `I` in order with `U` in an `L x d` buffer, and for every owner tile `J <= I`:
//!
//! ```text
//! sig[i,j]  = sigmoid(s qU_i . kU_j) Mu[i,j]          i in J, j in I   (eq. 3-4, 9; a tile)
//! A[t,j]    = s qC_t . vU_j  (j <= t)                 t, j in I        (the diagonal correction)
//! S_U[t,i]  = s qC_t . U[i] + sum_{j in I} A[t,j] sig[i,j]             (eq. 5-6)
//! logit     = s qC_t . kC_i - SiLU(S_U[t,i])  -> online softmax, o_t   (eq. 7-8)
//! U[i]     += sum_{j in I} sig[i,j] vU_j                               (after the rows used it)
//! ```
//!
//! Under SWL, `sig` tiles outside the band are never computed. After the last tile `U` is every
//! key's final lookahead key `u_final`; it and the row statistics `lse_t = m_t + ln l_t` are all
//! the forward pass saves. The backward pass walks the query tiles downwards, peels tile `I`'s
//! terms off `U` to recover the keys as tile `I`'s queries saw them, recomputes the
//! probabilities from `lse`, and carries `D[i] = dLoss/dU` summed over later query tiles (the
//! suffix sum mirroring `C`'s prefix sum); `castle/backward.rs` lists the gradients.
//!
//! One cube of `TILE x TILE` units per head: a head's tiles run in sequence (the `U` and `D`
//! recurrences are sequential in the query tile), so the parallelism is
//! `batch x heads x TILE^2` units. Unit `(r, c)` computes tile entry `(r, c)`; in the row phases
//! it owns columns `c, c + TILE, ...` of row `r` of a tile. Every gradient entry is
//! read-modify-written only by its head's cube, by its one owning unit: no float atomics.
//! Arithmetic is in `f32` whatever `F`.
//! `s = 1/sqrt(d)` as in `crate::attention::lookahead::scale`; `qC` in `S_U` is the un-rotated
//! query `qc_nope` (see `crate::rope`).

mod backward;
mod forward;
mod tiles;

use burn::tensor::{DType, Shape, TensorMetadata};
use burn_cubecl::kernel::{cast, into_contiguous};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeRuntime, FloatElement};
use cubecl::prelude::*;

use super::tile::empty_like;

/// Tile side: `TILE x TILE` units per cube, and the `TILE x TILE` shared-memory tiles (seven in the
/// backward pass: 7 KiB of f32, inside wgpu's default 16 KiB of workgroup memory).
pub const TILE: usize = 16;

/// Storage buffers the forward kernel binds: seven inputs, `out`, `lse` and `u_final`.
const FORWARD_BINDINGS: u32 = 10;

/// Storage buffers the backward kernel binds: seven inputs, `out`, `d_out`, the two saved
/// tensors, the `U`/`D` state and seven gradient accumulators.
const BACKWARD_BINDINGS: u32 = 19;

/// Forward pass: `(out, [lse, u_final])`, `out` `[b, h, L, d]` in `F`, `lse` `[b, h, L]` and
/// `u_final` `[b, h, L, d]` in `f32`. Inputs in [`crate::attention::CastleHeads`]' order
/// `qu, ku, vu, qc, kc, vc, qc_nope`, each `[batch, heads, L, d]`.
pub fn forward<R: CubeRuntime, F: FloatElement>(
    x: [CubeTensor<R>; 7],
    window: Option<usize>,
) -> (CubeTensor<R>, [CubeTensor<R>; 2]) {
    let g = Geometry::of::<R, F>(&x, window);
    let (l, d, w, s) = g.scalars();
    let x = x.map(into_contiguous);
    let client = x[0].client.clone();
    check_bindings(&x[0], "forward", FORWARD_BINDINGS);
    // Dense outputs: the kernels index rows as `p d + k` (CUDA's default layout pads rows).
    let empty = |shape: Shape| empty_like(&x[0], shape, DType::F32);
    let out = empty_like(&x[0], g.rows(), F::dtype());
    let (lse, u_final) = (empty(g.stats()), empty(g.rows()));
    if g.cubes() > 0 {
        let [qu, ku, vu, qc, kc, vc, qc_nope] = x.map(CubeTensor::into_tensor_arg);
        forward::castle_forward_kernel::launch::<R>(
            &client,
            CubeCount::Static(g.cubes(), 1, 1),
            CubeDim::new_2d(TILE as u32, TILE as u32),
            qu,
            ku,
            vu,
            qc,
            kc,
            vc,
            qc_nope,
            out.clone().into_tensor_arg(),
            lse.clone().into_tensor_arg(),
            u_final.clone().into_tensor_arg(),
            l,
            d,
            w,
            s,
            TILE,
            (d as usize).div_ceil(TILE),
            window.is_some(),
            F::dtype().into(),
        );
    }
    (out, [lse, u_final])
}

/// Backward pass: the gradients of the seven inputs (same order, element `F`) given the
/// forward's `out`, its saved `[lse, u_final]` and `d_out = dLoss/d(out)`.
pub fn backward<R: CubeRuntime, F: FloatElement>(
    x: [CubeTensor<R>; 7],
    window: Option<usize>,
    out: CubeTensor<R>,
    saved: [CubeTensor<R>; 2],
    d_out: CubeTensor<R>,
) -> [CubeTensor<R>; 7] {
    let g = Geometry::of::<R, F>(&x, window);
    let (l, d, w, s) = g.scalars();
    let x = x.map(into_contiguous);
    let [lse, u_final] = saved.map(into_contiguous);
    let (out, d_out) = (into_contiguous(out), into_contiguous(d_out));
    assert_eq!(
        lse.shape(),
        g.stats(),
        "saved lse: expected shape [b, h, L]"
    );
    for (name, t) in [
        ("saved u_final", &u_final),
        ("out", &out),
        ("d_out", &d_out),
    ] {
        assert_eq!(t.shape(), g.rows(), "{name}: expected shape [b, h, L, d]");
    }
    let client = x[0].client.clone();
    check_bindings(&x[0], "backward", BACKWARD_BINDINGS);
    let empty = |shape: Shape| empty_like(&x[0], shape, DType::F32);
    let grads: [CubeTensor<R>; 7] = std::array::from_fn(|_| empty(g.rows()));
    let [batch, heads, len, dim] = g.shape;
    let state = empty(Shape::new([2, batch, heads, len, dim]));
    if g.cubes() > 0 {
        let [qu, ku, vu, qc, kc, vc, qc_nope] = x.map(CubeTensor::into_tensor_arg);
        let [g_qu, g_ku, g_vu, g_qc, g_kc, g_vc, g_qc_nope] =
            grads.clone().map(CubeTensor::into_tensor_arg);
        backward::castle_backward_kernel::launch::<R>(
            &client,
            CubeCount::Static(g.cubes(), 1, 1),
            CubeDim::new_2d(TILE as u32, TILE as u32),
            qu,
            ku,
            vu,
            qc,
            kc,
            vc,
            qc_nope,
            out.into_tensor_arg(),
            d_out.into_tensor_arg(),
            lse.into_tensor_arg(),
            u_final.into_tensor_arg(),
            state.into_tensor_arg(),
            g_qu,
            g_ku,
            g_vu,
            g_qc,
            g_kc,
            g_vc,
            g_qc_nope,
            l,
            d,
            w,
            s,
            TILE,
            window.is_some(),
            F::dtype().into(),
        );
    }
    grads.map(|t| cast(t, F::dtype()))
}

/// Panics, naming the kernel, when `x`'s device cannot bind `buffers` storage buffers plus the
/// one that carries the kernel's metadata and scalars.
fn check_bindings<R: CubeRuntime>(x: &CubeTensor<R>, kernel: &str, buffers: u32) {
    let max = x.client.properties().hardware.max_bindings;
    assert!(
        buffers < max,
        "the CASTLE {kernel} kernel binds {} storage buffers; this device allows {max}",
        buffers + 1
    );
}

/// One call's sizes, checked: seven inputs of one shape `[batch, heads, L, d]`.
struct Geometry {
    shape: [usize; 4],
    window: Option<usize>,
}

impl Geometry {
    fn of<R: CubeRuntime, F: FloatElement>(x: &[CubeTensor<R>; 7], window: Option<usize>) -> Self {
        const NAMES: [&str; 7] = ["qu", "ku", "vu", "qc", "kc", "vc", "qc_nope"];
        let shape = x[0].shape();
        assert_eq!(
            shape.num_dims(),
            4,
            "qu: expected [batch, heads, L, d], got {shape:?}"
        );
        for (name, t) in NAMES.iter().zip(x) {
            assert_eq!(
                t.shape(),
                shape,
                "{name}: expected the shape of qu, {shape:?}"
            );
            assert_eq!(
                t.dtype,
                F::dtype(),
                "{name}: expected the kernel's element type"
            );
        }
        let shape: [usize; 4] = shape.dims();
        assert!(
            2 * shape.iter().product::<usize>() < u32::MAX as usize,
            "CASTLE kernel: {shape:?} has too many elements (the backward state holds twice as many, below 2^32)"
        );
        Self { shape, window }
    }

    fn rows(&self) -> Shape {
        Shape::new(self.shape)
    }

    fn stats(&self) -> Shape {
        let [b, h, l, _] = self.shape;
        Shape::new([b, h, l])
    }

    fn cubes(&self) -> u32 {
        let [b, h, l, _] = self.shape;
        if l == 0 {
            0
        } else {
            (b * h) as u32
        }
    }

    /// The kernels' runtime scalars `(L, d, W, s)`. A window of `L` or more is no window at all.
    fn scalars(&self) -> (u32, u32, u32, f32) {
        let [_, _, l, d] = self.shape;
        (
            l as u32,
            d as u32,
            self.window.unwrap_or(l).min(l) as u32,
            crate::attention::lookahead::scale(d) as f32,
        )
    }
}
