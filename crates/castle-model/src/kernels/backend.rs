//! [`AttentionBackend`]: which implementation of the two attentions each burn backend runs.
//!
//! The CPU backends (`NdArray`, `Flex`) run the fused host kernels of [`crate::kernels`]: their
//! inputs are read to host memory (`O(L d)` per head, small next to the `O(L^2 d)` work), and
//! the output is written back. Under `Autodiff` the kernels' own backward pass is registered as
//! one node of burn's graph (burn's backend-extension mechanism), with the forward pass's
//! lookahead scores, `sig` blocks and log-sum-exps as its state. GPU backends run the burn
//! tensor-op forms (`lookahead_scores_chunked`, `causal_attention`).

use std::marker::PhantomData;
use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::{Autodiff, Flex, NdArray};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Element, TensorPrimitive};

use super::{
    castle_backward, castle_forward, causal_backward, causal_forward, CastleHost, CastleSaved,
    CausalSaved, Elem, HeadsShape,
};
use crate::attention::baseline::causal_attention;
use crate::attention::lookahead::{attend, lookahead_scores_chunked, CastleHeads};

/// A backend the model runs on: it says how CASTLE and the baseline attention are computed.
pub trait AttentionBackend: Backend {
    /// Whether the attentions run the fused host kernels (`true`) or burn tensor ops.
    const HOST_KERNELS: bool;

    /// CASTLE attention output `[batch, heads, len, d]` (eq. 3-8, eq. 9 with a window).
    fn castle_attention(
        h: &CastleHeads<Self>,
        window: Option<usize>,
        block: usize,
    ) -> Tensor<Self, 4> {
        if !Self::HOST_KERNELS {
            return attend(h, lookahead_scores_chunked(h, window, block));
        }
        let inputs = castle_inputs(h);
        if h.qu.dtype() == DType::F64 {
            host_castle::<Self, f64>(inputs, window, block).0
        } else {
            host_castle::<Self, f32>(inputs, window, block).0
        }
    }

    /// Causal softmax attention `softmax(s Q K^T + causal mask) V`, `[batch, heads, len, d]`.
    fn causal_attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        block: usize,
    ) -> Tensor<Self, 4> {
        if !Self::HOST_KERNELS {
            return causal_attention(q, k, v);
        }
        if q.dtype() == DType::F64 {
            host_causal::<Self, f64>([q, k, v], block).0
        } else {
            host_causal::<Self, f32>([q, k, v], block).0
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
}

#[cfg(feature = "cuda")]
impl AttentionBackend for burn::backend::Cuda {
    const HOST_KERNELS: bool = false;
}

/// A backend to train on: differentiable, and its inner (validation) backend is one too.
pub trait TrainBackend: AutodiffBackend<InnerBackend: AttentionBackend> + AttentionBackend {}

impl<B: AutodiffBackend<InnerBackend: AttentionBackend> + AttentionBackend> TrainBackend for B {}

impl<B: AttentionBackend, C: CheckpointStrategy> AttentionBackend for Autodiff<B, C> {
    const HOST_KERNELS: bool = B::HOST_KERNELS;

    fn castle_attention(
        h: &CastleHeads<Self>,
        window: Option<usize>,
        block: usize,
    ) -> Tensor<Self, 4> {
        match (B::HOST_KERNELS, h.qu.dtype()) {
            (false, _) => attend(h, lookahead_scores_chunked(h, window, block)),
            (true, DType::F64) => tracked_castle::<B, C, f64>(h, window, block),
            (true, _) => tracked_castle::<B, C, f32>(h, window, block),
        }
    }

    fn causal_attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        block: usize,
    ) -> Tensor<Self, 4> {
        match (B::HOST_KERNELS, q.dtype()) {
            (false, _) => causal_attention(q, k, v),
            (true, DType::F64) => tracked_causal::<B, C, f64>([q, k, v], block),
            (true, _) => tracked_causal::<B, C, f32>([q, k, v], block),
        }
    }
}

fn castle_inputs<B: Backend>(h: &CastleHeads<B>) -> [Tensor<B, 4>; 7] {
    [&h.qu, &h.ku, &h.vu, &h.qc, &h.kc, &h.vc, &h.qc_nope].map(|t| t.clone())
}

fn shape_of(dims: [usize; 4]) -> HeadsShape {
    HeadsShape {
        heads: dims[0] * dims[1],
        len: dims[2],
        d: dims[3],
    }
}

fn to_host<B: Backend, E: Elem + Element>(x: Tensor<B, 4>) -> Vec<E> {
    x.into_data()
        .convert::<E>()
        .into_vec()
        .expect("converted to the kernel's element type")
}

fn from_host<B: Backend, E: Elem + Element>(
    x: Vec<E>,
    dims: [usize; 4],
    device: &B::Device,
) -> Tensor<B, 4> {
    Tensor::from_data(TensorData::new(x, dims), device)
}

/// The forward kernel on any backend's tensors; also returns what its backward pass needs.
fn host_castle<B: Backend, E: Elem + Element>(
    inputs: [Tensor<B, 4>; 7],
    window: Option<usize>,
    block: usize,
) -> (Tensor<B, 4>, CastleHost<E>, CastleSaved<E>) {
    let (dims, device) = (inputs[0].dims(), inputs[0].device());
    let [qu, ku, vu, qc, kc, vc, qc_nope] = inputs.map(to_host::<B, E>);
    let x = CastleHost {
        qu,
        ku,
        vu,
        qc,
        kc,
        vc,
        qc_nope,
    };
    let (out, saved) = castle_forward(&x, shape_of(dims), window, block);
    (from_host(out, dims, &device), x, saved)
}

fn host_causal<B: Backend, E: Elem + Element>(
    inputs: [Tensor<B, 4>; 3],
    block: usize,
) -> (Tensor<B, 4>, [Vec<E>; 3], CausalSaved<E>) {
    let (dims, device) = (inputs[0].dims(), inputs[0].device());
    let x = inputs.map(to_host::<B, E>);
    let (out, saved) = causal_forward([&x[0], &x[1], &x[2]], shape_of(dims), block);
    (from_host(out, dims, &device), x, saved)
}

/// The incoming gradient of an op's output, in host memory.
fn output_grad<B: Backend, E: Elem + Element>(grad: FloatTensor<B>) -> (Vec<E>, B::Device) {
    let grad = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(grad));
    let device = grad.device();
    (to_host(grad), device)
}

/// Registers each parent's gradient (parents that need none are `None`).
fn register<B: Backend, E: Elem + Element, const N: usize>(
    parents: [Option<NodeId>; N],
    host_grads: [Vec<E>; N],
    dims: [usize; 4],
    device: &B::Device,
    grads: &mut Gradients,
) {
    for (parent, grad) in parents.into_iter().zip(host_grads) {
        if let Some(id) = parent {
            let grad = from_host::<B, E>(grad, dims, device)
                .into_primitive()
                .tensor();
            grads.register::<B>(id, grad);
        }
    }
}

#[derive(Debug)]
struct CastleBackward<E>(PhantomData<E>);

#[derive(Debug)]
struct CastleState<E> {
    inputs: CastleHost<E>,
    saved: CastleSaved<E>,
    dims: [usize; 4],
    window: Option<usize>,
    block: usize,
}

impl<B: Backend, E: Elem + Element> Backward<B, 7> for CastleBackward<E> {
    type State = Arc<CastleState<E>>;

    fn backward(self, ops: Ops<Self::State, 7>, grads: &mut Gradients, _: &mut Checkpointer) {
        let st = ops.state;
        let (d_out, device) = output_grad::<B, E>(grads.consume::<B>(&ops.node));
        let parents = ops.parents.map(|p| p.map(|node| node.id));
        let g = castle_backward(
            &st.inputs,
            shape_of(st.dims),
            st.window,
            st.block,
            &st.saved,
            &d_out,
        );
        let host_grads = [g.qu, g.ku, g.vu, g.qc, g.kc, g.vc, g.qc_nope];
        register::<B, E, 7>(parents, host_grads, st.dims, &device, grads);
    }
}

fn tracked_castle<B: Backend, C: CheckpointStrategy, E: Elem + Element>(
    h: &CastleHeads<Autodiff<B, C>>,
    window: Option<usize>,
    block: usize,
) -> Tensor<Autodiff<B, C>, 4> {
    let dims = h.qu.dims();
    let xs = castle_inputs(h).map(|x| x.into_primitive().tensor());
    let nodes = xs.each_ref().map(|x| x.node.clone());
    let inputs = xs.map(|x| Tensor::from_primitive(TensorPrimitive::Float(x.primitive)));
    let (out, inputs, saved) = host_castle::<B, E>(inputs, window, block);
    let out = out.into_primitive().tensor();
    let op =
        <CastleBackward<E> as Backward<B, 7>>::prepare::<C>(CastleBackward(PhantomData), nodes);
    let out = match op.compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let state = CastleState {
                inputs,
                saved,
                dims,
                window,
                block,
            };
            prep.finish(Arc::new(state), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

#[derive(Debug)]
struct CausalBackward<E>(PhantomData<E>);

#[derive(Debug)]
struct CausalState<E> {
    inputs: [Vec<E>; 3],
    saved: CausalSaved<E>,
    dims: [usize; 4],
    block: usize,
}

impl<B: Backend, E: Elem + Element> Backward<B, 3> for CausalBackward<E> {
    type State = Arc<CausalState<E>>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let st = ops.state;
        let (d_out, device) = output_grad::<B, E>(grads.consume::<B>(&ops.node));
        let parents = ops.parents.map(|p| p.map(|node| node.id));
        let [q, k, v] = &st.inputs;
        let host_grads = causal_backward([q, k, v], shape_of(st.dims), st.block, &st.saved, &d_out);
        register::<B, E, 3>(parents, host_grads, st.dims, &device, grads);
    }
}

fn tracked_causal<B: Backend, C: CheckpointStrategy, E: Elem + Element>(
    qkv: [Tensor<Autodiff<B, C>, 4>; 3],
    block: usize,
) -> Tensor<Autodiff<B, C>, 4> {
    let dims = qkv[0].dims();
    let xs = qkv.map(|x| x.into_primitive().tensor());
    let nodes = xs.each_ref().map(|x| x.node.clone());
    let inputs = xs.map(|x| Tensor::from_primitive(TensorPrimitive::Float(x.primitive)));
    let (out, inputs, saved) = host_causal::<B, E>(inputs, block);
    let out = out.into_primitive().tensor();
    let op =
        <CausalBackward<E> as Backward<B, 3>>::prepare::<C>(CausalBackward(PhantomData), nodes);
    let out = match op.compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(
            Arc::new(CausalState {
                inputs,
                saved,
                dims,
                block,
            }),
            out,
        ),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}
