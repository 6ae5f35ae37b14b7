//! Training memory counted from the model's shape: parameters, gradients, AdamW moments, and the
//! activations burn's autodiff graph keeps for the backward pass, by attention implementation and
//! checkpointing strategy. `castle-train --dry-run` prints it ([`crate::memory`]) with the largest micro-batch that
//! fits a device.
//!
//! The counts follow what each op of burn 0.21's autodiff keeps (`burn-autodiff/src/ops`): a
//! matmul keeps both inputs, an elementwise op what its derivative reads (`tanh` and `exp` their
//! output, a product both factors), and a host kernel or fused host op
//! ([`castle_kernels::backend`]) its inputs and its own saved state: host copies, except that
//! on `Flex` an f32 input is read in place (`castle_kernels::host::host_array`), so an input some other op
//! keeps too is counted once. Under
//! `BalancedCheckpointing` burn recomputes memory-bound (elementwise, reshape) outputs in the
//! backward pass instead of keeping them, but keeps ("backs up") every compute-bound parent of a
//! memory-bound op until the backward pass starts. On the host-kernel path nothing elementwise is
//! kept in the first place, so the backups only add (projection and gate outputs): there
//! checkpointing costs memory. On the GPU paths it drops the elementwise intermediates of RMSNorm,
//! RoPE and SwiGLU. The softmax's and lookahead's `L x L` tensors of the tensor-op attention stay
//! either way (their parents are matmul and `mask_fill` outputs, compute-bound, so backed up).

use castle_kernels::memory::{
    castle_backward_transient, host_attention_saved, reference_attention_saved,
};
use castle_kernels::AttentionOp;
use castle_model::{AttentionKind, ModelConfig};

/// How the attention runs, which fixes what it keeps for backward per head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionImpl {
    /// The fused CPU kernels: host copies of the inputs, the output and the softmax
    /// probabilities, `O(L^2)` per head (and for CASTLE `SiLU'(S_U)` and the lookahead weights).
    HostKernels,
    /// Fused GPU kernels keeping `O(L d)` per head: inputs, output, row log-sum-exp and, for
    /// CASTLE, the final lookahead keys `U` `[L, d]`.
    DeviceKernels,
    /// burn tensor ops (`causal_attention`, `lookahead_scores_chunked` + `attend`): several
    /// `L x L` tensors per head.
    TensorOps,
}

/// One micro-batch's shape and the run settings the memory depends on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryPlan {
    pub batch: usize,
    pub seq_len: usize,
    pub vocab: usize,
    /// Bytes per activation element: 4 (f32) or 2 (bf16 compute, f32 parameters).
    pub compute_bytes: usize,
    /// Micro-batches per optimizer step; above 1 a second gradient buffer accumulates.
    pub accumulation: usize,
    pub attention: AttentionImpl,
    /// burn's `BalancedCheckpointing` instead of `NoCheckpointing`.
    pub checkpointing: bool,
}

/// Bytes of training state at the end of a micro-batch's forward pass, the peak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainingMemory {
    /// f32 parameters.
    pub parameters: u64,
    /// f32 gradients (twice when accumulating).
    pub gradients: u64,
    /// AdamW's two f32 moments.
    pub optimizer: u64,
    /// bf16 copies of the weights that the matmuls keep (0 in f32).
    pub compute_weights: u64,
    /// Kept per layer by norms, projections, RoPE and the MLP, all layers.
    pub layer_activations: u64,
    /// Kept by the attention itself (inputs it copies, output, softmax state), all layers.
    pub attention_state: u64,
    /// Final norm, LM head and loss (the logits themselves only off the CPU, their gradient
    /// only on it).
    pub head: u64,
    /// The logits' gradient, allocated at the start of the backward pass while all the above
    /// is still alive (0 on CPU, where the fused head computes it in the forward pass: `head`).
    pub logits_grad: u64,
    /// Scratch of one CASTLE device-kernel backward call (one layer's, freed when it returns;
    /// `castle_kernels::memory::castle_backward_transient`), counted on top as the backward pass
    /// starts with nearly all of the above alive. 0 for the baseline and off the device kernels.
    pub attention_transient: u64,
}

impl TrainingMemory {
    pub fn activations(&self) -> u64 {
        self.layer_activations
            + self.attention_state
            + self.head
            + self.logits_grad
            + self.attention_transient
    }

    pub fn total(&self) -> u64 {
        self.parameters
            + self.gradients
            + self.optimizer
            + self.compute_weights
            + self.activations()
    }
}

/// `model`'s training memory for `plan`; see the module documentation for what is counted.
pub fn training_memory(model: &ModelConfig, plan: &MemoryPlan) -> TrainingMemory {
    let params = model.param_summary(plan.vocab).total as u64;
    let matrix_params = params - model.param_summary(plan.vocab).norms as u64;
    let e = plan.compute_bytes as u64;
    let tokens = (plan.batch * plan.seq_len) as u64;
    let layers = model.layers as u64;
    let (d_model, hidden, vocab) = (
        model.d_model as u64,
        model.mlp_hidden() as u64,
        plan.vocab as u64,
    );
    let nd = (model.n_heads() * model.head_dim) as u64;
    let castle = model.attention != AttentionKind::Baseline;
    // Projections out of `in_proj`, of them rotated by RoPE.
    let (projected, roped) = if castle { (6, 4) } else { (3, 2) };
    let host = plan.attention == AttentionImpl::HostKernels;
    // The host kernels and ops compute in f32 whatever the tensors' type.
    let host_e = 4;

    // Elements per token kept per layer outside the attention op.
    let per_token = match (host, plan.checkpointing) {
        // Two RMSNorm inputs (host copies) and rms, two norm outputs (matmul inputs),
        // merged attention output, SwiGLU's two inputs (host copies) and output.
        (true, false) => {
            (2 * d_model + 2) * host_e + (2 * d_model + nd + hidden) * e + 2 * hidden * host_e
        }
        // Plus the backed-up projection (RoPE is inside the attention's fused op,
        // `castle_kernels::host::heads`), gate/up and residual-branch outputs; in f32 the
        // backed-up gate/up are SwiGLU's inputs themselves, not copies.
        (true, true) => {
            let swiglu_copies = if e == host_e { 0 } else { 2 * hidden * host_e };
            (2 * d_model + 2) * host_e
                + swiglu_copies
                + (2 * d_model + nd + hidden + projected * nd + 2 * hidden + 2 * d_model) * e
        }
        // Per RMSNorm x, x / rms, rms, sqrt; the norm outputs; `in_proj` output (its views
        // feed RoPE and attention); RoPE outputs; merged output; SwiGLU's g, tanh, sigmoid,
        // SiLU, up and product.
        (false, false) => {
            (2 * (2 * d_model + 2) + 2 * d_model + (projected + roped + 1) * nd + 6 * hidden) * e
        }
        // mean_dim outputs, backed-up residual branches, `in_proj` and RoPE outputs,
        // attention output, gate and up.
        (false, true) => (2 + 2 * d_model + (projected + roped + 1) * nd + 2 * hidden) * e,
    };
    let layer_activations = layers * tokens * per_token;

    let shape = match castle {
        true => AttentionOp::Castle {
            window: model.lookahead_window(),
        },
        false => AttentionOp::Causal,
    };
    let (len, d, block) = (plan.seq_len, model.head_dim, model.block_size);
    let per_head = match plan.attention {
        AttentionImpl::HostKernels => host_attention_saved(shape, len, d, block) * host_e,
        // Output, row log-sum-exp and, for CASTLE, `U` (the inputs are counted above).
        AttentionImpl::DeviceKernels => {
            let (len, d) = (len as u64, d as u64);
            (len * d + len + if castle { len * d } else { 0 }) * e
        }
        // In f32 whatever the compute type (`castle_kernels::precision`); under bf16 the
        // inputs' widened copies too.
        AttentionImpl::TensorOps => reference_attention_saved(shape, len, d, block, e < 4) * 4,
    };
    let attention_state = layers * (plan.batch * model.n_heads()) as u64 * per_head;

    // Final norm and LM-head input. On CPU the fused head and loss (`castle_kernels::host::lm_loss`)
    // keep the norm's input and `1/rms`, its output (the head's input), the head `W` (once,
    // not per token) and the logits' f32 gradient, which the forward pass computes and
    // the backward pass consumes, never the logits; under
    // checkpointing the norm's output is backed up. On GPU the logits as the loss keeps
    // them, in f32 whatever the compute type (`exp` of log-softmax), and their f32 gradient
    // is allocated in the backward pass (`logits_grad`).
    let (head_per_token, head_once) = if host {
        let norm = (d_model + 1) * host_e;
        let loss = d_model * host_e + vocab * 4;
        let backed_up = if plan.checkpointing { d_model * e } else { 0 };
        (norm + loss + backed_up, vocab * d_model * host_e)
    } else {
        ((2 * d_model + 2 + d_model) * e + vocab * 4, 0)
    };
    let bf16 = plan.compute_bytes < 4;
    // Every matrix is cast for its product except the embedding table, which is gathered
    // in f32 (and cast as the head only when tied and off the CPU), and the CPU's fused
    // head, which multiplies the f32 `W` itself.
    let tables = match (host, model.tie_embeddings) {
        (false, true) => 0,
        (false, false) | (true, true) => 1,
        (true, false) => 2,
    };
    let cast_params = matrix_params - tables * vocab * d_model;
    TrainingMemory {
        parameters: 4 * params,
        gradients: 4 * params * if plan.accumulation > 1 { 2 } else { 1 },
        optimizer: 8 * params,
        compute_weights: if bf16 { e * cast_params } else { 0 },
        layer_activations,
        attention_state,
        head: tokens * head_per_token + head_once,
        logits_grad: if host { 0 } else { tokens * vocab * 4 },
        attention_transient: if castle && plan.attention == AttentionImpl::DeviceKernels {
            castle_backward_transient(plan.batch * model.n_heads(), plan.seq_len, model.head_dim)
        } else {
            0
        },
    }
}

/// The largest micro-batch (sequences) whose [`training_memory`] fits in `budget` bytes, or 0
/// when not even one does.
pub fn largest_micro_batch(model: &ModelConfig, plan: &MemoryPlan, budget: u64) -> usize {
    let fits =
        |batch: usize| training_memory(model, &MemoryPlan { batch, ..*plan }).total() <= budget;
    if !fits(1) {
        return 0;
    }
    // Memory grows with the batch, so double then bisect.
    let mut hi = 2;
    while fits(hi) {
        hi *= 2;
    }
    let mut lo = hi / 2;
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}
