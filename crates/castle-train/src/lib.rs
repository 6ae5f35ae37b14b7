//! castle-train: pretraining from one TOML file (`RunConfig`), with atomic checkpoints, exact
//! resume, validation perplexity and `metrics.jsonl`.

pub mod backend;
pub mod checkpoint;
pub mod collective;
pub mod config;
mod data;
pub mod distributed;
pub mod init;
pub mod memory;
pub mod memory_estimate;
pub mod metrics;
pub mod optim;
pub mod schedule;
pub mod step;
pub mod summary;
pub mod trainer;
pub mod validation;

pub use config::RunConfig;
