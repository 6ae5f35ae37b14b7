//! castle-model's integration tests in one binary (one link of burn instead of one per file),
//! except the `NdArray<f32>` ones (`tests/model_f32`).

mod cache;
mod common;
mod decode;
mod fused_ops;
mod heads;
mod lm;
mod lm_loss;
mod lookahead;
mod precision;
