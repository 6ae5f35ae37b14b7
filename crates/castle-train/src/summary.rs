//! Human-readable model and schedule summaries (`--dry-run`).

use std::fmt::Write;

use castle_model::AttentionKind;

use crate::config::RunConfig;

/// `351.2M`, `1.31B`, `4.3K`.
pub fn human(n: f64) -> String {
    match n {
        n if n >= 1e9 => format!("{:.2}B", n / 1e9),
        n if n >= 1e6 => format!("{:.1}M", n / 1e6),
        n if n >= 1e3 => format!("{:.1}K", n / 1e3),
        n => format!("{n:.0}"),
    }
}

/// The model's shape, parameters by part, and training FLOPs per token.
pub fn model_summary(config: &RunConfig, vocab_size: usize) -> String {
    let m = &config.model;
    let p = m.param_summary(vocab_size);
    let mut s = String::new();
    let parity = match (m.attention, m.castle_heads) {
        (AttentionKind::Baseline, _) => String::new(),
        (_, Some(_)) => " (set by model.castle_heads)".into(),
        (_, None) => format!(" (parameter parity with {} baseline heads)", m.heads),
    };
    let window = m
        .lookahead_window()
        .map_or(String::new(), |w| format!(", window {w}"));
    let _ = writeln!(
        s,
        "model: {}, {} layers, d_model {}, {} heads x {}{parity}{window}, block {}, vocab {vocab_size}",
        m.attention,
        m.layers,
        m.d_model,
        m.n_heads(),
        m.head_dim,
        m.block_size
    );
    let head = if m.tie_embeddings {
        "tied".to_string()
    } else {
        human(p.lm_head as f64)
    };
    let _ = writeln!(
        s,
        "  embedding {} | attention {} | mlp {} | norms {} | lm_head {head}",
        human(p.embedding as f64),
        human(p.attention as f64),
        human(p.mlp as f64),
        human(p.norms as f64)
    );
    let _ = writeln!(
        s,
        "parameters: {} ({} non-embedding)",
        human(p.total as f64),
        human(p.non_embedding() as f64)
    );
    let flops = m.train_flops_per_token(vocab_size, config.train.seq_len);
    let _ = writeln!(
        s,
        "train FLOPs per token: {} (forward + backward, at seq_len {})",
        human(flops),
        config.train.seq_len
    );
    s
}

/// Steps, tokens, learning-rate schedule, validation and checkpoint cadence.
pub fn schedule_summary(config: &RunConfig) -> String {
    let t = &config.train;
    let total = (t.steps * config.tokens_per_step()) as f64;
    format!(
        "schedule: {} steps x {} tokens ({} x {} x {} accumulation) = {} tokens\n  lr: warm-up {} steps to {:.2e}, cosine to {:.2e}; AdamW betas ({}, {}), weight decay {}, clip {}\n  validation every {} steps on {} tokens; checkpoint every {} steps, keep {} + best\n  backend: {} {}{}\n",
        t.steps,
        config.tokens_per_step(),
        t.batch_size,
        t.seq_len,
        config.accumulation(),
        human(total),
        t.warmup_steps,
        t.lr,
        t.lr * t.min_lr_ratio,
        t.beta1,
        t.beta2,
        t.weight_decay,
        t.grad_clip,
        config.eval.every,
        config.eval.tokens,
        config.checkpoint.every,
        config.checkpoint.keep_last,
        config.backend.kind,
        config.backend.dtype,
        if config.backend.kind.compiled_in() {
            String::new()
        } else {
            format!(" (not in this build: {})", config.backend.kind.not_compiled_in())
        },
    )
}
