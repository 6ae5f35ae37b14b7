//! Learning-rate schedule: linear warm-up, then cosine decay to `min_lr_ratio` of the peak.

use crate::config::TrainConfig;

/// Learning rate for optimizer step `step` (1-based).
pub fn learning_rate(train: &TrainConfig, step: usize) -> f64 {
    let peak = train.lr;
    let floor = peak * train.min_lr_ratio;
    if step <= train.warmup_steps {
        return peak * step as f64 / train.warmup_steps as f64;
    }
    let decay_steps = (train.steps - train.warmup_steps).max(1);
    let progress = ((step - train.warmup_steps) as f64 / decay_steps as f64).min(1.0);
    floor + (peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}
