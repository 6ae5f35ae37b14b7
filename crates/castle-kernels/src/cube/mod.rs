//! CubeCL attention kernels for burn's `CubeBackend` on any CubeCL runtime (wgpu, CUDA), tiled
//! as FlashAttention: online softmax, blocks above the causal diagonal skipped, and a backward
//! pass that recomputes the probabilities from `O(L d)` saved row statistics.
//!
//! - [`causal`]: the baseline's causal softmax attention, forward and backward.
//! - [`castle`]: CASTLE attention (lookahead keys), forward and backward, saving the row
//!   statistics and the final lookahead keys `U` (`O(L d)` per head).
//! - `fusion`: both under burn's `Fusion` wrapper (`FusedWgpu`, `FusedCuda`), as custom
//!   operations between burn's fused elementwise kernels.
//!
//! The tile is chosen from the head dimension and the device's limits (`tile::Tiling`), not
//! from `model.block_size`, which sizes the CPU kernels' blocks; results do not depend on either
//! beyond rounding.
//!
//! The row-wise ops (RMSNorm, SwiGLU, cross-entropy) keep their tensor-op forms on GPU
//! (`HOST_KERNELS = false`).

pub mod castle;
pub mod causal;
mod causal_grad;
mod fusion;
mod tile;

#[cfg(feature = "cuda")]
pub use fusion::FusedCuda;
#[cfg(feature = "wgpu")]
pub use fusion::FusedWgpu;

use burn::tensor::ops::FloatTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

use super::device::{AttentionOp, DeviceForward};
use super::KernelBackend;

/// burn's wgpu backend without its `Fusion` wrapper (which has no [`KernelBackend`]), as
/// castle trains on it.
#[cfg(feature = "wgpu")]
pub type Wgpu = CubeBackend<cubecl::wgpu::WgpuRuntime, f32, i32, u32>;

/// burn's CUDA backend without its `Fusion` wrapper, as castle trains on it.
#[cfg(feature = "cuda")]
pub type Cuda = CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> KernelBackend
    for CubeBackend<R, F, I, BT>
{
    const HOST_KERNELS: bool = false;

    const DEVICE_KERNELS: bool = true;

    fn device_forward(
        attention: AttentionOp,
        inputs: Vec<FloatTensor<Self>>,
    ) -> DeviceForward<Self> {
        match attention {
            AttentionOp::Causal => {
                let [q, k, v] = exactly(inputs, "causal attention inputs");
                let (out, lse) = causal::forward(q, k, v);
                (out, vec![lse])
            }
            AttentionOp::Castle { window } => {
                let x = exactly(inputs, "CASTLE attention inputs");
                let (out, saved) = castle::forward(x, window);
                (out, saved.into())
            }
        }
    }

    fn device_backward(
        attention: AttentionOp,
        inputs: Vec<FloatTensor<Self>>,
        out: FloatTensor<Self>,
        saved: Vec<FloatTensor<Self>>,
        d_out: FloatTensor<Self>,
    ) -> Vec<FloatTensor<Self>> {
        match attention {
            AttentionOp::Causal => {
                let [q, k, v] = exactly(inputs, "causal attention inputs");
                let [lse] = exactly(saved, "causal attention saved state");
                causal::backward(q, k, v, out, lse, d_out).into()
            }
            AttentionOp::Castle { window } => {
                let x = exactly(inputs, "CASTLE attention inputs");
                let saved = exactly(saved, "CASTLE attention saved state");
                castle::backward(x, window, out, saved, d_out).into()
            }
        }
    }
}

/// `v` as an array of exactly `N` tensors (the hook passes each kernel its own inputs).
fn exactly<T, const N: usize>(v: Vec<T>, what: &str) -> [T; N] {
    let len = v.len();
    v.try_into()
        .unwrap_or_else(|_| panic!("{what}: expected {N} tensors, got {len}"))
}
