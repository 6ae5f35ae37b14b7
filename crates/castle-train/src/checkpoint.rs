//! Checkpoints: `<run.dir>/checkpoints/step-NNNNNNN/` holding the model (`model.mpk`), both
//! optimizer groups, `state.json` (step, tokens, sampler position, validation loss), the
//! resolved `config.toml` and the `tokenizer.json` the model was trained with.
//!
//! A checkpoint is written into a hidden temporary directory and renamed into place, so a crash
//! never leaves one that looks complete. The sampler's position is the only random state a run
//! carries (its batches are a pure function of seed and batch index), so restoring it restores
//! exactly the batches an uninterrupted run would have drawn.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::module::Module;
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
pub use castle_data::write_atomic;
use castle_data::{SamplerState, Tok};
use castle_model::CastleLm;
use serde::{Deserialize, Serialize};

use crate::config::RunConfig;

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub format_version: u32,
    pub step: usize,
    pub tokens: u64,
    pub sampler: SamplerState,
    /// Validation loss measured at this step, if it was a validation step.
    pub val_loss: Option<f64>,
    pub best_val_loss: Option<f64>,
    pub tokenizer_sha256: String,
    pub parameters: usize,
    pub elapsed_s: f64,
}

/// A checkpoint directory with its state and config read (weights not loaded yet).
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub state: TrainState,
    pub config: RunConfig,
}

pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::new()
}

/// Writes a checkpoint for `state.step`; `save_optimizer` adds the optimizer files.
pub fn save<B: Backend>(
    run_dir: &Path,
    model: &CastleLm<B>,
    save_optimizer: impl FnOnce(&Path) -> Result<()>,
    state: &TrainState,
    config: &RunConfig,
    tokenizer: &Tok,
) -> Result<PathBuf> {
    let parent = checkpoints_dir(run_dir);
    fs::create_dir_all(&parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let name = format!("step-{:07}", state.step);
    let tmp = parent.join(format!(".tmp-{name}"));
    let target = parent.join(&name);
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir_all(&tmp)?;
    let written = (|| -> Result<()> {
        model
            .clone()
            .save_file(tmp.join("model"), &recorder())
            .context("saving model weights")?;
        save_optimizer(&tmp)?;
        write_atomic(&tmp.join("state.json"), &serde_json::to_vec_pretty(state)?)?;
        write_atomic(&tmp.join("config.toml"), config.to_toml().as_bytes())?;
        tokenizer.save(tmp.join("tokenizer.json"))?;
        for entry in fs::read_dir(&tmp)? {
            fs::File::open(entry?.path())?.sync_all()?;
        }
        if target.exists() {
            fs::remove_dir_all(&target)?; // one that failed to load and was fallen back from
        }
        fs::rename(&tmp, &target)?;
        fs::File::open(&parent)?.sync_all()?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e.context(format!("writing checkpoint {}", target.display())));
    }
    Ok(target)
}

/// Complete checkpoints of a run, oldest first (temporary directories are ignored).
pub fn list(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let parent = checkpoints_dir(run_dir);
    if !parent.exists() {
        return Ok(vec![]);
    }
    let mut dirs: Vec<PathBuf> = fs::read_dir(&parent)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("step-"))
        })
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// The newest checkpoint's path, or "none", for a message.
pub fn last_named(run_dir: &Path) -> Result<String> {
    let last = list(run_dir)?.pop();
    Ok(last.map_or("none".into(), |p| p.display().to_string()))
}

/// Removes leftover temporary directories and all but the last `keep_last` checkpoints and
/// the best one by validation loss.
pub fn prune(run_dir: &Path, keep_last: usize) -> Result<()> {
    let parent = checkpoints_dir(run_dir);
    for entry in fs::read_dir(&parent)? {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(".tmp-"))
        {
            fs::remove_dir_all(&path)?;
        }
    }
    let all = list(run_dir)?;
    let best = best(run_dir)?.map(|c| c.dir);
    let cut = all.len().saturating_sub(keep_last);
    for dir in &all[..cut] {
        if Some(dir) != best.as_ref() {
            fs::remove_dir_all(dir)?;
        }
    }
    Ok(())
}

/// The readable checkpoint with the lowest validation loss.
pub fn best(run_dir: &Path) -> Result<Option<Checkpoint>> {
    Ok(list(run_dir)?
        .iter()
        .filter_map(|d| read(d).ok())
        .filter(|c| c.state.val_loss.is_some_and(f64::is_finite))
        // Finite losses (filtered just above) always compare.
        .min_by(|a, b| a.state.val_loss.partial_cmp(&b.state.val_loss).unwrap()))
}

/// Reads a checkpoint's state and config; errors name the file and what is wrong.
pub fn read(dir: &Path) -> Result<Checkpoint> {
    let state_path = dir.join("state.json");
    let bytes = fs::read(&state_path).with_context(|| {
        format!(
            "{} is not a checkpoint: cannot read {}",
            dir.display(),
            state_path.display()
        )
    })?;
    let state: TrainState = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is corrupt", state_path.display()))?;
    if state.format_version != FORMAT_VERSION {
        bail!(
            "{}: checkpoint format {} is not the supported {FORMAT_VERSION}",
            state_path.display(),
            state.format_version
        );
    }
    let config_path = dir.join("config.toml");
    let text = fs::read_to_string(&config_path)
        .with_context(|| format!("cannot read {}", config_path.display()))?;
    let config: RunConfig =
        toml::from_str(&text).with_context(|| format!("{} is corrupt", config_path.display()))?;
    Ok(Checkpoint {
        dir: dir.to_path_buf(),
        state,
        config,
    })
}

impl Checkpoint {
    /// The tokenizer stored with the checkpoint, checked against the hash recorded at training.
    pub fn tokenizer(&self) -> Result<Tok> {
        let path = self.dir.join("tokenizer.json");
        let tok = Tok::load(&path)?;
        if tok.hash_hex() != self.state.tokenizer_sha256 {
            bail!(
                "{}: tokenizer does not match the one this checkpoint was trained with (sha256 {} vs recorded {})",
                path.display(),
                tok.hash_hex(),
                self.state.tokenizer_sha256
            );
        }
        Ok(tok)
    }

    /// Builds the model from the stored config and loads the weights.
    pub fn load_model<B: Backend>(
        &self,
        vocab_size: usize,
        device: &B::Device,
    ) -> Result<CastleLm<B>> {
        let path = self.dir.join("model.mpk");
        let model = self
            .config
            .model
            .init::<B>(vocab_size, device)
            .load_file(self.dir.join("model"), &recorder(), device)
            .map_err(|e| anyhow::anyhow!("{}: cannot load weights: {e}", path.display()))?;
        let expected = self.config.model.param_summary(vocab_size).total;
        if model.num_params() != expected {
            bail!(
                "{}: weights hold {} parameters, but the checkpoint's model config and a vocabulary of {vocab_size} make {expected}",
                path.display(),
                model.num_params(),
            );
        }
        Ok(model)
    }
}
