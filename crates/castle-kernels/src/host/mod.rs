//! Fused CPU kernels on host memory, forward and backward.
//!
//! burn runs every elementwise step of an `L x L` attention (masks, sigmoid, SiLU, softmax and
//! their gradients) as a separate pass over memory, so its attention reaches a fraction of the
//! machine's matrix-multiply rate (`docs/benchmarks.md`). These kernels instead walk `bs x bs`
//! blocks: blocks above the causal diagonal (and, under SWL, outside the band) are never
//! computed, the elementwise work happens in the same loop that consumes it, and every product
//! is a small single-threaded GEMM (the `gemm` crate). Blocks run in parallel on rayon's pool.
//!
//! - [`attention`]: [`HostKernel`], what a fused attention offers, and its two kernels,
//!   [`Castle`] and [`Causal`]: [`lookahead`] (CASTLE's lookahead scores `S_U` by the exact
//!   chunked form) feeding [`causal_softmax`] (`softmax(s Q K^T - SiLU(S_U)) V`, or the
//!   baseline without `S_U`), over the [`blocks`] of a head.
//! - [`decode`]: one decoding step of each attention over a cache preallocated and written in
//!   place; [`decode_layer`]: a layer's attention for the next position of each sequence of a
//!   batch, RoPE included; [`projection`]: the projections of a few rows into kept buffers.
//!   The model's decoder (`castle-model`'s `decode`) runs a token through them.
//! - [`kernel_node`]: a [`HostKernel`] on burn tensors, forward and as one autodiff node.
//! - [`host_op`]: the row-wise ops around attention ([`rmsnorm`], [`swiglu`], [`cross_entropy`])
//!   as one parallel pass each way instead of burn's single-threaded op chain; [`lm_loss`] fuses
//!   the LM head's product into the cross-entropy, a chunk of rows at a time, so training never
//!   holds the `tokens x vocab` logits.
//! - [`linear`]: the layers' projections as such ops, so that no product runs through
//!   burn-flex's matmul, whose output allocation is two serial passes on the calling thread.
//! - [`heads`]: an attention kernel as one such op from its layer's projection to its merged
//!   output, splitting heads, RoPE and merging heads included.
//! - [`rope`]: RoPE's tables of every position and its rotation as such an op.
//! - [`adamw`]: the optimizer's AdamW update as one parallel pass per parameter tensor.
//! - [`gemm`], [`simd`] (the CPU's widest SIMD, chosen at run time), [`softmax`] (one row),
//!   [`parallel`] and [`host_array`]: what the kernels share.

pub mod adamw;
pub mod attention;
pub mod blocks;
pub mod causal_softmax;
pub mod cross_entropy;
pub mod decode;
pub mod decode_layer;
pub mod elem;
pub mod gemm;
pub mod heads;
pub mod host_array;
pub mod host_op;
pub mod kernel_node;
pub mod linear;
pub mod lm_loss;
pub mod lookahead;
pub mod parallel;
pub mod projection;
pub mod rmsnorm;
pub mod rope;
pub mod simd;
pub mod softmax;
pub mod swiglu;

pub use attention::{Castle, Causal, HeadsShape, HostKernel};
pub use elem::Elem;
