//! castle-train: pretraining from one TOML file (`RunConfig`), with atomic checkpoints, exact
//! resume, validation perplexity and `metrics.jsonl`.

pub mod backend;
pub mod checkpoint;
pub mod config;
pub mod metrics;
pub mod optim;
pub mod schedule;
pub mod summary;
pub mod trainer;
pub mod validation;

pub use config::RunConfig;
