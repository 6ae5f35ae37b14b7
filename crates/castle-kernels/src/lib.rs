//! The kernels of CASTLE (arXiv 2509.07301) and of the causal attention it is compared with, for
//! any burn backend, below the model (`castle-model`), which they never import.
//!
//! - [`backend`]: [`KernelBackend`], one method per fused op (both attentions, RoPE, RMSNorm,
//!   SwiGLU's gate, the projections, the losses, AdamW), each defaulting to its tensor-op
//!   reference, and what each burn backend runs instead, with the kernels' own backward passes
//!   registered in burn's autodiff graph; [`TrainBackend`] its autodiff form.
//! - [`reference`]: every fused op in burn tensor ops (naive O(L^3) and chunked O(L^2 d) CASTLE,
//!   causal attention, the row-wise ops), the references the kernels are tested against.
//! - [`host`]: the fused CPU kernels (`NdArray`, `Flex`).
//! - [`device`], `cube` (features `wgpu`, `cuda`): the CubeCL kernels, FlashAttention-style,
//!   for burn's `CubeBackend` on any runtime.
//! - [`rope`]: RoPE's tables and rotation; [`precision`]: the casts of mixed precision.
//! - [`memory`]: what each attention keeps for its backward pass, for memory plans.
//!
//! Tensor layout inside attention is `[batch, heads, len, head_dim]`, rows are positions.

pub mod autodiff;
pub mod backend;
#[cfg(feature = "cube")]
pub mod cube;
pub mod device;
pub mod host;
pub mod memory;
pub mod precision;
pub mod reference;
pub mod rope;

pub use backend::{KernelBackend, TrainBackend};
pub use device::AttentionOp;
pub use host::Elem;
