//! castle-model's tests on `NdArray<f32>`, in their own binary: burn fixes a device's default
//! float type at its first tensor, per process, and `NdArray<f32>` shares `NdArrayDevice` with the
//! `NdArray<f64>` of the other binary (`tests/model`).

#[path = "../model/common/mod.rs"]
mod common;

mod lookahead_f32;
mod safetensors;
