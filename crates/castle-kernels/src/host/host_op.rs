//! [`HostOp`]: a fused elementwise or row-wise CPU op on flat host arrays (RMSNorm, SwiGLU's
//! gate, softmax cross-entropy, the LM head with its loss), registered as one node of burn's autodiff graph with its own
//! backward pass, as the attention kernels are.
//!
//! burn's CPU backends run each elementwise step as its own single-threaded pass over memory;
//! these ops make one parallel pass forward and one backward. Inputs and the output travel as
//! flat `Tensor<B, 1>`s (callers reshape, which is free for contiguous tensors); the op itself
//! knows its row width.

use std::fmt::Debug;

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Element, TensorPrimitive};

use super::elem::Elem;
use super::host_array::{from_host, grads_from_host, HostArray, ReadHost};
use crate::autodiff::{tracked, NodeState};
use crate::precision::to_dtype;

/// A fused op with `N` flat float inputs and one flat output.
pub trait HostOp<const N: usize>: Send + Sync + Debug + 'static {
    /// What the forward pass keeps for the backward pass.
    type Saved<E: Elem>: Send + Sync + Debug;

    /// Whether [`HostOp::backward`] reads the inputs; when not, the autodiff node does not keep
    /// host copies of them (empty slices are passed instead).
    const BACKWARD_READS_INPUTS: bool = true;

    fn forward<E: Elem>(&self, x: [&[E]; N]) -> (Vec<E>, Self::Saved<E>);

    /// The forward pass when the backward pass will run. An op that can do part of the
    /// backward pass's work while the forward pass's intermediates are at hand overrides it.
    fn forward_tracked<E: Elem>(&self, x: [&[E]; N]) -> (Vec<E>, Self::Saved<E>) {
        self.forward(x)
    }

    /// Gradients of the `N` inputs (each as long as its input) given `d_out`.
    fn backward<E: Elem>(&self, x: [&[E]; N], saved: &Self::Saved<E>, d_out: &[E]) -> [Vec<E>; N];
}

/// The forward pass on any backend's tensors, each read by `read` ([`HostOp::forward_tracked`]
/// when `tracked`); also returns the host inputs and what the backward pass needs.
pub(crate) fn host_op_forward<B, E, K, const N: usize>(
    op: &K,
    inputs: [Tensor<B, 1>; N],
    read: ReadHost<B, E>,
    tracked: bool,
) -> (Tensor<B, 1>, [HostArray<E>; N], K::Saved<E>)
where
    B: Backend,
    E: Elem + Element,
    K: HostOp<N>,
{
    let (device, dtype) = (inputs[0].device(), inputs[0].dtype());
    let x = inputs.map(read);
    let x_ref = x.each_ref().map(|v| &**v);
    let (out, saved) = match tracked {
        true => op.forward_tracked(x_ref),
        false => op.forward(x_ref),
    };
    let len = out.len();
    (to_dtype(from_host(out, [len], &device), dtype), x, saved)
}

/// What a tracked [`HostOp`] keeps: its host inputs (empty unless its backward pass reads them)
/// and its own saved state.
#[derive(Debug)]
struct OpState<B: Backend, K: HostOp<N>, E: Elem, const N: usize> {
    op: K,
    read: ReadHost<B, E>,
    inputs: [HostArray<E>; N],
    saved: K::Saved<E>,
    /// The inputs' float types, which their gradients take.
    dtypes: [DType; N],
}

impl<B, K, E, const N: usize> NodeState<B> for OpState<B, K, E, N>
where
    B: Backend,
    K: HostOp<N>,
    E: Elem + Element,
{
    fn backward(&self, d_out: FloatTensor<B>) -> Vec<FloatTensor<B>> {
        let d_out = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(d_out));
        let device = d_out.device();
        let x = self.inputs.each_ref().map(|v| &**v);
        let host_grads = self.op.backward(x, &self.saved, &(self.read)(d_out));
        grads_from_host::<B, E, 1, N>(host_grads, |grad| [grad.len()], self.dtypes, &device)
    }
}

/// [`host_op_forward`] as one node of the autodiff graph.
pub(crate) fn tracked_op<B, C, E, K, const N: usize>(
    op: K,
    inputs: [Tensor<Autodiff<B, C>, 1>; N],
    read: ReadHost<B, E>,
) -> Tensor<Autodiff<B, C>, 1>
where
    B: Backend,
    C: CheckpointStrategy,
    E: Elem + Element,
    K: HostOp<N>,
{
    let dtypes = inputs.each_ref().map(|x| x.dtype());
    tracked(inputs, |inner, is_tracked| {
        let (out, inputs, saved) = host_op_forward::<B, E, K, N>(&op, inner, read, is_tracked);
        let inputs = match K::BACKWARD_READS_INPUTS {
            true => inputs,
            false => std::array::from_fn(|_| HostArray::default()),
        };
        let state = OpState {
            op,
            read,
            inputs,
            saved,
            dtypes,
        };
        (out, state)
    })
}
