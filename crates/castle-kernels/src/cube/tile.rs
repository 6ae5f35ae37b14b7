//! What the CubeCL kernels share: the tiling of `[batch, heads, L, d]` tensors, copying a tile
//! into shared memory as `f32`, dot products of tile rows, output allocation.

use burn::tensor::{DType, Shape, TensorMetadata};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::{tensor::CubeTensor, CubeRuntime};
use cubecl::prelude::*;

/// A masked logit: `exp(MASKED - m) = 0` for any finite row maximum `m`.
pub(super) const MASKED: f32 = -1.0e30;

/// Copies columns `k0..k0 + chunk` of rows `row0..row0 + b` of the head at `base` (rows `dim`
/// apart) into `dst` as `f32`, zero past `len`; the causal kernels copy whole rows (`k0 = 0`,
/// `chunk = d`), the CASTLE kernels chunks of them. The cube's `b x b` units copy consecutive
/// elements (coalesced reads). Rows lie `chunk + 1` floats apart in shared memory, odd at every
/// even `chunk` (the configs' head dimensions): the rows a warp reads at once then start in
/// distinct banks, where with a pitch of 64 they would all start in bank 0.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn load_tile<F: Float>(
    src: &Tensor<F>,
    dst: &mut SharedMemory<f32>,
    base: usize,
    row0: usize,
    k0: usize,
    len: usize,
    dim: usize,
    #[comptime] b: usize,
    #[comptime] chunk: usize,
) {
    let mut i = UNIT_POS as usize;
    while i < b * chunk {
        let row = row0 + i / chunk;
        let mut x = 0.0f32;
        if row < len {
            x = f32::cast_from(src[base + row * dim + k0 + i % chunk]);
        }
        dst[(i / chunk) * (chunk + 1) + i % chunk] = x;
        i += b * b;
    }
}

/// `x[r] . y[c]` over the `d` columns of two tiles in shared memory (pitch `d + 1`).
#[cube]
pub(super) fn dot(
    x: &SharedMemory<f32>,
    y: &SharedMemory<f32>,
    r: usize,
    c: usize,
    #[comptime] d: usize,
) -> f32 {
    let mut acc = 0.0f32;
    for e in 0..d {
        acc += x[r * (d + 1) + e] * y[c * (d + 1) + e];
    }
    acc
}

/// Tiles of `b` rows over `[batch, heads, L, d]` inputs: the launch shape of the kernels, which
/// hold four `b x (d + 1)` tiles and two `b x b` blocks of `f32` in shared memory.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tiling {
    /// Rows per tile (`b x b` units per cube, at most 256).
    pub b: usize,
    pub d: usize,
    /// Columns per unit: `ceil(d / b)`.
    pub slots: usize,
    pub batch: usize,
    pub heads: usize,
    pub len: usize,
    /// `1 / sqrt(d)`.
    pub scale: f32,
}

impl Tiling {
    /// The largest tile (16, 8, ... rows) that the device's shared memory and units per cube
    /// allow: 16 rows at `d = 64` where a cube may have 18.3 KiB (CUDA GPUs, lavapipe), 8 under
    /// wgpu's default 16 KiB.
    pub fn of<R: CubeRuntime>(x: &CubeTensor<R>) -> Self {
        let [batch, heads, len, d] = x.shape().dims::<4>();
        let device = &x.client.properties().hardware;
        let fits = |b: usize| {
            (4 * b * (d + 1) + 2 * b * b) * size_of::<f32>() <= device.max_shared_memory_size
                && b * b <= device.max_units_per_cube as usize
        };
        let b = [16, 8, 4, 2, 1]
            .into_iter()
            .find(|&b| fits(b))
            .unwrap_or_else(|| panic!("head dimension {d} is too large for the CubeCL kernels"));
        Self {
            b,
            d,
            slots: d.div_ceil(b),
            batch,
            heads,
            len,
            scale: 1.0 / (d as f32).sqrt(),
        }
    }

    /// One cube per (tile, head).
    pub fn cube_count(&self) -> CubeCount {
        let heads = (self.batch * self.heads) as u32;
        CubeCount::Static(self.len.div_ceil(self.b) as u32, heads, 1)
    }

    pub fn cube_dim(&self) -> CubeDim {
        CubeDim::new_1d((self.b * self.b) as u32)
    }

    /// `[batch, heads, L]`: one number per row.
    pub fn rows_shape(&self) -> Shape {
        Shape::new([self.batch, self.heads, self.len])
    }
}

/// A new contiguous tensor of `shape` and `dtype` on `like`'s device.
pub(super) fn empty_like<R: CubeRuntime>(
    like: &CubeTensor<R>,
    shape: Shape,
    dtype: DType,
) -> CubeTensor<R> {
    empty_device_contiguous_dtype(like.client.clone(), like.device.clone(), shape, dtype)
}
