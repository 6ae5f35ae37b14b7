//! The training-memory estimate (`castle_train::memory_estimate`, host-kernel path) against the bytes
//! burn's autodiff graph really keeps after a forward pass on `Flex`, counted by a global
//! allocator, in f32 and bf16. One test in its own binary, so no other test allocates while it counts.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::DType;
use castle_model::{AttentionKind, ModelConfig};
use castle_train::memory_estimate::{training_memory, AttentionImpl, MemoryPlan};

/// Counts the heap bytes alive (the CPU backends allocate every tensor through it).
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::SeqCst);
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const VOCAB: usize = 61;

/// A shape whose activations dwarf the graph's bookkeeping: awkward length, 3 layers.
fn measured_config(kind: AttentionKind) -> ModelConfig {
    let window = (kind == AttentionKind::CastleSwl).then_some(20);
    let mut config = ModelConfig::new(3, 64, 7, 16).with_attention(kind, window);
    config.block_size = 16;
    config.max_seq_len = 256;
    config
}

/// Live heap bytes the graph keeps after the forward pass and loss of a `[batch, len]`
/// micro-batch computed in `compute_dtype` (`None`: f32).
fn kept_after_forward<C: CheckpointStrategy>(
    config: &ModelConfig,
    batch: usize,
    len: usize,
    compute_dtype: Option<DType>,
) -> usize {
    type B<C> = Autodiff<Flex, C>;
    let device = Default::default();
    let mut model = config.init::<B<C>>(VOCAB, &device);
    model.compute_dtype = compute_dtype;
    let tokens = random_tokens::<B<C>>(batch, len + 1, &device);
    let (input, target) = (
        tokens.clone().slice([0..batch, 0..len]),
        tokens.slice([0..batch, 1..len + 1]),
    );
    // A first pass starts rayon's pool and the backend's lazy state.
    let warm_up = model.token_nll(input.clone(), target.clone()).mean();
    drop(warm_up.backward());
    let before = LIVE.load(Ordering::SeqCst);
    let loss = model.token_nll(input, target).mean();
    let kept = LIVE.load(Ordering::SeqCst).saturating_sub(before);
    // The graph is alive until here: the backward pass consumes it.
    drop(loss.backward());
    kept
}

#[test]
fn estimate_matches_the_bytes_the_graph_keeps_on_flex() {
    for kind in [
        AttentionKind::Baseline,
        AttentionKind::Castle,
        AttentionKind::CastleSwl,
    ] {
        let config = measured_config(kind);
        for (batch, len) in [(1, 200), (2, 77)] {
            for (checkpointing, dtype) in [(false, None), (true, None), (false, Some(DType::BF16))]
            {
                let measured = if checkpointing {
                    kept_after_forward::<BalancedCheckpointing>(&config, batch, len, dtype)
                } else {
                    kept_after_forward::<NoCheckpointing>(&config, batch, len, dtype)
                };
                let plan = MemoryPlan {
                    batch,
                    seq_len: len,
                    vocab: VOCAB,
                    compute_bytes: if dtype.is_some() { 2 } else { 4 },
                    accumulation: 1,
                    attention: AttentionImpl::HostKernels,
                    checkpointing,
                };
                let m = training_memory(&config, &plan);
                // The bf16 weight copies the matmuls keep are made in the forward pass too.
                let estimate = m.activations() - m.logits_grad + m.compute_weights;
                let rel = (measured as f64 - estimate as f64) / estimate as f64;
                println!("{kind} batch {batch} len {len} checkpointing {checkpointing} {dtype:?}: measured {measured} estimate {estimate} ({:+.1}%)", 100.0 * rel);
                assert!(
                    rel.abs() < 0.05,
                    "{kind} batch {batch} len {len} checkpointing {checkpointing} {dtype:?}: measured {measured} bytes, estimated {estimate}"
                );
            }
        }
    }
}

/// Token ids `[batch, len]` below `VOCAB` (any ids do: the graph's size does not depend on them).
fn random_tokens<B: Backend>(batch: usize, len: usize, device: &B::Device) -> Tensor<B, 2, Int> {
    let ids: Vec<i64> = (0..batch * len)
        .map(|i| (i as i64 * 7919 + 7) % VOCAB as i64)
        .collect();
    Tensor::from_data(TensorData::new(ids, [batch, len]), device)
}
