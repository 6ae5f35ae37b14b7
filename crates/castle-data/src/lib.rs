//! castle-data: corpus → byte-level BPE tokenizer → token shards → batches.
//!
//! The usual entry point is [`prepare`], driven by the `[data]` section of
//! the trainer's TOML ([`DataConfig`]). See the crate README for the shard
//! format and for using other corpora.

pub mod atomic;
pub mod cli;
pub mod config;
pub mod corpus;
pub mod prepare;
pub mod sampler;
pub mod shard;
pub mod tokenizer;

pub use atomic::write_atomic;
pub use config::{DataConfig, InputFormat, DEFAULT_SOURCE};
pub use corpus::read_documents;
pub use prepare::{
    open_prepared, prepare, split_documents, Manifest, Prepared, SplitStats, Timing,
};
pub use sampler::{validation_windows, BatchSampler, SamplerState};
pub use shard::{write_shard, Shard, TokenDtype};
pub use tokenizer::{Tok, EOT, MIN_VOCAB_SIZE};
