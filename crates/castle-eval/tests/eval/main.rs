//! All of castle-eval's integration tests in one binary (one link of burn instead of one per file).

#[path = "../../../castle-train/tests/train/common/corpus.rs"]
mod corpus;

mod cli;
mod export;
mod generation;
mod mc;
