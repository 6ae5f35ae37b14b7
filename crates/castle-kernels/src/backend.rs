//! [`AttentionBackend`]: which implementation of the two attentions each burn backend runs.
//!
//! The CPU backends (`NdArray`, `Flex`) run the fused host kernels of [`crate::host`]: their
//! inputs are read to host memory (`O(L d)` per head, small next to the `O(L^2 d)` work), and
//! the output is written back. Under `Autodiff` the kernels' own backward pass is registered as
//! one node of burn's graph (burn's backend-extension mechanism), with the host inputs and what
//! the kernel's forward pass keeps ([`HostKernel::Saved`]) as its state. CubeCL backends (wgpu,
//! CUDA) run device kernels ([`crate::device`], `crate::cube`) where they have one, and the
//! burn tensor-op forms (`lookahead_scores_chunked`, `causal_attention`) otherwise. The same
//! trait runs the fused row-wise ops of [`super::host_op`] (RMSNorm, SwiGLU, cross-entropy) on
//! CPU.

use std::marker::PhantomData;
use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Flex, NdArray};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Element, TensorPrimitive};

use crate::device::{tracked_device, DeviceAttention, DeviceForward};
use crate::host::host_array::{from_host, to_host, HostArray};
use crate::host::host_op::{hold_inputs, host_op_forward, tracked_op, HostOp};
use crate::host::{Castle, Causal, Elem, HeadsShape, HostKernel};
use crate::precision::to_dtype;
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
            tracked::<B, C, f64, K, N>(kernel, inputs)
        } else {
            tracked::<B, C, f32, K, N>(kernel, inputs)
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

fn shape_of(dims: [usize; 4]) -> HeadsShape {
    HeadsShape {
        heads: dims[0] * dims[1],
        len: dims[2],
        d: dims[3],
    }
}

/// The forward kernel on any backend's tensors; also returns the host inputs and what the
/// backward pass needs.
fn host_forward<B: Backend, E: Elem + Element, K: HostKernel<N>, const N: usize>(
    kernel: K,
    inputs: [Tensor<B, 4>; N],
) -> (Tensor<B, 4>, [Vec<E>; N], K::Saved<E>) {
    let (dims, device, dtype) = (inputs[0].dims(), inputs[0].device(), inputs[0].dtype());
    let x = inputs.map(to_host::<B, E, 4>);
    let (out, saved) = kernel.forward(x.each_ref().map(|v| v.as_slice()), shape_of(dims));
    // The kernels compute in f32 whatever their tensors' float type (bf16 under
    // `backend.dtype = "bf16"`) and hand back the type they were given.
    (to_dtype(from_host(out, dims, &device), dtype), x, saved)
}

#[derive(Debug)]
struct HostBackward<K, E>(PhantomData<(K, E)>);

#[derive(Debug)]
struct HostState<K: HostKernel<N>, E: Elem, const N: usize> {
    kernel: K,
    inputs: [Vec<E>; N],
    saved: K::Saved<E>,
    dims: [usize; 4],
    /// The inputs' float types, which their gradients take.
    dtypes: [DType; N],
}

impl<B, K, E, const N: usize> Backward<B, N> for HostBackward<K, E>
where
    B: Backend,
    K: HostKernel<N>,
    E: Elem + Element,
{
    type State = Arc<HostState<K, E, N>>;

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let st = ops.state;
        let d_out =
            Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(grads.consume::<B>(&ops.node)));
        let device = d_out.device();
        let x = st.inputs.each_ref().map(|v| v.as_slice());
        let host_grads = st
            .kernel
            .backward(x, shape_of(st.dims), &st.saved, &to_host(d_out));
        for ((parent, grad), dtype) in ops.parents.into_iter().zip(host_grads).zip(st.dtypes) {
            if let Some(node) = parent {
                let grad = to_dtype(from_host::<B, E, 4>(grad, st.dims, &device), dtype);
                grads.register::<B>(node.id, grad.into_primitive().tensor());
            }
        }
    }
}

/// [`host_forward`] as one node of the autodiff graph.
fn tracked<B, C, E, K, const N: usize>(
    kernel: K,
    inputs: [Tensor<Autodiff<B, C>, 4>; N],
) -> Tensor<Autodiff<B, C>, 4>
where
    B: Backend,
    C: CheckpointStrategy,
    E: Elem + Element,
    K: HostKernel<N>,
{
    let dims = inputs[0].dims();
    let dtypes = inputs.each_ref().map(|x| x.dtype());
    let xs = inputs.map(|x| x.into_primitive().tensor());
    let nodes = xs.each_ref().map(|x| x.node.clone());
    let held = hold_inputs(&xs);
    let inner = xs.map(|x| Tensor::from_primitive(TensorPrimitive::Float(x.primitive)));
    let (out, inputs, saved) = host_forward::<B, E, K, N>(kernel, inner);
    let out = out.into_primitive().tensor();
    let op = <HostBackward<K, E> as Backward<B, N>>::prepare::<C>(HostBackward(PhantomData), nodes);
    let out = match op.compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let state = HostState {
                kernel,
                inputs,
                saved,
                dims,
                dtypes,
            };
            prep.finish(Arc::new(state), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    drop(held);
    Tensor::from_primitive(TensorPrimitive::Float(out))
}
