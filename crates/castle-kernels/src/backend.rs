//! [`AttentionBackend`]: which implementation of the two attentions each burn backend runs.
//!
//! The CPU backends (`NdArray`, `Flex`) run the fused host kernels of [`crate::host`]: their
//! inputs are read to host memory (`O(L d)` per head, small next to the `O(L^2 d)` work), and
//! the output is written back. Under `Autodiff` each kernel is one node of burn's graph
//! ([`crate::autodiff`]) with the host inputs and what the kernel's forward pass keeps
//! ([`HostKernel::Saved`]) as its state. CubeCL backends (wgpu,
//! CUDA) run device kernels ([`crate::device`], `crate::cube`) where they have one, and the
//! burn tensor-op forms (`lookahead_scores_chunked`, `causal_attention`) otherwise. The same
//! trait runs the fused row-wise ops of [`crate::host::host_op`] (RMSNorm, SwiGLU, cross-entropy) on
//! CPU.

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::{Autodiff, Flex, NdArray};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Element, TensorPrimitive};

use crate::device::{tracked_device, DeviceAttention, DeviceForward};
use crate::host::host_array::{to_host, HostArray};
use crate::host::host_op::{host_op_forward, tracked_op, HostOp};
use crate::host::kernel_node::{host_forward, tracked_kernel};
use crate::host::{Castle, Causal, Elem, HostKernel};
use crate::reference::{attend, causal_attention, lookahead_scores_chunked, CastleHeads};

/// A backend the model runs on: it says how CASTLE and the baseline attention are computed.
pub trait AttentionBackend: Backend {
    /// Whether the attentions run the fused host kernels (`true`) or burn tensor ops.
    const HOST_KERNELS: bool;

    /// Whether the attentions run this backend's device kernels ([`Self::device_forward`]).
    const DEVICE_KERNELS: bool = false;

    /// CASTLE attention output `[batch, heads, len, d]` (eq. 3-8, eq. 9 with a window).
    fn castle_attention(
        h: &CastleHeads<Self>,
        window: Option<usize>,
        block: usize,
    ) -> Tensor<Self, 4> {
        let inputs = || [&h.qu, &h.ku, &h.vu, &h.qc, &h.kc, &h.vc, &h.qc_nope].map(|t| t.clone());
        if Self::HOST_KERNELS {
            Self::host_kernel(Castle { window, block }, inputs())
        } else if Self::DEVICE_KERNELS {
            Self::device_kernel(DeviceAttention::Castle { window }, inputs())
        } else {
            attend(h, lookahead_scores_chunked(h, window, block))
        }
    }

    /// Causal softmax attention `softmax(s Q K^T + causal mask) V`, `[batch, heads, len, d]`.
    fn causal_attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        block: usize,
    ) -> Tensor<Self, 4> {
        if Self::HOST_KERNELS {
            Self::host_kernel(Causal { block }, [q, k, v])
        } else if Self::DEVICE_KERNELS {
            Self::device_kernel(DeviceAttention::Causal, [q, k, v])
        } else {
            causal_attention(q, k, v)
        }
    }

    /// Runs the device kernel `attention` on `inputs` (`[batch, heads, len, d]` each).
    fn device_kernel<const N: usize>(
        attention: DeviceAttention,
        inputs: [Tensor<Self, 4>; N],
    ) -> Tensor<Self, 4> {
        let inputs = inputs.into_iter().map(|x| x.into_primitive().tensor());
        let (out, _) = Self::device_forward(attention, inputs.collect());
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }

    /// Forward pass of a device kernel: the output and what its backward pass keeps. Only
    /// called when [`Self::DEVICE_KERNELS`] says so.
    fn device_forward(
        attention: DeviceAttention,
        _inputs: Vec<FloatTensor<Self>>,
    ) -> DeviceForward<Self> {
        panic!("{attention:?} has no device kernel on this backend")
    }

    /// Gradients of a device kernel's inputs given `d_out = dLoss/d(output)`.
    fn device_backward(
        attention: DeviceAttention,
        _inputs: Vec<FloatTensor<Self>>,
        _out: FloatTensor<Self>,
        _saved: Vec<FloatTensor<Self>>,
        _d_out: FloatTensor<Self>,
    ) -> Vec<FloatTensor<Self>> {
        panic!("{attention:?} has no device kernel on this backend")
    }

    /// Runs `kernel` on host copies of `inputs` (`[batch, heads, len, d]` each).
    fn host_kernel<K: HostKernel<N>, const N: usize>(
        kernel: K,
        inputs: [Tensor<Self, 4>; N],
    ) -> Tensor<Self, 4> {
        if inputs[0].dtype() == DType::F64 {
            host_forward::<Self, f64, K, N>(kernel, inputs).0
        } else {
            host_forward::<Self, f32, K, N>(kernel, inputs).0
        }
    }

    /// `x`'s values as the host kernels read them: a host copy unless the backend overrides it.
    fn host_array<E: Elem + Element>(x: Tensor<Self, 1>) -> HostArray<E> {
        HostArray::Owned(to_host(x))
    }

    /// Runs the fused `op` on host copies of flat `inputs` (CPU backends only).
    fn host_op<K: HostOp<N>, const N: usize>(
        op: K,
        inputs: [Tensor<Self, 1>; N],
    ) -> Tensor<Self, 1> {
        if inputs[0].dtype() == DType::F64 {
            host_op_forward::<Self, f64, K, N>(&op, inputs, false).0
        } else {
            host_op_forward::<Self, f32, K, N>(&op, inputs, false).0
        }
    }
}

impl AttentionBackend for NdArray<f32> {
    const HOST_KERNELS: bool = true;
}

impl AttentionBackend for NdArray<f64> {
    const HOST_KERNELS: bool = true;
}

impl AttentionBackend for Flex {
    const HOST_KERNELS: bool = true;

    /// Read in place: `Flex` tensors live in host memory.
    fn host_array<E: Elem + Element>(x: Tensor<Self, 1>) -> HostArray<E> {
        HostArray::of_flex(x.into_primitive().tensor())
    }
}

/// A backend to train on: differentiable, and its inner (validation) backend is one too.
pub trait TrainBackend: AutodiffBackend<InnerBackend: AttentionBackend> + AttentionBackend {}

impl<B: AutodiffBackend<InnerBackend: AttentionBackend> + AttentionBackend> TrainBackend for B {}

/// Under autodiff a host or device kernel is one node of the graph, whose backward pass is the
/// kernel's.
impl<B: AttentionBackend, C: CheckpointStrategy> AttentionBackend for Autodiff<B, C> {
    const HOST_KERNELS: bool = B::HOST_KERNELS;

    const DEVICE_KERNELS: bool = B::DEVICE_KERNELS;

    fn device_kernel<const N: usize>(
        attention: DeviceAttention,
        inputs: [Tensor<Self, 4>; N],
    ) -> Tensor<Self, 4> {
        tracked_device::<B, C, N>(attention, inputs)
    }

    fn host_kernel<K: HostKernel<N>, const N: usize>(
        kernel: K,
        inputs: [Tensor<Self, 4>; N],
    ) -> Tensor<Self, 4> {
        if inputs[0].dtype() == DType::F64 {
            tracked_kernel::<B, C, f64, K, N>(kernel, inputs)
        } else {
            tracked_kernel::<B, C, f32, K, N>(kernel, inputs)
        }
    }

    fn host_op<K: HostOp<N>, const N: usize>(
        op: K,
        inputs: [Tensor<Self, 1>; N],
    ) -> Tensor<Self, 1> {
        if inputs[0].dtype() == DType::F64 {
            tracked_op::<B, C, f64, K, N>(op, inputs)
        } else {
            tracked_op::<B, C, f32, K, N>(op, inputs)
        }
    }
}
