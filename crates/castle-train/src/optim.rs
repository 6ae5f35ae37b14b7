//! AdamW (decoupled weight decay, beta1 0.9, beta2 0.95) with global-norm gradient clipping.
//!
//! Weight decay applies to every matrix, the token embedding (and so the tied LM head) included,
//! and not to the RMSNorm gains (the 1-D parameters), as in nanoGPT. burn's AdamW has one decay
//! for all parameters and clips each tensor on its own, so the gradients are clipped here by
//! their global norm and split between two AdamW instances, one with decay and one without.
//!
//! Each instance is [`FusedAdamW`]: burn's AdamW update, run on the CPU backends as one parallel
//! pass per tensor (`castle_kernels::host::adamw`) with the same bits, and as the same tensor ops
//! elsewhere (`castle_kernels::reference::adamw`). Its state is burn's `AdamWState`, so checkpoints hold the same records.

use std::path::Path;

use anyhow::{Context, Result};
use burn::module::{ModuleVisitor, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{
    AdamW, AdamWState, AdaptiveMomentumState, GradientsParams, LearningRate, Optimizer,
    SimpleOptimizer,
};
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use castle_kernels::host::adamw::AdamWStep;
use castle_model::{CastleLm, KernelBackend, TrainBackend};

use crate::config::TrainConfig;

type Adam<B> = OptimizerAdaptor<FusedAdamW, CastleLm<B>, B>;

pub struct AdamWGroups<B: TrainBackend> {
    decayed: Adam<B>,
    not_decayed: Adam<B>,
    grad_clip: f64,
}

impl<B: TrainBackend> AdamWGroups<B> {
    pub fn new(train: &TrainConfig) -> Self {
        let adamw = |weight_decay: f64| {
            OptimizerAdaptor::from(FusedAdamW::new(train.beta1, train.beta2, weight_decay))
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

/// AdamW (epsilon 1e-8) with burn's state and arithmetic ([`KernelBackend::adamw`]); on the
/// host-kernel backends each tensor's update is one fused parallel pass instead of burn's chain
/// of tensor ops.
#[derive(Clone)]
pub struct FusedAdamW {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
}

impl FusedAdamW {
    pub fn new(beta_1: f64, beta_2: f64, weight_decay: f64) -> Self {
        let (beta_1, beta_2, epsilon, weight_decay) =
            (beta_1 as f32, beta_2 as f32, 1e-8, weight_decay as f32);
        Self {
            beta_1,
            beta_2,
            epsilon,
            weight_decay,
        }
    }
}

impl<B: KernelBackend> SimpleOptimizer<B> for FusedAdamW {
    type State<const D: usize> = AdamWState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let time = state.as_ref().map_or(0, |s| s.momentum.time) + 1;
        let step = AdamWStep::new(
            self.beta_1,
            self.beta_2,
            self.epsilon,
            self.weight_decay,
            lr,
            time as i32,
        );
        let moments = state.map(|s| [s.momentum.moment_1, s.momentum.moment_2]);
        let [p, moment_1, moment_2] = B::adamw(&step, [tensor, grad], moments);
        let momentum = AdaptiveMomentumState {
            time,
            moment_1,
            moment_2,
            max_moment_2: None,
        };
        (p, Some(AdamWState { momentum }))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        <AdamW as SimpleOptimizer<B>>::to_device(state, device)
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
            // Unclipped (`scale` 1) gradients go as they are: `g * 1` is `g`, one pass later.
            group.register(param.id, if self.scale < 1.0 { g * self.scale } else { g });
        }
    }
}
