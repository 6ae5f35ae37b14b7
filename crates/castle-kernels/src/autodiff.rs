//! A fused op as one node of burn's autodiff graph (burn's backend-extension mechanism): the
//! host attention kernels, the host row-wise ops and the device kernels all register through
//! [`tracked`], each with its own [`NodeState`], whose backward pass is the op's.

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
use burn::tensor::TensorPrimitive;

/// What a fused op keeps for its backward pass, and that backward pass.
pub(crate) trait NodeState<B: Backend>: Send + Sync + Debug + 'static {
    /// The gradients of the op's inputs, in order, given `d_out = dLoss/d(output)`.
    fn backward(&self, d_out: FloatTensor<B>) -> Vec<FloatTensor<B>>;
}

#[derive(Debug)]
struct Node<S>(PhantomData<S>);

impl<B: Backend, S: NodeState<B>, const N: usize> Backward<B, N> for Node<S> {
    type State = Arc<S>;

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let d_out = grads.consume::<B>(&ops.node);
        let input_grads = ops.state.backward(d_out);
        for (parent, grad) in ops.parents.into_iter().zip(input_grads) {
            if let Some(node) = parent {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// `forward` as one node of the autodiff graph. `forward` gets the inputs' inner tensors and
/// whether the backward pass will run (an untracked call may skip work only the backward pass
/// needs), and returns the output and the node's state (dropped when untracked).
pub(crate) fn tracked<B, C, S, const N: usize, const D: usize>(
    inputs: [Tensor<Autodiff<B, C>, D>; N],
    forward: impl FnOnce([Tensor<B, D>; N], bool) -> (Tensor<B, D>, S),
) -> Tensor<Autodiff<B, C>, D>
where
    B: Backend,
    C: CheckpointStrategy,
    S: NodeState<B>,
{
    let xs = inputs.map(|x| x.into_primitive().tensor());
    let nodes = xs.each_ref().map(|x| x.node.clone());
    let held = hold_inputs(&xs);
    let inner = xs.map(|x| Tensor::from_primitive(TensorPrimitive::Float(x.primitive)));
    let node = <Node<S> as Backward<B, N>>::prepare::<C>(Node(PhantomData), nodes);
    let out = match node.compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let (out, state) = forward(inner, true);
            prep.finish(Arc::new(state), out.into_primitive().tensor())
        }
        OpsKind::UnTracked(prep) => {
            let (out, _) = forward(inner, false);
            prep.finish(out.into_primitive().tensor())
        }
    };
    drop(held);
    Tensor::from_primitive(TensorPrimitive::Float(out))
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
fn hold_inputs<B: Backend, const N: usize>(xs: &[FloatTensor<Autodiff<B>>; N]) -> [Arc<NodeId>; N] {
    xs.each_ref().map(|x| x.rc.clone())
}
