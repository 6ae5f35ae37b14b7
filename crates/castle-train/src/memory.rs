//! `--dry-run`'s training memory: the run's [`MemoryPlan`], the estimate of
//! [`crate::memory_estimate`], and the largest micro-batch that fits `backend.memory_gib`.

use std::fmt::Write;

use crate::memory_estimate::{
    largest_micro_batch, training_memory, AttentionImpl, MemoryPlan, TrainingMemory,
};

use crate::config::{BackendConfig, BackendKind, Checkpointing, RunConfig};

/// How `kind` runs the attention, which fixes what it keeps for backward.
pub fn attention_impl(kind: BackendKind) -> AttentionImpl {
    match kind {
        BackendKind::Ndarray | BackendKind::Flex => AttentionImpl::HostKernels,
        BackendKind::Cuda | BackendKind::Wgpu => AttentionImpl::DeviceKernels,
    }
}

/// The memory `--dry-run` fits the micro-batch to when `backend.memory_gib` is not set: this
/// machine's RAM for the CPU backends (16 GiB if `/proc/meminfo` cannot be read), 80 GiB (an
/// A100 or H100) for CUDA, 16 GiB (a common discrete GPU) for wgpu.
pub fn default_memory_gib(kind: BackendKind) -> f64 {
    match kind {
        BackendKind::Ndarray | BackendKind::Flex => host_memory_gib().unwrap_or(16.0),
        BackendKind::Cuda => 80.0,
        BackendKind::Wgpu => 16.0,
    }
}

/// `backend.memory_gib` or the backend kind's default.
pub fn memory_gib(backend: &BackendConfig) -> f64 {
    backend
        .memory_gib
        .unwrap_or_else(|| default_memory_gib(backend.kind))
}

/// `MemTotal` of `/proc/meminfo`, in GiB.
fn host_memory_gib() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: f64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib / (1024.0 * 1024.0))
}

/// The memory plan of one micro-batch of `config` on its backend.
pub fn memory_plan(config: &RunConfig, vocab_size: usize) -> MemoryPlan {
    MemoryPlan {
        batch: config.train.batch_size,
        seq_len: config.train.seq_len,
        vocab: vocab_size,
        compute_bytes: config.backend.dtype.bytes(),
        accumulation: config.accumulation(),
        attention: attention_impl(config.backend.kind),
        checkpointing: config.backend.checkpointing == Checkpointing::Balanced,
    }
}

/// `1.25 GiB`, `310.4 MiB`.
fn gib(bytes: u64) -> String {
    let b = bytes as f64;
    match b / (1u64 << 30) as f64 {
        g if g >= 1.0 => format!("{g:.2} GiB"),
        _ => format!("{:.1} MiB", b / (1u64 << 20) as f64),
    }
}

/// Training memory per device at the configured micro-batch, and the largest micro-batch that
/// fits `backend.memory_gib`, under this checkpointing setting and the other.
pub fn memory_summary(config: &RunConfig, vocab_size: usize) -> String {
    let plan = memory_plan(config, vocab_size);
    let m = &config.model;
    let budget_gib = memory_gib(&config.backend);
    let budget = (budget_gib * (1u64 << 30) as f64) as u64;
    let attention = match plan.attention {
        AttentionImpl::HostKernels => "host kernels, O(L^2) per head",
        AttentionImpl::DeviceKernels => "device kernels, O(L d) per head",
        AttentionImpl::TensorOps => "tensor ops, several L x L per head",
    };
    let t: TrainingMemory = training_memory(m, &plan);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "memory per device ({} {}, attention in {attention}, checkpointing {}), micro-batch {} x {}:",
        config.backend.kind,
        config.backend.dtype,
        config.backend.checkpointing,
        plan.batch,
        plan.seq_len
    );
    let weights = match t.compute_weights {
        0 => String::new(),
        w => format!(" | bf16 weight copies {}", gib(w)),
    };
    let _ = writeln!(
        s,
        "  parameters {} | gradients {} | AdamW moments {}{weights}",
        gib(t.parameters),
        gib(t.gradients),
        gib(t.optimizer)
    );
    let transient = match t.attention_transient {
        0 => String::new(),
        b => format!(" | attention backward scratch {}", gib(b)),
    };
    let _ = writeln!(
        s,
        "  activations {}: layers {} | attention {} | final norm, logits, loss {} | logits gradient {}{transient}",
        gib(t.activations()),
        gib(t.layer_activations),
        gib(t.attention_state),
        gib(t.head),
        gib(t.logits_grad)
    );
    let _ = writeln!(s, "  total {}", gib(t.total()));
    let largest = |attention| {
        [Checkpointing::None, Checkpointing::Balanced]
            .map(|c| {
                let p = MemoryPlan {
                    attention,
                    checkpointing: c == Checkpointing::Balanced,
                    ..plan
                };
                format!(
                    "{} with checkpointing {c}",
                    largest_micro_batch(m, &p, budget)
                )
            })
            .join(", ")
    };
    let _ = writeln!(
        s,
        "  largest micro-batch that fits {budget_gib:.0} GiB (backend.memory_gib): {}",
        largest(plan.attention)
    );
    s
}
