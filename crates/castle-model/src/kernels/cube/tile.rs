//! What the CubeCL kernels share: the tiling of `[batch, heads, L, d]` tensors, copying a tile
//! into shared memory as `f32`, dot products of tile rows, output allocation.

use burn::tensor::{DType, Shape, TensorMetadata};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::{tensor::CubeTensor, CubeRuntime};
use cubecl::prelude::*;

/// A masked logit: `exp(MASKED - m) = 0` for any finite row maximum `m`.
pub(super) const MASKED: f32 = -1.0e30;

/// Copies rows `row0..row0 + b` of the head at `base` into `dst` as `f32`, zero past `len`.
#[cube]
pub(super) fn load_tile<F: Float>(
    src: &Tensor<F>,
    dst: &mut SharedMemory<f32>,
    base: usize,
    row0: usize,
    len: usize,
    #[comptime] b: usize,
    #[comptime] d: usize,
) {
    let mut i = UNIT_POS as usize;
    while i < b * d {
        let row = row0 + i / d;
        let mut x = 0.0f32;
        if row < len {
            x = f32::cast_from(src[base + row * d + i % d]);
        }
        dst[i] = x;
        i += b * b;
    }
}

/// `x[r] . y[c]` over the `d` columns of two tiles in shared memory.
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
        acc += x[r * d + e] * y[c * d + e];
    }
    acc
}

/// Shared memory a cube may use: wgpu's default limit (`maxComputeWorkgroupStorageSize`), which
/// lavapipe and every GPU meet.
const SHARED_BYTES: usize = 16 * 1024;

/// Tiles of `b` rows over `[batch, heads, L, d]` inputs: the launch shape of the kernels, which
/// hold four `b x d` tiles and two `b x b` blocks of `f32` in shared memory.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tiling {
    /// Rows per tile (`b x b` units per cube, at most 256: wgpu's default limit).
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
    /// The largest tile (16, 8, ... rows) whose shared memory fits [`SHARED_BYTES`].
    pub fn of<R: CubeRuntime>(x: &CubeTensor<R>) -> Self {
        let [batch, heads, len, d] = x.shape().dims::<4>();
        let fits = |b: usize| (4 * b * d + 2 * b * b) * size_of::<f32>() <= SHARED_BYTES;
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
