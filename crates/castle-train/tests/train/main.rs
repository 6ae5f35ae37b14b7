//! All of castle-train's integration tests in one binary (one link of burn instead of one per file).

mod bf16;
mod checkpointing;
mod common;
mod config;
mod data_parallel;
mod end_to_end;
mod memory_estimate;
mod optimizer;
mod wgpu;
