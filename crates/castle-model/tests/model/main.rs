//! castle-model's integration tests in one binary (one link of burn instead of one per file),
//! except the `NdArray<f32>` ones (`tests/model_f32`) and the allocation count (`memory_measured.rs`).

mod cache;
mod common;
mod cube_castle;
mod cube_kernels;
mod fused_ops;
mod fusion;
mod heads;
mod kernels;
mod lm;
mod lm_loss;
mod lookahead;
mod memory;
mod precision;
