//! castle-data: corpus → byte-level BPE tokenizer → token shards → batches.
//!
//! The usual entry point is [`prepare`], driven by the `[data]` section of
//! the trainer's TOML ([`DataConfig`]); consumers that must not write open the
//! output with [`open_prepared`]. See the crate README for the formats.

pub mod atomic;
pub mod build;
pub mod cli;
pub mod config;
pub mod corpus;
pub mod dataset;
pub mod holdout;
pub mod manifest;
pub mod overrides;
pub mod prepare;
pub mod sampler;
pub mod shard;
pub mod source;
pub mod tokenizer;
pub mod writer;

pub use atomic::write_atomic;
pub use build::Timing;
pub use config::{DataConfig, InputFormat, DEFAULT_SOURCE};
pub use corpus::{for_each_document, read_documents};
pub use dataset::ShardSet;
pub use holdout::split_documents;
pub use manifest::{Manifest, ShardEntry, ShardKind, SplitStats};
pub use prepare::{open_prepared, prepare, Prepared};
pub use sampler::{validation_windows, BatchSampler, SamplerState};
pub use shard::{DamagedShard, Shard, TokenDtype};
pub use source::TokenSource;
pub use tokenizer::{Tok, EOT, MIN_VOCAB_SIZE};
pub use writer::{write_shard, ShardWriter};
