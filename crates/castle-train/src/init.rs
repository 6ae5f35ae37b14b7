//! A run's initial weights: GPT-2's random initialisation, or a safetensors export
//! (`run.init_from`, `castle-train --init-from`) checked against the run's `[model]` and
//! tokenizer. Weights only: the optimizer starts fresh at step 0.

use anyhow::Result;
use castle_model::{safetensors, CastleLm, TrainBackend};
use tracing::info;

use crate::checkpoint;
use crate::config::RunConfig;

/// The model a run with this vocabulary and tokenizer starts from before any resume (a run
/// directory with checkpoints resumes from them, so `run.init_from` is then ignored, with a log
/// line saying so).
pub fn initial_model<B: TrainBackend>(
    config: &RunConfig,
    vocab: usize,
    tokenizer_sha256: &str,
    device: &B::Device,
) -> Result<CastleLm<B>> {
    let Some(path) = &config.run.init_from else {
        return Ok(config.model.init::<B>(vocab, device));
    };
    if !checkpoint::list(&config.run.dir)?.is_empty() {
        info!(
            "run.init_from = {} ignored: {} holds checkpoints, the run resumes from them",
            path.display(),
            checkpoint::checkpoints_dir(&config.run.dir).display()
        );
        return Ok(config.model.init::<B>(vocab, device));
    }
    let model =
        safetensors::import::<B>(path, &config.model, vocab, Some(tokenizer_sha256), device)?;
    info!("initialised from {} (weights only, step 0)", path.display());
    Ok(model)
}
