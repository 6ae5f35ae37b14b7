//! CubeCL attention kernels for burn's `CubeBackend` on any CubeCL runtime (wgpu, CUDA), tiled
//! as FlashAttention: online softmax, blocks above the causal diagonal skipped, and a backward
//! pass that recomputes the probabilities from `O(L d)` saved row statistics.
//!
//! - [`causal`]: the baseline's causal softmax attention, forward and backward.
//!
//! The tile is chosen from the head dimension (`tile::Tiling`), not from `model.block_size`,
//! which sizes the CPU kernels' blocks; results do not depend on either.
//!
//! CASTLE runs burn's tensor-op chunked form on these backends until its kernel lands. The
//! row-wise ops (RMSNorm, SwiGLU, cross-entropy) keep their tensor-op forms on GPU
//! (`HOST_KERNELS = false`).

pub mod causal;
mod causal_grad;
mod tile;

use burn::tensor::ops::FloatTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

use super::device::{DeviceAttention, DeviceForward};
use super::AttentionBackend;

/// burn's wgpu backend without its `Fusion` wrapper (which has no [`AttentionBackend`]), as
/// castle trains on it.
#[cfg(feature = "wgpu")]
pub type Wgpu = CubeBackend<cubecl::wgpu::WgpuRuntime, f32, i32, u32>;

/// burn's CUDA backend without its `Fusion` wrapper, as castle trains on it.
#[cfg(feature = "cuda")]
pub type Cuda = CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> AttentionBackend
    for CubeBackend<R, F, I, BT>
{
    const HOST_KERNELS: bool = false;

    fn has_device_kernel(attention: DeviceAttention) -> bool {
        // CASTLE: the tensor-op chunked form until its CubeCL kernel lands.
        attention == DeviceAttention::Causal
    }

    fn device_forward(
        attention: DeviceAttention,
        inputs: Vec<FloatTensor<Self>>,
    ) -> DeviceForward<Self> {
        match (attention, <[_; 3]>::try_from(inputs)) {
            (DeviceAttention::Causal, Ok([q, k, v])) => {
                let (out, lse) = causal::forward(q, k, v);
                (out, vec![lse])
            }
            (attention, _) => panic!("no device kernel for {attention:?} with these inputs"),
        }
    }

    fn device_backward(
        attention: DeviceAttention,
        inputs: Vec<FloatTensor<Self>>,
        out: FloatTensor<Self>,
        saved: Vec<FloatTensor<Self>>,
        d_out: FloatTensor<Self>,
    ) -> Vec<FloatTensor<Self>> {
        match (
            attention,
            <[_; 3]>::try_from(inputs),
            <[_; 1]>::try_from(saved),
        ) {
            (DeviceAttention::Causal, Ok([q, k, v]), Ok([lse])) => {
                causal::backward(q, k, v, out, lse, d_out).into()
            }
            (attention, _, _) => panic!("no device kernel for {attention:?} with these inputs"),
        }
    }
}
