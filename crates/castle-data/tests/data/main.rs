//! All of castle-data's integration tests in one binary (one link of burn instead of one per file).

mod common;
mod corpus;
mod dataset;
mod holdout;
mod prepare;
mod resume;
mod sampler;
mod shard;
mod tokenizer;
