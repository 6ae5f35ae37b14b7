//! AdamW (decoupled weight decay, beta1 0.9, beta2 0.95) with global-norm gradient clipping.
//!
//! Weight decay applies to every matrix, the token embedding (and so the tied LM head) included,
//! and not to the RMSNorm gains (the 1-D parameters), as in nanoGPT. burn's AdamW has one decay
//! for all parameters and clips each tensor on its own, so the gradients are clipped here by
//! their global norm and split between two AdamW instances, one with decay and one without.

use std::path::Path;

use anyhow::{Context, Result};
use burn::module::{ModuleVisitor, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use castle_model::CastleLm;

use crate::config::TrainConfig;

type Adam<B> = OptimizerAdaptor<AdamW, CastleLm<B>, B>;

pub struct AdamWGroups<B: AutodiffBackend> {
    decayed: Adam<B>,
    not_decayed: Adam<B>,
    grad_clip: f64,
}

impl<B: AutodiffBackend> AdamWGroups<B> {
    pub fn new(train: &TrainConfig) -> Self {
        let adamw = |weight_decay: f64| {
            AdamWConfig::new()
                .with_beta_1(train.beta1 as f32)
                .with_beta_2(train.beta2 as f32)
                .with_epsilon(1e-8)
                .with_weight_decay(weight_decay as f32)
                .init()
        };
        Self {
            decayed: adamw(train.weight_decay),
            not_decayed: adamw(0.0),
            grad_clip: train.grad_clip,
        }
    }

    /// Clips `grads` to global norm `grad_clip` and takes one step at `lr`.
    /// Returns the updated model and the global gradient norm before clipping.
    pub fn step(
        &mut self,
        lr: f64,
        model: CastleLm<B>,
        mut grads: GradientsParams,
    ) -> (CastleLm<B>, f64) {
        let mut norm = GlobalNorm::<B> {
            grads: &grads,
            sum_sq: None,
        };
        model.visit(&mut norm);
        let grad_norm = norm
            .sum_sq
            .map_or(0.0, |s| s.into_scalar().elem::<f64>().sqrt());
        let scale = (self.grad_clip / (grad_norm + 1e-6)).min(1.0);
        let mut split = SplitByDecay {
            grads: &mut grads,
            scale,
            decayed: GradientsParams::new(),
            not_decayed: GradientsParams::new(),
        };
        model.visit(&mut split);
        let (decayed, not_decayed) = (split.decayed, split.not_decayed);
        let model = self.decayed.step(lr, model, decayed);
        let model = self.not_decayed.step(lr, model, not_decayed);
        (model, grad_norm)
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
        recorder
            .record(self.decayed.to_record(), dir.join("optim-decayed"))
            .context("saving optimizer state")?;
        recorder
            .record(self.not_decayed.to_record(), dir.join("optim-not-decayed"))
            .context("saving optimizer state")?;
        Ok(())
    }

    pub fn load(self, dir: &Path, device: &B::Device) -> Result<Self> {
        let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
        let load = |name: &str| {
            let path = dir.join(name);
            recorder
                .load(path.clone(), device)
                .map_err(|e| anyhow::anyhow!("{}.mpk: {e}", path.display()))
        };
        Ok(Self {
            decayed: self.decayed.load_record(load("optim-decayed")?),
            not_decayed: self.not_decayed.load_record(load("optim-not-decayed")?),
            grad_clip: self.grad_clip,
        })
    }
}

/// Sum of squares of every gradient, kept on the device until read once.
struct GlobalNorm<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    sum_sq: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GlobalNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let s = g.square().sum();
            self.sum_sq = Some(match self.sum_sq.take() {
                Some(acc) => acc + s,
                None => s,
            });
        }
    }
}

/// Moves each gradient, scaled, into the decayed (matrices) or not-decayed (1-D) group.
struct SplitByDecay<'a> {
    grads: &'a mut GradientsParams,
    scale: f64,
    decayed: GradientsParams,
    not_decayed: GradientsParams,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SplitByDecay<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            let group = if D >= 2 {
                &mut self.decayed
            } else {
                &mut self.not_decayed
            };
            group.register(param.id, g * self.scale);
        }
    }
}
