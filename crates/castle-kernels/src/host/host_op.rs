//! [`HostOp`]: a fused elementwise or row-wise CPU op on flat host arrays (RMSNorm, SwiGLU's
//! gate, softmax cross-entropy, the LM head with its loss), registered as one node of burn's autodiff graph with its own
//! backward pass, as the attention kernels are.
//!
//! burn's CPU backends run each elementwise step as its own single-threaded pass over memory;
//! these ops make one parallel pass forward and one backward. Inputs and the output travel as
//! flat `Tensor<B, 1>`s (callers reshape, which is free for contiguous tensors); the op itself
//! knows its row width.

use std::fmt::Debug;
use std::marker::PhantomData;
use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Element, TensorPrimitive};

use super::elem::Elem;
use super::host_array::{from_host, HostArray};
use crate::backend::AttentionBackend;
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

/// The forward pass on any backend's tensors ([`HostOp::forward_tracked`] when `tracked`); also
/// returns the host inputs and what the backward pass needs.
pub(crate) fn host_op_forward<B, E, K, const N: usize>(
    op: &K,
    inputs: [Tensor<B, 1>; N],
    tracked: bool,
) -> (Tensor<B, 1>, [HostArray<E>; N], K::Saved<E>)
where
    B: AttentionBackend,
    E: Elem + Element,
    K: HostOp<N>,
{
    let (device, dtype) = (inputs[0].device(), inputs[0].dtype());
    let x = inputs.map(B::host_array::<E>);
    let x_ref = x.each_ref().map(|v| &**v);
    let (out, saved) = match tracked {
        true => op.forward_tracked(x_ref),
        false => op.forward(x_ref),
    };
    let len = out.len();
    (to_dtype(from_host(out, [len], &device), dtype), x, saved)
}

#[derive(Debug)]
struct OpBackward<K, E>(PhantomData<(K, E)>);

#[derive(Debug)]
struct OpState<K: HostOp<N>, E: Elem, const N: usize> {
    op: K,
    inputs: [HostArray<E>; N],
    saved: K::Saved<E>,
    /// The inputs' float types, which their gradients take.
    dtypes: [DType; N],
}

impl<B, K, E, const N: usize> Backward<B, N> for OpBackward<K, E>
where
    B: AttentionBackend,
    K: HostOp<N>,
    E: Elem + Element,
{
    type State = Arc<OpState<K, E, N>>;

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let st = ops.state;
        let d_out =
            Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(grads.consume::<B>(&ops.node)));
        let device = d_out.device();
        let x = st.inputs.each_ref().map(|v| &**v);
        let host_grads = st.op.backward(x, &st.saved, &B::host_array::<E>(d_out));
        for ((parent, grad), dtype) in ops.parents.into_iter().zip(host_grads).zip(st.dtypes) {
            if let Some(node) = parent {
                let len = grad.len();
                let grad = to_dtype(from_host::<B, E, 1>(grad, [len], &device), dtype);
                grads.register::<B>(node.id, grad.into_primitive().tensor());
            }
        }
    }
}

/// The inputs' reference counts, to hold from taking their graph nodes until the op's own step
/// is registered.
///
/// burn 0.21 frees, at the end of any thread's backward pass, the steps of every graph none of
/// whose nodes is still referenced. An op that takes its inputs apart (dropping their reference
/// counts) and then runs a long forward pass before registering its step leaves that graph
/// unreferenced meanwhile: another thread's backward pass (`--devices N` ranks, tests in
/// parallel) can free its steps, and every gradient behind this op is silently lost or wrong
/// (burn issue #5573).
pub(crate) fn hold_inputs<B: Backend, const N: usize>(
    xs: &[FloatTensor<Autodiff<B>>; N],
) -> [Arc<NodeId>; N] {
    xs.each_ref().map(|x| x.rc.clone())
}

/// [`host_op_forward`] as one node of the autodiff graph.
pub(crate) fn tracked_op<B, C, E, K, const N: usize>(
    op: K,
    inputs: [Tensor<Autodiff<B, C>, 1>; N],
) -> Tensor<Autodiff<B, C>, 1>
where
    B: AttentionBackend,
    C: CheckpointStrategy,
    E: Elem + Element,
    K: HostOp<N>,
{
    let dtypes = inputs.each_ref().map(|x| x.dtype());
    let xs = inputs.map(|x| x.into_primitive().tensor());
    let nodes = xs.each_ref().map(|x| x.node.clone());
    let held = hold_inputs(&xs);
    let inner = xs.map(|x| Tensor::from_primitive(TensorPrimitive::Float(x.primitive)));
    let backward =
        <OpBackward<K, E> as Backward<B, N>>::prepare::<C>(OpBackward(PhantomData), nodes);
    let out = match backward.compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let (out, inputs, saved) = host_op_forward::<B, E, K, N>(&op, inner, true);
            let inputs = match K::BACKWARD_READS_INPUTS {
                true => inputs,
                false => std::array::from_fn(|_| HostArray::default()),
            };
            let state = OpState {
                op,
                inputs,
                saved,
                dtypes,
            };
            prep.finish(Arc::new(state), out.into_primitive().tensor())
        }
        OpsKind::UnTracked(prep) => {
            let (out, _, _) = host_op_forward::<B, E, K, N>(&op, inner, false);
            prep.finish(out.into_primitive().tensor())
        }
    };
    drop(held);
    Tensor::from_primitive(TensorPrimitive::Float(out))
}
