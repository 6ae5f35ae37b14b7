//! Choosing and loading a checkpoint: a checkpoint directory (it holds `state.json`) is used
//! as is; a run directory gives its latest checkpoint, or with `best` the one with the lowest
//! validation loss.

use std::path::Path;

use anyhow::{bail, Context, Result};
use castle_data::Tok;
use castle_model::{CastleLm, KernelBackend};
use castle_train::checkpoint::{self, Checkpoint};

/// The checkpoint `path` names (see the module docs). Errors say what `path` is missing.
pub fn resolve(path: &Path, best: bool) -> Result<Checkpoint> {
    if !path.exists() {
        bail!("{} does not exist: pass a run directory or one of its checkpoints (<run>/checkpoints/step-NNNNNNN)", path.display());
    }
    if !path.is_dir() {
        bail!(
            "{} is not a directory: pass a run directory or a checkpoint directory",
            path.display()
        );
    }
    if path.join("state.json").exists() {
        if best {
            tracing::warn!("--best ignored: {} is a checkpoint itself", path.display());
        }
        return checkpoint::read(path);
    }
    let parent = checkpoint::checkpoints_dir(path);
    if !parent.is_dir() {
        bail!(
            "{} is not a checkpoint (no state.json) nor a run directory (no checkpoints/ folder)",
            path.display()
        );
    }
    if best {
        return checkpoint::best(path)?.with_context(|| {
            format!(
                "{}: no readable checkpoint with a validation loss (--best); drop --best to use the latest",
                parent.display()
            )
        });
    }
    let all = checkpoint::list(path)?;
    let Some(latest) = all.last() else {
        bail!("{} holds no checkpoint yet", parent.display());
    };
    checkpoint::read(latest)
}

/// A checkpoint with its tokenizer (checked against the recorded hash) and model.
pub struct Loaded<B: KernelBackend> {
    pub checkpoint: Checkpoint,
    pub tokenizer: Tok,
    pub model: CastleLm<B>,
}

impl<B: KernelBackend> Loaded<B> {
    pub fn load(checkpoint: Checkpoint, device: &B::Device) -> Result<Self> {
        let tokenizer = checkpoint.tokenizer()?;
        let model = checkpoint.load_model::<B>(tokenizer.vocab_size(), device)?;
        tracing::info!(
            checkpoint = %checkpoint.dir.display(),
            step = checkpoint.state.step,
            attention = %checkpoint.config.model.attention,
            "loaded"
        );
        Ok(Self {
            checkpoint,
            tokenizer,
            model,
        })
    }

    /// Parameters of the model.
    pub fn params(&self) -> usize {
        self.checkpoint
            .config
            .model
            .param_summary(self.tokenizer.vocab_size())
            .total
    }
}
