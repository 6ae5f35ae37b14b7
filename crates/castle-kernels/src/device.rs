//! Device kernels: attentions a backend runs in its own device memory (the CubeCL kernels of
//! `crate::cube`), registered as one node of burn's autodiff graph whose backward pass is the
//! kernel's own ([`crate::autodiff`]), as for the host kernels.
//!
//! A device kernel's forward pass returns its output and what its backward pass needs, `O(L d)`
//! per head (FlashAttention's row statistics, never an `L x L` matrix); the backward pass
//! recomputes the rest from the inputs.

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::TensorPrimitive;

use crate::autodiff::{tracked, NodeState};

/// Which attention a kernel computes: what selects a device kernel, and what the memory
/// functions (`crate::memory`) are asked about. Inputs `[batch, heads, len, d]` each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionOp {
    /// Causal softmax attention, inputs `q, k, v`.
    Causal,
    /// CASTLE (eq. 3-8; eq. 9 with a window), inputs in
    /// [`crate::reference::CastleHeads`]' order: `qu, ku, vu, qc, kc, vc, qc_nope`.
    Castle { window: Option<usize> },
}

impl AttentionOp {
    /// How many `[batch, heads, len, d]` inputs the kernel takes.
    pub fn inputs(self) -> usize {
        match self {
            Self::Causal => 3,
            Self::Castle { .. } => 7,
        }
    }

    /// The shapes of what the forward pass saves for the backward pass (f32), given the
    /// inputs' `[batch, heads, len, d]`: each row's logsumexp, and for CASTLE the final
    /// lookahead keys `U`.
    pub fn saved_shapes(self, [batch, heads, len, d]: [usize; 4]) -> Vec<Shape> {
        let lse = Shape::new([batch, heads, len]);
        match self {
            Self::Causal => vec![lse],
            Self::Castle { .. } => vec![lse, Shape::new([batch, heads, len, d])],
        }
    }
}

/// The tile side of the CubeCL CASTLE kernels (`crate::cube::castle::TILE`).
pub const CASTLE_TILE: usize = 16;

/// Cubes a CubeCL CASTLE call aims for (`batch x heads x segments`): enough to fill a large GPU.
pub(crate) const CASTLE_TARGET_CUBES: usize = 1024;

/// How the CubeCL CASTLE kernels cut `batch_heads` heads of `len` positions into segments of
/// query tiles, `(tiles per segment, segments)`: enough segments that `batch_heads x segments`
/// reaches [`CASTLE_TARGET_CUBES`], at most one per tile, and at most `max_segments`.
pub fn castle_segments(batch_heads: usize, len: usize, max_segments: usize) -> (usize, usize) {
    let tiles = len.div_ceil(CASTLE_TILE).max(1);
    let wanted = CASTLE_TARGET_CUBES
        .div_ceil(batch_heads.max(1))
        .clamp(1, tiles.min(max_segments.max(1)));
    let segment_tiles = tiles.div_ceil(wanted);
    (segment_tiles, tiles.div_ceil(segment_tiles))
}

/// The output of a device kernel's forward pass and what its backward pass keeps.
pub type DeviceForward<B> = (FloatTensor<B>, Vec<FloatTensor<B>>);

/// A device kernel's forward pass: its inputs to its output and what its backward pass keeps
/// (`crate::KernelBackend::device_forward`).
pub type DeviceForwardFn<B> = fn(AttentionOp, Vec<FloatTensor<B>>) -> DeviceForward<B>;

/// A device kernel's backward pass: inputs, output, saved tensors and `dLoss/d(output)` to the
/// inputs' gradients (`crate::KernelBackend::device_backward`).
pub type DeviceBackwardFn<B> = fn(
    AttentionOp,
    Vec<FloatTensor<B>>,
    FloatTensor<B>,
    Vec<FloatTensor<B>>,
    FloatTensor<B>,
) -> Vec<FloatTensor<B>>;

/// What a tracked device kernel keeps: its inputs, its output and its own saved tensors.
#[derive(Debug)]
struct DeviceState<B: Backend> {
    kernel: AttentionOp,
    backward: DeviceBackwardFn<B>,
    inputs: Vec<FloatTensor<B>>,
    out: FloatTensor<B>,
    saved: Vec<FloatTensor<B>>,
}

impl<B: Backend> NodeState<B> for DeviceState<B> {
    fn backward(&self, d_out: FloatTensor<B>) -> Vec<FloatTensor<B>> {
        (self.backward)(
            self.kernel,
            self.inputs.clone(),
            self.out.clone(),
            self.saved.clone(),
            d_out,
        )
    }
}

/// A device kernel's `forward` as one node of the autodiff graph, with `backward` its backward
/// pass.
pub(super) fn tracked_device<B, C, const N: usize>(
    kernel: AttentionOp,
    inputs: [Tensor<Autodiff<B, C>, 4>; N],
    forward: DeviceForwardFn<B>,
    backward: DeviceBackwardFn<B>,
) -> Tensor<Autodiff<B, C>, 4>
where
    B: Backend,
    C: CheckpointStrategy,
{
    tracked(inputs, |inner, _| {
        let inputs: Vec<_> = inner
            .into_iter()
            .map(|x| x.into_primitive().tensor())
            .collect();
        let (out, saved) = forward(kernel, inputs.clone());
        let state = DeviceState {
            kernel,
            backward,
            inputs,
            out: out.clone(),
            saved,
        };
        (Tensor::from_primitive(TensorPrimitive::Float(out)), state)
    })
}
