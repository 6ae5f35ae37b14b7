//! The `#[cube]` pieces both kernels share: the elementwise functions of eq. 3-8, the masks,
//! and the entries of the `sig`, `A` tiles and of `S_U` (module doc of `castle`).

use cubecl::prelude::*;

use super::super::tile::load_tile;

/// Barrier for the cube's shared memory and for its writes to global memory (`U`, `D`).
#[cube]
pub(super) fn sync_all() {
    sync_storage();
    sync_cube();
}

/// `1 / (1 + e^-x)`, taking `exp` of non-positive arguments only.
#[cube]
pub(super) fn sigmoid(x: f32) -> f32 {
    let e = f32::exp(-f32::abs(x));
    let mut y = 1.0 / (1.0 + e);
    if x < 0.0 {
        y = e / (1.0 + e);
    }
    y
}

/// `SiLU(x) = x sigmoid(x)` (eq. 7).
#[cube]
pub(super) fn silu(x: f32) -> f32 {
    x * sigmoid(x)
}

/// `SiLU'(x) = sigmoid(x) (1 + x (1 - sigmoid(x)))`.
#[cube]
pub(super) fn silu_grad(x: f32) -> f32 {
    let sg = sigmoid(x);
    sg * (1.0 + x * (1.0 - sg))
}

/// `a[a0..a0 + d] . b[b0..b0 + d]` in f32.
#[cube]
pub(super) fn dot<A: Float, B: Float>(
    a: &Tensor<A>,
    a0: usize,
    b: &Tensor<B>,
    b0: usize,
    d: usize,
) -> f32 {
    let mut acc = 0.0f32;
    for k in 0..d {
        acc += f32::cast_from(a[a0 + k]) * f32::cast_from(b[b0 + k]);
    }
    acc
}

/// `Mu[i,j]`: `j` is in the lookahead of `i`, `i < j (<= i + W under SWL)` (eq. 3-4, 9).
#[cube]
pub(super) fn lookahead_mask(i: usize, j: usize, w: usize, #[comptime] windowed: bool) -> bool {
    let mut keep = i < j;
    if windowed {
        keep = keep && j <= i + w;
    }
    keep
}

/// Can owner tile `jt` have lookahead positions in tile `it` (`Mu` not all zero)?
#[cube]
pub(super) fn in_band(
    jt: usize,
    it: usize,
    w: usize,
    #[comptime] tile: usize,
    #[comptime] windowed: bool,
) -> bool {
    let mut band = true;
    if windowed {
        band = it * tile <= jt * tile + tile - 1 + w;
    }
    band
}

/// `sig[i, j] = sigmoid(s qU_i . kU_j) Mu[i,j]` for owner `i` and position `j`, given
/// `qu_ku = qU_i . kU_j`; zero past `L` and outside the band (eq. 3-4, 9).
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn sig_value(
    qu_ku: f32,
    i: usize,
    j: usize,
    band: bool,
    len: usize,
    w: usize,
    scale: f32,
    #[comptime] windowed: bool,
) -> f32 {
    let mut val = 0.0f32;
    if band && j < len && lookahead_mask(i, j, w, windowed) {
        val = sigmoid(scale * qu_ku);
    }
    val
}

/// Row `row` of a head, or its last row past `len`: where unit `(r, c)` may read the row of `r`
/// for a dot product whose result it then discards.
#[cube]
pub(super) fn clamp_row(row: usize, len: usize) -> usize {
    let mut p = row;
    if p >= len {
        p = len - 1;
    }
    p
}

/// `x[at..at + chunk] . staged row c`: a chunk of one of unit `(r, c)`'s dot products, the row
/// of `r` read from global memory (the same few rows across a warp) and the row of `c` from a
/// tile that `load_tile` copied.
#[cube]
pub(super) fn dot_staged<F: Float>(
    x: &Tensor<F>,
    at: usize,
    staged: &SharedMemory<f32>,
    c: usize,
    #[comptime] chunk: usize,
) -> f32 {
    let mut acc = 0.0f32;
    for e in 0..chunk {
        acc += f32::cast_from(x[at + e]) * staged[c * (chunk + 1) + e];
    }
    acc
}

/// `A[t, j] = s qC_t . vU_j` for query `t` (row `r` of tile `it`, at `row_r` in `qc_nope`, clamped)
/// and `j = it T + c <= t`, zero elsewhere: the diagonal correction of docs/castle.md, section 3. The
/// `vU` rows go through `buf`.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn diagonal_entry<F: Float>(
    qc_nope: &Tensor<F>,
    vu: &Tensor<F>,
    buf: &mut SharedMemory<f32>,
    head: usize,
    it: usize,
    t: usize,
    row_r: usize,
    c: usize,
    len: usize,
    dim: usize,
    scale: f32,
    #[comptime] tile: usize,
    #[comptime] chunk: usize,
) -> f32 {
    let mut qc_vu = 0.0f32;
    let mut k0 = 0;
    while k0 < dim {
        sync_cube();
        load_tile::<F>(vu, buf, head, it * tile, k0, len, dim, tile, chunk);
        sync_cube();
        qc_vu += dot_staged::<F>(qc_nope, row_r + k0, buf, c, chunk);
        k0 += chunk;
    }
    let mut val = 0.0f32;
    if t < len && it * tile + c <= t {
        val = scale * qc_vu;
    }
    val
}

/// `S_U[t, i] = s qC_t . U[i] + sum_{j <= t in the tile} A[t,j] sig[i,j]` for query `t` (row
/// `r` of its tile) and owner `i` (row `c` of its tile), given `qc_u = qC_t . U[i]` (eq. 5-6).
#[cube]
pub(super) fn lookahead_score(
    qc_u: f32,
    a: &SharedMemory<f32>,
    sig: &SharedMemory<f32>,
    r: usize,
    c: usize,
    scale: f32,
    #[comptime] tile: usize,
) -> f32 {
    let mut su = scale * qc_u;
    for c2 in 0..r + 1 {
        su += a[r * tile + c2] * sig[c * tile + c2];
    }
    su
}

/// `sum_j sig[i, j] vU_j[k]` over the positions `j = it T + c2 < L` of the current `sig` tile,
/// for owner row `r` of the tile: owner `i`'s share of tile `it` in its lookahead key (eq. 3-4).
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn tile_lookahead<F: Float>(
    sig: &SharedMemory<f32>,
    vu: &Tensor<F>,
    head: usize,
    it: usize,
    len: usize,
    dim: usize,
    r: usize,
    k: usize,
    #[comptime] tile: usize,
) -> f32 {
    let mut acc = 0.0f32;
    for c2 in 0..tile {
        let j = it * tile + c2;
        if j < len {
            acc += sig[r * tile + c2] * f32::cast_from(vu[head + j * dim + k]);
        }
    }
    acc
}

/// The query tile after segment `[lo, lo + seg)`, at most `n`.
#[cube]
pub(super) fn segment_end(lo: usize, seg: usize, n: usize) -> usize {
    let mut hi = lo + seg;
    if hi > n {
        hi = n;
    }
    hi
}
