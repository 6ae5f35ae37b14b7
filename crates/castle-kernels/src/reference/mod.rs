//! The fused ops in burn tensor ops: the references the kernels are tested against, and what a
//! backend without kernels runs ([`crate::KernelBackend`]'s defaults).
//!
//! - [`attention`]: CASTLE's attention by the naive O(L^3) and the chunked O(L^2 d) form, and
//!   the baseline's causal attention (docs/castle.md, sections 1-3).
//! - [`layers`]: what surrounds attention in a layer: heads split and merged, RMSNorm,
//!   SwiGLU's gate, the token loss, AdamW's update.

pub mod attention;
pub mod layers;

pub use attention::*;
pub use layers::*;
