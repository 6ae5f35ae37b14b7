//! CASTLE attention (eq. 3-8; CASTLE-SWL's eq. 9) as two CubeCL kernels, forward and backward,
//! with `O(L d)` saved state: FlashAttention's design carried to CASTLE (the paper's
//! Algorithms 1 and 3 in spirit, docs/castle.md, sections 3-4).
//!
//! Positions are cut into tiles of [`TILE`]. The chunked form's prefix sum `C[J, I]` is,
//! transposed, the lookahead keys "as of the end of the previous query tile":
//! `U[i] = sum_{j in tiles < I, Mu[i,j]} sig(i, j) vU_j`. So one cube per (batch, head) walks the
//! query tiles `I` in order with `U` in an `L x d` buffer (but see "Segments" below), and for
//! every owner tile `J <= I`:
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
//! Segments: `U` and `D` are sums over query tiles, so a head's query tiles are cut into
//! segments (of `segment_tiles` tiles), one cube per (batch, head, segment). A first kernel
//! sums each segment's terms of every key (`du`); a segment's cube starts from the earlier
//! segments' sums and walks only its own tiles. The backward pass likewise starts each segment
//! from `u_final` minus the later segments' terms, and from the later segments' share of `D`,
//! which a first run of the backward kernel (`sums_only`: the scores and `dS_U` without the
//! gradients) finds. That costs the `sig` tiles once more per direction, the backward's scores
//! once more, and transient `segments x L x d` buffers per head; it buys `segments` times the
//! cubes (`crate::device::castle_segments`).
//!
//! Each cube has `TILE x TILE` units. Unit `(r, c)` computes tile entry `(r, c)`; in the row
//! phases it owns columns `c, c + TILE, ...` of row `r` of a tile. Every gradient entry is
//! read-modify-written by one unit only (owner-row gradients into its segment's partial sums,
//! added up afterwards): no float atomics.
//! Arithmetic is in `f32` whatever the inputs' float type (f32, bf16 or f16).
//! `s = 1/sqrt(d)` as in `crate::reference::scale`; `qC` in `S_U` is the un-rotated
//! query `qc_nope` (see `crate::rope`).

mod backward;
mod forward;
mod tiles;

use burn::tensor::{DType, Shape, TensorMetadata};
use burn_cubecl::kernel::{cast, into_contiguous};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::super::device::{castle_segments, CASTLE_TILE};
use super::tile::empty_like;

/// Tile side: `TILE x TILE` units per cube, and the `TILE x TILE` shared-memory tiles (seven in the
/// backward pass: 7 KiB of f32).
pub const TILE: usize = CASTLE_TILE;

/// The most columns of a row a kernel stages in shared memory at once (`Geometry::chunk`).
const MAX_CHUNK: usize = 64;

/// Storage buffers the forward kernel binds: seven inputs, `out`, `lse`, `u_final`, the
/// segments' running keys and their sums.
const FORWARD_BINDINGS: u32 = 12;

/// Storage buffers the backward kernel binds: seven inputs, `out`, `d_out`, the two saved
/// tensors, the segments' key sums, `D` sums and `U`/`D` state, and seven gradients.
const BACKWARD_BINDINGS: u32 = 21;

/// Forward pass: `(out, [lse, u_final])`, `out` `[b, h, L, d]` in the inputs' float type, `lse` `[b, h, L]` and
/// `u_final` `[b, h, L, d]` in `f32`. Inputs in [`crate::reference::CastleHeads`]' order
/// `qu, ku, vu, qc, kc, vc, qc_nope`, each `[batch, heads, L, d]`.
pub fn forward<R: CubeRuntime>(
    x: [CubeTensor<R>; 7],
    window: Option<usize>,
) -> (CubeTensor<R>, [CubeTensor<R>; 2]) {
    forward_in_segments(x, window, None)
}

/// [`forward`] with each head's query tiles cut into segments of `segment_tiles` tiles (`None`:
/// [`castle_segments`]' choice). The result does not depend on it beyond rounding.
pub fn forward_in_segments<R: CubeRuntime>(
    x: [CubeTensor<R>; 7],
    window: Option<usize>,
    segment_tiles: Option<usize>,
) -> (CubeTensor<R>, [CubeTensor<R>; 2]) {
    let g = Geometry::of(&x, window, segment_tiles);
    let (l, d, w, seg, s) = g.scalars();
    let x = x.map(into_contiguous);
    let client = x[0].client.clone();
    check_bindings(&x[0], "forward", FORWARD_BINDINGS);
    // Dense outputs: the kernels index rows as `p d + k` (CUDA's default layout pads rows).
    let empty = |shape: Shape| empty_like(&x[0], shape, DType::F32);
    let out = empty_like(&x[0], g.rows(), g.dtype);
    let (lse, u_final) = (empty(g.stats()), empty(g.rows()));
    let (du, work) = (empty(g.other_segments()), empty(g.per_segment()));
    if g.cubes() > 0 {
        let arg = |t: &CubeTensor<R>| t.clone().into_tensor_arg();
        segment_sums(&g, &x, &du);
        let [qu, ku, vu, qc, kc, vc, qc_nope] = x.map(CubeTensor::into_tensor_arg);
        forward::castle_forward_kernel::launch::<R>(
            &client,
            g.cube_count(),
            g.cube_dim(),
            qu,
            ku,
            vu,
            qc,
            kc,
            vc,
            qc_nope,
            arg(&out),
            arg(&lse),
            arg(&u_final),
            arg(&work),
            arg(&du),
            l,
            d,
            w,
            seg,
            s,
            TILE,
            (d as usize).div_ceil(TILE),
            g.chunk(&client, 3, 3),
            window.is_some(),
            g.dtype.into(),
        );
    }
    (out, [lse, u_final])
}

/// Backward pass: the gradients of the seven inputs (same order and float type) given the
/// forward's `out`, its saved `[lse, u_final]` and `d_out = dLoss/d(out)`.
pub fn backward<R: CubeRuntime>(
    x: [CubeTensor<R>; 7],
    window: Option<usize>,
    out: CubeTensor<R>,
    saved: [CubeTensor<R>; 2],
    d_out: CubeTensor<R>,
) -> [CubeTensor<R>; 7] {
    backward_in_segments(x, window, out, saved, d_out, None)
}

/// [`backward`] in segments of `segment_tiles` query tiles, as [`forward_in_segments`].
pub fn backward_in_segments<R: CubeRuntime>(
    x: [CubeTensor<R>; 7],
    window: Option<usize>,
    out: CubeTensor<R>,
    saved: [CubeTensor<R>; 2],
    d_out: CubeTensor<R>,
    segment_tiles: Option<usize>,
) -> [CubeTensor<R>; 7] {
    let g = Geometry::of(&x, window, segment_tiles);
    let (l, d, w, seg, s) = g.scalars();
    let x = x.map(into_contiguous);
    let [lse, u_final] = saved.map(into_contiguous);
    // The kernel reads `out` and `d_out` as the inputs' type (a no-op cast when they have it).
    let [out, d_out] = [out, d_out].map(|t| into_contiguous(cast(t, g.dtype)));
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
    // Query-row gradients (dkU, dvU, dqC, dqC_nope) and the owner-row partial sums (dqU, dkC,
    // dvC) of every segment.
    let rows: [CubeTensor<R>; 4] = std::array::from_fn(|_| empty(g.rows()));
    let parts: [CubeTensor<R>; 3] = std::array::from_fn(|_| empty(g.per_segment()));
    let [du, d_sums] = [0; 2].map(|_| empty(g.other_segments()));
    let [batch, heads, len, dim] = g.shape;
    let state = empty(Shape::new([2, g.segments, batch, heads, len, dim]));
    if g.cubes() > 0 {
        let arg = |t: &CubeTensor<R>| t.clone().into_tensor_arg();
        segment_sums(&g, &x, &du);
        // With one segment there are no later segments' D sums to find.
        let passes: &[bool] = if g.segments > 1 {
            &[true, false]
        } else {
            &[false]
        };
        for &sums_only in passes {
            backward::castle_backward_kernel::launch::<R>(
                &client,
                g.cube_count(),
                g.cube_dim(),
                arg(&x[0]),
                arg(&x[1]),
                arg(&x[2]),
                arg(&x[3]),
                arg(&x[4]),
                arg(&x[5]),
                arg(&x[6]),
                arg(&out),
                arg(&d_out),
                arg(&lse),
                arg(&u_final),
                arg(&du),
                arg(&d_sums),
                arg(&state),
                arg(&parts[0]),
                arg(&rows[0]),
                arg(&rows[1]),
                arg(&rows[2]),
                arg(&parts[1]),
                arg(&parts[2]),
                arg(&rows[3]),
                l,
                d,
                w,
                seg,
                s,
                TILE,
                g.chunk(&client, 7, 3),
                window.is_some(),
                sums_only,
                g.dtype.into(),
            );
        }
    }
    let [g_qu, g_kc, g_vc] = parts.map(|p| {
        let sum = empty(g.rows());
        if g.cubes() > 0 {
            let n = sum.shape().num_elements();
            backward::sum_segments_kernel::launch::<R>(
                &client,
                // At most wgpu's 65,535 cubes per grid dimension; units stride over the rest.
                CubeCount::Static(n.div_ceil(256).min(65_535) as u32, 1, 1),
                CubeDim::new_1d(256),
                p.into_tensor_arg(),
                sum.clone().into_tensor_arg(),
                n as u32,
                g.segments as u32,
            );
        }
        sum
    });
    let [g_ku, g_vu, g_qc, g_qc_nope] = rows;
    [g_qu, g_ku, g_vu, g_qc, g_kc, g_vc, g_qc_nope].map(|t| cast(t, g.dtype))
}

/// Each segment's terms of every lookahead key into `du` (`[segments, b, h, L, d]`); nothing
/// with one segment, which starts from no other segment's sums.
fn segment_sums<R: CubeRuntime>(g: &Geometry, x: &[CubeTensor<R>; 7], du: &CubeTensor<R>) {
    if g.segments == 1 || g.cubes() == 0 {
        return;
    }
    let (l, d, w, seg, s) = g.scalars();
    let arg = |t: &CubeTensor<R>| t.clone().into_tensor_arg();
    forward::segment_sums_kernel::launch::<R>(
        &x[0].client,
        g.cube_count(),
        g.cube_dim(),
        arg(&x[0]),
        arg(&x[1]),
        arg(&x[2]),
        arg(du),
        l,
        d,
        w,
        seg,
        s,
        TILE,
        g.chunk(&x[0].client, 1, 1),
        g.window.is_some(),
        g.dtype.into(),
    );
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
    /// The inputs' float type (f32, or bf16 / f16 under `backend.dtype`): what the kernels read
    /// and the output and gradients take; sums run in f32.
    dtype: DType,
    window: Option<usize>,
    /// Query tiles per segment, and segments per head.
    segment_tiles: usize,
    segments: usize,
}

impl Geometry {
    fn of<R: CubeRuntime>(
        x: &[CubeTensor<R>; 7],
        window: Option<usize>,
        segment_tiles: Option<usize>,
    ) -> Self {
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
            assert_eq!(t.dtype, x[0].dtype, "{name}: expected the float type of qu");
        }
        let shape: [usize; 4] = shape.dims();
        // The backward state holds `2 x segments` times the elements, indexed below 2^32.
        let elements = shape.iter().product::<usize>();
        let max_segments = u32::MAX as usize / (2 * elements).max(1);
        assert!(
            max_segments >= 1,
            "CASTLE kernel: {shape:?} has too many elements (the backward state holds twice as many, below 2^32)"
        );
        let [b, h, l, _] = shape;
        let (default_tiles, _) = castle_segments(b * h, l, max_segments);
        let segment_tiles = segment_tiles.unwrap_or(default_tiles);
        let segments = l.div_ceil(TILE).max(1).div_ceil(segment_tiles.max(1));
        assert!(
            segment_tiles > 0 && segments <= max_segments,
            "CASTLE kernel: segments of {segment_tiles} tiles: need 1 or more, and at most \
             {max_segments} segments at {shape:?}"
        );
        Self {
            shape,
            dtype: x[0].dtype,
            window,
            segment_tiles,
            segments,
        }
    }

    fn rows(&self) -> Shape {
        Shape::new(self.shape)
    }

    /// `[segments, b, h, L, d]`: one `[b, h, L, d]` slot per segment.
    fn per_segment(&self) -> Shape {
        let [b, h, l, d] = self.shape;
        Shape::new([self.segments, b, h, l, d])
    }

    /// [`Self::per_segment`] for what a segment reads of the others (`du`, `d_sums`): a
    /// placeholder of one element with one segment, where nothing reads it.
    fn other_segments(&self) -> Shape {
        if self.segments == 1 {
            Shape::new([1])
        } else {
            self.per_segment()
        }
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

    /// One cube of `TILE x TILE` units per (batch x head, segment).
    fn cube_count(&self) -> CubeCount {
        CubeCount::Static(self.cubes(), self.segments as u32, 1)
    }

    fn cube_dim(&self) -> CubeDim {
        CubeDim::new_2d(TILE as u32, TILE as u32)
    }

    /// Columns per staged chunk for a kernel holding `squares` `TILE x TILE` tiles and `staged`
    /// `TILE x (chunk + 1)` tiles of f32 in shared memory: the largest divisor of `d` up to
    /// [`MAX_CHUNK`] that fits the device (64 at `d` of 64 or 128, 48 at 96, on CUDA GPUs and
    /// lavapipe).
    fn chunk<R: CubeRuntime>(
        &self,
        client: &ComputeClient<R>,
        squares: usize,
        staged: usize,
    ) -> usize {
        let d = self.shape[3];
        let max = client.properties().hardware.max_shared_memory_size;
        let bytes =
            |chunk: usize| (squares * TILE + staged * (chunk + 1)) * TILE * size_of::<f32>();
        (1..=MAX_CHUNK.min(d))
            .rev()
            .find(|&chunk| d.is_multiple_of(chunk) && bytes(chunk) <= max)
            .unwrap_or(1)
    }

    /// The kernels' runtime scalars `(L, d, W, segment tiles, s)`. A window of `L` or more is
    /// no window at all.
    fn scalars(&self) -> (u32, u32, u32, u32, f32) {
        let [_, _, l, d] = self.shape;
        (
            l as u32,
            d as u32,
            self.window.unwrap_or(l).min(l) as u32,
            self.segment_tiles as u32,
            crate::reference::scale(d) as f32,
        )
    }
}
