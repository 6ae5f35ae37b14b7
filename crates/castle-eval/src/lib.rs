//! castle-eval: evaluates a castle checkpoint.
//!
//! - [`perplexity`]: validation loss and perplexity, computed exactly as the trainer's
//!   validation (same windows, same [`castle_train::validation::mean_loss`]).
//! - [`generate`]: sampling with the KV cache (baseline) or the UQ-KV cache (CASTLE,
//!   CASTLE-SWL), and a reference that recomputes the whole sequence at every step.
//! - [`mc`]: zero-shot multiple choice scored as lm-evaluation-harness does (`acc`, `acc_norm`).
//! - [`export`]: writes a checkpoint as `model.safetensors` + `config.json` for other frameworks.
//! - [`load`]: picks and loads a checkpoint from a run or checkpoint directory.
//! - [`run`]: the binary's work on a chosen backend, and its table / JSON report.

pub mod export;
pub mod generate;
pub mod load;
pub mod mc;
pub mod perplexity;
pub mod run;
