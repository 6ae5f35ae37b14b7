//! The training-memory estimate (`castle_train::memory_estimate`): its analytic properties
//! (`memory_measured.rs` checks it against the bytes burn's graph keeps).

use burn::backend::{Autodiff, Flex};
use burn::module::Module;
use castle_model::{AttentionKind, ModelConfig};
use castle_train::memory_estimate::{
    largest_micro_batch, training_memory, AttentionImpl, MemoryPlan,
};

const KINDS: [AttentionKind; 3] = [
    AttentionKind::Baseline,
    AttentionKind::Castle,
    AttentionKind::CastleSwl,
];
const VOCAB: usize = 61;

/// Three layers, 7 heads, a block that does not divide the lengths.
fn config_of(kind: AttentionKind) -> ModelConfig {
    let window = (kind == AttentionKind::CastleSwl).then_some(20);
    let mut config = ModelConfig::new(3, 64, 7, 16).with_attention(kind, window);
    config.block_size = 16;
    config.max_seq_len = 256;
    config
}

/// Two layers, 4 heads of 8, block 4.
fn tiny_config(kind: AttentionKind) -> ModelConfig {
    let window = (kind == AttentionKind::CastleSwl).then_some(3);
    let mut config = ModelConfig::new(2, 32, 4, 8).with_attention(kind, window);
    config.block_size = 4;
    config.max_seq_len = 64;
    config
}

fn plan(batch: usize, seq_len: usize, attention: AttentionImpl) -> MemoryPlan {
    MemoryPlan {
        batch,
        seq_len,
        vocab: VOCAB,
        compute_bytes: 4,
        accumulation: 1,
        attention,
        checkpointing: false,
    }
}

#[test]
fn parameter_bytes_are_four_per_real_parameter() {
    let device = Default::default();
    for kind in KINDS {
        for tie in [true, false] {
            let mut config = tiny_config(kind);
            config.tie_embeddings = tie;
            let model = config.init::<Autodiff<Flex>>(VOCAB, &device);
            let m = training_memory(&config, &plan(2, 9, AttentionImpl::HostKernels));
            let params = 4 * model.num_params() as u64;
            assert_eq!(m.parameters, params, "{kind} tie={tie}");
            assert_eq!(m.gradients, params);
            assert_eq!(m.optimizer, 2 * params);
            assert_eq!(m.compute_weights, 0);
            let accumulating = MemoryPlan {
                accumulation: 4,
                ..plan(2, 9, AttentionImpl::HostKernels)
            };
            assert_eq!(
                training_memory(&config, &accumulating).gradients,
                2 * params
            );
        }
    }
}

#[test]
fn attention_state_is_linear_in_length_on_device_kernels_and_quadratic_in_tensor_ops() {
    for kind in KINDS {
        let config = config_of(kind);
        let state = |attention, len| {
            training_memory(&config, &plan(2, len, attention)).attention_state as f64
        };
        for len in [64, 128] {
            let device = state(AttentionImpl::DeviceKernels, 2 * len)
                / state(AttentionImpl::DeviceKernels, len);
            assert_eq!(device, 2.0, "{kind} device kernels, {len} -> {}", 2 * len);
            let ops =
                state(AttentionImpl::TensorOps, 4 * len) / state(AttentionImpl::TensorOps, 2 * len);
            // 4 but for the O(L d) terms (and CASTLE-SWL's O(L W) band).
            assert!(ops > 3.0 && ops <= 4.0, "{kind} tensor ops, ratio {ops}");
        }
        // The host kernels keep the probabilities: quadratic too, except CASTLE-SWL's band.
        let host = state(AttentionImpl::HostKernels, 256) / state(AttentionImpl::HostKernels, 128);
        assert!(host > 2.5, "{kind} host kernels, ratio {host}");
    }
}

#[test]
fn checkpointing_lowers_activations_on_gpu_paths_and_raises_them_on_host_kernels() {
    for kind in KINDS {
        let config = config_of(kind);
        for attention in [
            AttentionImpl::DeviceKernels,
            AttentionImpl::TensorOps,
            AttentionImpl::HostKernels,
        ] {
            let none = training_memory(&config, &plan(3, 100, attention));
            let balanced = training_memory(
                &config,
                &MemoryPlan {
                    checkpointing: true,
                    ..plan(3, 100, attention)
                },
            );
            assert_eq!(none.attention_state, balanced.attention_state);
            if attention == AttentionImpl::HostKernels {
                assert!(balanced.activations() > none.activations(), "{kind}");
            } else {
                assert!(
                    balanced.activations() < none.activations(),
                    "{kind} {attention:?}"
                );
            }
        }
    }
}

#[test]
fn bf16_halves_gpu_layer_and_attention_activations_and_keeps_f32_master_state() {
    let config = config_of(AttentionKind::Castle);
    let f32 = training_memory(&config, &plan(2, 100, AttentionImpl::DeviceKernels));
    let bf16 = training_memory(
        &config,
        &MemoryPlan {
            compute_bytes: 2,
            ..plan(2, 100, AttentionImpl::DeviceKernels)
        },
    );
    assert_eq!(2 * bf16.layer_activations, f32.layer_activations);
    assert_eq!(2 * bf16.attention_state, f32.attention_state);
    assert_eq!(bf16.logits_grad, f32.logits_grad, "the loss is f32");
    assert!(bf16.head < f32.head && 2 * bf16.head > f32.head);
    assert_eq!(
        (bf16.parameters, bf16.optimizer),
        (f32.parameters, f32.optimizer)
    );
    assert_eq!(
        2 * bf16.compute_weights,
        f32.parameters - 4 * config.param_summary(VOCAB).norms as u64
    );
}

#[test]
fn largest_micro_batch_fits_and_is_monotone_in_memory() {
    for kind in KINDS {
        let config = config_of(kind);
        for attention in [
            AttentionImpl::DeviceKernels,
            AttentionImpl::TensorOps,
            AttentionImpl::HostKernels,
        ] {
            let p = plan(1, 200, attention);
            let one = training_memory(&config, &p).total();
            assert_eq!(largest_micro_batch(&config, &p, one - 1), 0);
            let mut last = 0;
            for budget in [one, one + one / 3, 2 * one, 5 * one, 37 * one, 1000 * one] {
                let batch = largest_micro_batch(&config, &p, budget);
                assert!(
                    batch >= last.max(1),
                    "{kind} {attention:?}: {batch} after {last}"
                );
                let mem = |batch| training_memory(&config, &MemoryPlan { batch, ..p }).total();
                assert!(
                    mem(batch) <= budget && mem(batch + 1) > budget,
                    "{kind} {attention:?} budget {budget}"
                );
                last = batch;
            }
        }
    }
}

#[test]
fn castle_device_backward_scratch_is_one_layer_of_segment_buffers() {
    use castle_kernels::device::castle_segments;
    for kind in KINDS {
        let config = config_of(kind);
        // One segment per tile (1 x heads); a few; one per head (1,400 heads fill the GPU).
        for (batch, len) in [(1, 100), (30, 200), (200, 64)] {
            let heads = batch * config.n_heads();
            let (_, segments) = castle_segments(heads, len, usize::MAX);
            let slot = (7 * 4 * len * 16) as u64;
            let exact = segments as u64 * heads as u64 * slot;
            let device = training_memory(&config, &plan(batch, len, AttentionImpl::DeviceKernels));
            let got = device.attention_transient;
            if kind == AttentionKind::Baseline {
                assert_eq!(got, 0);
            } else {
                // An upper bound, at most about twice the kernels' allocation (which rounds
                // the segments' length up to whole tiles).
                assert!(
                    exact <= got && got <= 2 * exact + heads as u64 * slot,
                    "{kind} batch {batch}, L {len}: {got} for {exact}"
                );
            }
            for other in [AttentionImpl::HostKernels, AttentionImpl::TensorOps] {
                let m = training_memory(&config, &plan(batch, len, other));
                assert_eq!(m.attention_transient, 0, "{kind} {other:?}");
            }
        }
    }
    // The bound grows with the batch although the segments' count steps down.
    let config = config_of(AttentionKind::Castle);
    let scratch = |batch| {
        training_memory(&config, &plan(batch, 2048, AttentionImpl::DeviceKernels))
            .attention_transient
    };
    assert!((1..400).all(|b| scratch(b + 1) > scratch(b)));
    assert_eq!(
        castle_segments(7, 100, usize::MAX),
        (1, 7),
        "7 tiles, one each"
    );
    assert_eq!(
        castle_segments(1400, 200, usize::MAX),
        (13, 1),
        "one per head"
    );
    assert_eq!(
        castle_segments(120, 2048, usize::MAX),
        (15, 9),
        "ceil(1024 / 120) = 9"
    );
}
