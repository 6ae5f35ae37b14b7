//! The kernels of CASTLE (arXiv 2509.07301) and of the causal attention it is compared with, for
//! any burn backend, below the model (`castle-model`), which they never import.
//!
//! - [`backend`]: [`AttentionBackend`], what each burn backend runs for the fused ops (both
//!   attentions, RoPE, RMSNorm, SwiGLU, the projections, the loss, AdamW), with their own backward
//!   passes registered in burn's autodiff graph; [`TrainBackend`] its autodiff form.
//! - [`reference`]: the attentions in burn tensor ops (naive O(L^3) and chunked O(L^2 d) CASTLE,
//!   causal attention), the references the kernels are tested against.
//! - [`host`]: the fused CPU kernels (`NdArray`, `Flex`).
//! - [`device`], `cube` (features `wgpu`, `cuda`): the CubeCL kernels, FlashAttention-style,
//!   for burn's `CubeBackend` on any runtime.
//! - [`rope`]: RoPE's tables and rotation; [`precision`]: the casts of mixed precision.
//!
//! Tensor layout inside attention is `[batch, heads, len, head_dim]`, rows are positions.

pub mod autodiff;
pub mod backend;
#[cfg(feature = "cube")]
pub mod cube;
pub mod device;
pub mod host;
pub mod precision;
pub mod reference;
pub mod rope;

pub use backend::{AttentionBackend, TrainBackend};
pub use device::DeviceAttention;
pub use host::Elem;
