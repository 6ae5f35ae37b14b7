//! What each attention keeps for its backward pass, per head, and what a device kernel's
//! backward pass allocates: the numbers a training memory plan needs (castle-train's
//! `memory_estimate`), computed here next to the kernels they describe.

use crate::device::{AttentionOp, CASTLE_TARGET_CUBES, CASTLE_TILE};
use crate::host::blocks::Blocking;

/// `L x L` elements one head's host kernel or chunked form keeps, by block geometry (lengths
/// not a multiple of the block pad).
struct HeadGeometry {
    /// Lower block triangle, `bs^2 n (n + 1) / 2`: causal probabilities, `SiLU'(S_U)`.
    lower: u64,
    /// Lookahead band `sig[J, K]` (all of the upper block triangle without a window).
    band: u64,
    /// Diagonal blocks, `n bs^2`.
    diag: u64,
    padded: u64,
}

impl HeadGeometry {
    fn new(len: usize, d: usize, block: usize, window: Option<usize>) -> Self {
        let g = Blocking::new(len, d, block, window);
        let bs2 = (g.bs * g.bs) as u64;
        let n = g.n as u64;
        let band = (0..g.n)
            .map(|j| (j..g.n).filter(|&k| g.in_band(j, k)).count() as u64)
            .sum::<u64>();
        Self {
            lower: bs2 * n * (n + 1) / 2,
            band: bs2 * band,
            diag: bs2 * n,
            padded: g.padded() as u64,
        }
    }
}

/// f32 elements one head of a host attention kernel (`crate::host::Castle`, `Causal`) keeps
/// between its forward and backward passes, at `len` positions of `d` with blocks of `block`:
/// the inputs' host copies, the output (padded rows), the probabilities, and for CASTLE
/// `SiLU'(S_U)`, the lookahead band and the diagonal blocks.
pub fn host_attention_saved(attention: AttentionOp, len: usize, d: usize, block: usize) -> u64 {
    let window = match attention {
        AttentionOp::Causal => None,
        AttentionOp::Castle { window } => window,
    };
    let geo = HeadGeometry::new(len, d, block, window);
    let quadratic = match attention {
        AttentionOp::Castle { .. } => 2 * geo.lower + geo.band + geo.diag,
        AttentionOp::Causal => geo.lower,
    };
    (attention.inputs() * len * d) as u64 + geo.padded * d as u64 + quadratic
}

/// f32 elements one head of the tensor-op forms (`crate::reference`; CASTLE by the chunked form
/// with blocks of `block`) keeps under burn's autodiff, beyond its inputs; `widened` when the
/// inputs are 16-bit and are kept widened too. Baseline: exp and probabilities. CASTLE adds
/// `S_U`, its SiLU's tanh and sigmoid (eq. 7), `sig`'s tanh, sigmoid and masked value over the
/// band, the prefix sums `C` (`band d / bs`), the diagonal blocks, and the padded
/// `qu, ku, vu, qc` copies.
pub fn reference_attention_saved(
    attention: AttentionOp,
    len: usize,
    d: usize,
    block: usize,
    widened: bool,
) -> u64 {
    let (l, d64) = (len as u64, d as u64);
    let square = l * l;
    let widened = if widened {
        attention.inputs() as u64 * l * d64
    } else {
        0
    };
    let elements = match attention {
        AttentionOp::Castle { window } => {
            let geo = HeadGeometry::new(len, d, block, window);
            let bs = block.clamp(1, len) as u64;
            5 * square + 3 * geo.band + geo.band * d64 / bs + 2 * geo.diag + 4 * geo.padded * d64
        }
        AttentionOp::Causal => 2 * square,
    };
    elements + widened
}

/// Bytes the CubeCL CASTLE backward pass allocates for the length of one call beyond its inputs
/// and gradients, bounded above: seven `[segments, batch, heads, L, d]` f32 buffers (the
/// segments' key sums, `D` sums, `U` and `D` state, and three partial gradients). The bound
/// counts `min(tiles, CASTLE_TARGET_CUBES + batch_heads)` head-slots for the exact
/// `segments x batch_heads`, which dips each time `segments` steps down as heads are added:
/// the bound grows with `batch_heads`, so the largest micro-batch that fits is well defined.
pub fn castle_backward_transient(batch_heads: usize, len: usize, d: usize) -> u64 {
    let tiles = len.div_ceil(CASTLE_TILE).max(1);
    let slots = (tiles * batch_heads).min(CASTLE_TARGET_CUBES + batch_heads);
    7 * 4 * (slots * len * d) as u64
}
