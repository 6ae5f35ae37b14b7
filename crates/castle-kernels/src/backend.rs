//! [`KernelBackend`]: the fused ops of a layer (both attentions, RoPE, RMSNorm, SwiGLU's gate,
//! the projections, the token losses, AdamW's update) and what each burn backend runs for them.
//!
//! Every op's default is its burn tensor-op form ([`crate::reference`]), so a backend without
//! kernels runs the model as it is. The CPU backends (`NdArray`, `Flex`; `HOST_KERNELS`) run the
//! fused host kernels of [`crate::host`] instead: their inputs are read to host memory and the
//! output written back. The CubeCL backends (wgpu, CUDA; `DEVICE_KERNELS`) run the attentions as
//! device kernels ([`crate::device`], `crate::cube`). Under `Autodiff` each kernel is one node of
//! burn's graph ([`crate::autodiff`]) whose backward pass is the kernel's own.

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::{Autodiff, Flex, NdArray};
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Element, TensorPrimitive};

use crate::device::{tracked_device, AttentionOp, DeviceForward};
use crate::host::adamw::{adamw_step_tensors, AdamWStep};
use crate::host::cross_entropy::CrossEntropyRows;
use crate::host::heads::{Projected, Source, CASTLE_SOURCES, CAUSAL_SOURCES};
use crate::host::host_array::{read_copy, HostArray};
use crate::host::host_op::{host_op_forward, tracked_op, HostOp};
use crate::host::kernel_node::{host_forward, tracked_kernel};
use crate::host::linear::LinearRows;
use crate::host::lm_loss::LmHeadLoss;
use crate::host::rmsnorm::RmsNormRows;
use crate::host::swiglu::SwiGluGate;
use crate::host::{Castle, Causal, Elem, HostKernel};
use crate::precision::project;
use crate::reference::CastleHeads;
use crate::reference::{self, attend, lookahead_scores_chunked, merge_heads, split_heads};
use crate::rope::RopeTables;

/// A backend the model runs on: how it computes each fused op.
pub trait KernelBackend: Backend {
    /// Whether the fused ops run as host kernels.
    const HOST_KERNELS: bool = false;

    /// Whether the attentions run this backend's device kernels ([`Self::device_forward`]).
    const DEVICE_KERNELS: bool = false;

    /// CASTLE attention output `[batch, heads, len, d]` (eq. 3-8, eq. 9 with a window), by the
    /// chunked form with blocks of `block` positions.
    fn castle_attention(
        h: &CastleHeads<Self>,
        window: Option<usize>,
        block: usize,
    ) -> Tensor<Self, 4> {
        let inputs = || [&h.qu, &h.ku, &h.vu, &h.qc, &h.kc, &h.vc, &h.qc_nope].map(|t| t.clone());
        if Self::HOST_KERNELS {
            Self::host_kernel(Castle { window, block }, inputs())
        } else if Self::DEVICE_KERNELS {
            Self::device_kernel(AttentionOp::Castle { window }, inputs())
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
            Self::device_kernel(AttentionOp::Causal, [q, k, v])
        } else {
            reference::causal_attention(q, k, v)
        }
    }

    /// [`Self::castle_attention`] from a CASTLE layer's projection `y: [batch, len, 6 heads d]`
    /// (positions `0..len`, RoPE from `rope`) to the merged output `[batch, len, heads d]`; on CPU
    /// one op from projection to output ([`Projected`]).
    fn castle_attention_projected(
        y: Tensor<Self, 3>,
        heads: usize,
        window: Option<usize>,
        block: usize,
        rope: &RopeTables<Self>,
    ) -> Tensor<Self, 3> {
        if Self::HOST_KERNELS {
            return projected(y, Castle { window, block }, CASTLE_SOURCES, heads, rope);
        }
        let h = castle_heads(y, heads, rope);
        merge_heads(Self::castle_attention(&h, window, block))
    }

    /// [`Self::causal_attention`] from a baseline layer's projection `y: [batch, len, 3 heads d]`
    /// to the merged output, as [`Self::castle_attention_projected`].
    fn causal_attention_projected(
        y: Tensor<Self, 3>,
        heads: usize,
        block: usize,
        rope: &RopeTables<Self>,
    ) -> Tensor<Self, 3> {
        if Self::HOST_KERNELS {
            return projected(y, Causal { block }, CAUSAL_SOURCES, heads, rope);
        }
        let [q, k, v] = causal_heads(y, heads, rope);
        merge_heads(Self::causal_attention(q, k, v, block))
    }

    /// `x: [batch, heads, len, head_dim]` rotated by RoPE at `rope`'s positions.
    fn rope(rope: &RopeTables<Self>, x: Tensor<Self, 4>) -> Tensor<Self, 4> {
        if !Self::HOST_KERNELS {
            return rope.apply_reference(x);
        }
        let dims = x.dims();
        let rows = rope.rows(dims[2], dims[3]).clone();
        Self::host_op(rows, [x.reshape([-1])]).reshape(dims)
    }

    /// RMSNorm over the last dimension, `x / sqrt(mean(x^2) + eps) (.) gamma`.
    fn rms_norm(x: Tensor<Self, 3>, gamma: Tensor<Self, 1>, eps: f64) -> Tensor<Self, 3> {
        if !Self::HOST_KERNELS {
            return reference::rms_norm(x, gamma, eps);
        }
        let dims = x.dims();
        let op = RmsNormRows { d: dims[2], eps };
        Self::host_op(op, [x.reshape([-1]), gamma]).reshape(dims)
    }

    /// SwiGLU's gate `SiLU(g) (.) u`.
    fn swiglu_gate(g: Tensor<Self, 3>, u: Tensor<Self, 3>) -> Tensor<Self, 3> {
        if !Self::HOST_KERNELS {
            return reference::swiglu_gate(g, u);
        }
        let dims = g.dims();
        Self::host_op(SwiGluGate, [g.reshape([-1]), u.reshape([-1])]).reshape(dims)
    }

    /// `layer`'s projection of `x`. On CPU one op ([`LinearRows`]), except with a bias or in a
    /// compute type other than the weight's (bf16: the op would keep an f32 copy of `x`, twice
    /// burn's bf16 one), which run [`project`].
    fn project<const D: usize>(layer: &Linear<Self>, x: Tensor<Self, D>) -> Tensor<Self, D> {
        if !Self::HOST_KERNELS || layer.bias.is_some() || x.dtype() != layer.weight.dtype() {
            return project(layer, x);
        }
        let [d_in, d_out] = layer.weight.dims();
        let mut dims = x.dims();
        dims[D - 1] = d_out;
        let op = LinearRows { d_in, d_out };
        Self::host_op(op, [x.reshape([-1]), layer.weight.val().reshape([-1])]).reshape(dims)
    }

    /// Per-token negative log-likelihood `[batch, len]` of `targets` under `logits`.
    fn token_nll(logits: Tensor<Self, 3>, targets: Tensor<Self, 2, Int>) -> Tensor<Self, 2> {
        if !Self::HOST_KERNELS {
            return reference::token_nll(logits, targets);
        }
        let [b, l, vocab] = logits.dims();
        let op = CrossEntropyRows::new(vocab, target_ids(targets));
        Self::host_op(op, [logits.reshape([-1])]).reshape([b, l])
    }

    /// [`Self::token_nll`] of the logits `x W^T` (`x: [batch, len, d]`, `w: [vocab, d]`, both of
    /// one float type); on CPU one op ([`LmHeadLoss`]) that never holds the `tokens x vocab`
    /// logits.
    fn lm_head_nll(
        x: Tensor<Self, 3>,
        w: Tensor<Self, 2>,
        targets: Tensor<Self, 2, Int>,
    ) -> Tensor<Self, 2> {
        if !Self::HOST_KERNELS {
            return reference::token_nll(x.matmul(w.transpose().unsqueeze()), targets);
        }
        let [b, l, d] = x.dims();
        let op = LmHeadLoss::new(d, w.dims()[0], target_ids(targets));
        Self::host_op(op, [x.reshape([-1]), w.reshape([-1])]).reshape([b, l])
    }

    /// One AdamW update: the new `[p, m1, m2]` from `[p, g]` and the moments (`None` at the first
    /// step). On CPU one parallel pass when all are f32.
    fn adamw<const D: usize>(
        step: &AdamWStep,
        [p, g]: [Tensor<Self, D>; 2],
        moments: Option<[Tensor<Self, D>; 2]>,
    ) -> [Tensor<Self, D>; 3] {
        let all_f32 = [&p, &g]
            .into_iter()
            .chain(moments.iter().flatten())
            .all(|t| t.dtype() == DType::F32);
        if !Self::HOST_KERNELS || !all_f32 {
            return reference::adamw(step, [p, g], moments);
        }
        adamw_step_tensors(step, [p, g], moments, Self::host_array::<f32>)
    }

    /// Runs the device kernel `attention` on `inputs` (`[batch, heads, len, d]` each).
    fn device_kernel<const N: usize>(
        attention: AttentionOp,
        inputs: [Tensor<Self, 4>; N],
    ) -> Tensor<Self, 4> {
        let inputs = inputs.into_iter().map(|x| x.into_primitive().tensor());
        let (out, _) = Self::device_forward(attention, inputs.collect());
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }

    /// Forward pass of a device kernel: the output and what its backward pass keeps. Only
    /// called when [`Self::DEVICE_KERNELS`] says so.
    fn device_forward(
        attention: AttentionOp,
        _inputs: Vec<FloatTensor<Self>>,
    ) -> DeviceForward<Self> {
        // Unreachable: only the fused ops' defaults call this, and only under
        // `DEVICE_KERNELS`, which a backend sets together with its own implementation.
        panic!("{attention:?} has no device kernel on this backend")
    }

    /// Gradients of a device kernel's inputs given `d_out = dLoss/d(output)`.
    fn device_backward(
        attention: AttentionOp,
        _inputs: Vec<FloatTensor<Self>>,
        _out: FloatTensor<Self>,
        _saved: Vec<FloatTensor<Self>>,
        _d_out: FloatTensor<Self>,
    ) -> Vec<FloatTensor<Self>> {
        // Unreachable, as for `device_forward`: only a node made by `device_forward` calls it.
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
        read_copy(x)
    }

    /// Runs the fused `op` on host copies of flat `inputs` (CPU backends only).
    fn host_op<K: HostOp<N>, const N: usize>(
        op: K,
        inputs: [Tensor<Self, 1>; N],
    ) -> Tensor<Self, 1> {
        if inputs[0].dtype() == DType::F64 {
            host_op_forward::<Self, f64, K, N>(&op, inputs, Self::host_array::<f64>, false).0
        } else {
            host_op_forward::<Self, f32, K, N>(&op, inputs, Self::host_array::<f32>, false).0
        }
    }
}

/// A CASTLE layer's projection `y: [batch, len, 6 heads d]` as the per-head tensors of
/// attention, RoPE applied as `crate::rope` says.
pub fn castle_heads<B: KernelBackend>(
    y: Tensor<B, 3>,
    heads: usize,
    rope: &RopeTables<B>,
) -> CastleHeads<B> {
    let [qu, ku, vu, qc, kc, vc] = split_heads(y, heads);
    CastleHeads {
        qu: B::rope(rope, qu),
        ku: B::rope(rope, ku),
        vu,
        qc: B::rope(rope, qc.clone()),
        kc: B::rope(rope, kc),
        vc,
        qc_nope: qc,
    }
}

/// A baseline layer's projection `y: [batch, len, 3 heads d]` as `[q, k, v]` per head, `q` and
/// `k` rotated.
pub fn causal_heads<B: KernelBackend>(
    y: Tensor<B, 3>,
    heads: usize,
    rope: &RopeTables<B>,
) -> [Tensor<B, 4>; 3] {
    let [q, k, v] = split_heads(y, heads);
    [B::rope(rope, q), B::rope(rope, k), v]
}

/// `kernel` on `sources` of the projection `y: [batch, len, parts * heads * d]` (RoPE from
/// `rope`, positions `0..len`) to the merged output `[batch, len, heads * d]` as one fused op,
/// with no strided views ([`crate::host::heads`]).
fn projected<B: KernelBackend, K: HostKernel<N>, const N: usize>(
    y: Tensor<B, 3>,
    kernel: K,
    sources: [Source; N],
    heads: usize,
    rope: &RopeTables<B>,
) -> Tensor<B, 3> {
    let [batch, len, width] = y.dims();
    let parts = sources.iter().map(|s| s.part + 1).max().unwrap_or(0);
    let d = width / (parts * heads);
    let op = Projected {
        kernel,
        sources,
        parts,
        batch,
        heads,
        d,
        rope: rope.rows(len, d).clone(),
    };
    B::host_op(op, [y.reshape([-1])]).reshape([batch, len, heads * d])
}

/// `targets` as host token ids, row-major; a negative id becomes `usize::MAX`, which the ops
/// reject as outside the vocabulary.
fn target_ids<B: Backend>(targets: Tensor<B, 2, Int>) -> Vec<usize> {
    targets
        .into_data()
        .iter::<i64>()
        .map(|t| usize::try_from(t).unwrap_or(usize::MAX))
        .collect()
}

impl KernelBackend for NdArray<f32> {
    const HOST_KERNELS: bool = true;
}

impl KernelBackend for NdArray<f64> {
    const HOST_KERNELS: bool = true;
}

impl KernelBackend for Flex {
    const HOST_KERNELS: bool = true;

    /// Read in place: `Flex` tensors live in host memory.
    fn host_array<E: Elem + Element>(x: Tensor<Self, 1>) -> HostArray<E> {
        HostArray::of_flex(x.into_primitive().tensor())
    }
}

/// A backend to train on: differentiable, and its inner (validation) backend is one too.
pub trait TrainBackend: AutodiffBackend<InnerBackend: KernelBackend> + KernelBackend {}

impl<B: AutodiffBackend<InnerBackend: KernelBackend> + KernelBackend> TrainBackend for B {}

/// Under autodiff a host or device kernel is one node of the graph, whose backward pass is the
/// kernel's; the fused ops' defaults then pick the inner backend's kernels.
impl<B: KernelBackend, C: CheckpointStrategy> KernelBackend for Autodiff<B, C> {
    const HOST_KERNELS: bool = B::HOST_KERNELS;

    const DEVICE_KERNELS: bool = B::DEVICE_KERNELS;

    fn device_kernel<const N: usize>(
        attention: AttentionOp,
        inputs: [Tensor<Self, 4>; N],
    ) -> Tensor<Self, 4> {
        tracked_device::<B, C, N>(attention, inputs, B::device_forward, B::device_backward)
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
            tracked_op::<B, C, f64, K, N>(op, inputs, B::host_array::<f64>)
        } else {
            tracked_op::<B, C, f32, K, N>(op, inputs, B::host_array::<f32>)
        }
    }
}
