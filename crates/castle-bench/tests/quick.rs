//! The quick path on tiny sizes, so the benchmark never rots. No timing assertions.

use castle_bench::{alloc, markdown, run, BackendKind, Options};

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

#[test]
fn quick_run_produces_every_table() {
    let mut opts = Options::quick();
    opts.lengths = vec![16, 32];
    opts.blocks = vec![8, 16];
    opts.window = 8;
    opts.chunked_block = Some(8);
    opts.decode_lengths = vec![8, 16];
    opts.model.seq_len = 16;
    opts.model.block_size = 8;
    opts.train_shapes = vec![opts.model];
    for backend in [BackendKind::Flex, BackendKind::Ndarray] {
        opts.backends = vec![backend];
        let report = run(&opts, &mut |_| {}).unwrap();
        // 2 settings x 2 lengths x (baseline, naive, chunked, 2 x (baseline, castle, swl) fused).
        assert_eq!(report.attention.len(), 2 * 2 * 9);
        assert_eq!(report.train.len(), 3);
        assert_eq!(report.decode.len(), 2 * 3);
        assert!(alloc::installed());
        assert!(report
            .attention
            .iter()
            .all(|r| r.median_s > 0.0 && r.flops > 0.0));
        assert!(report.attention.iter().any(|r| r.peak_bytes > 0));
        assert!(report
            .train
            .iter()
            .all(|r| r.tokens_per_s > 0.0 && r.state_bytes > 0 && r.cores_busy > 0.0));
        for r in &report.train {
            let phases: f64 = r.split.iter().sum();
            assert!(
                r.split.iter().all(|&p| p > 0.0) && phases <= 1.0 + 1e-9,
                "forward, backward and optimizer are parts of the step: {:?}",
                r.split
            );
        }
        let md = markdown(&report, &opts);
        for heading in ["## 1.", "## 2.", "## 3.", "## Targets"] {
            assert!(md.contains(heading), "missing {heading} in\n{md}");
        }
    }
}

#[test]
fn flop_counts_follow_the_forms() {
    use castle_bench::{call_flops, Form};
    let (l, d) = (256, 64);
    let flops = |form| call_flops(form, l, d, 64);
    let base = flops(Form::Baseline);
    let naive = flops(Form::Naive);
    let chunked = flops(Form::Chunked { block: 64 });
    let fused = flops(Form::Fused { block: 64 });
    let swl = flops(Form::SwlFused { block: 64 });
    let base_fused = flops(Form::BaselineFused { block: 64 });
    // Dense scores and P V, forward + backward.
    assert_eq!(base, 3.0 * 4.0 * (l * l * d) as f64);
    // One block is the whole causal square: the fused baseline does 6 dense products.
    assert_eq!(
        call_flops(Form::BaselineFused { block: l }, l, d, 64),
        6.0 * 2.0 * (l * l * d) as f64
    );
    // Two blocks, counted by hand from the loops of `kernels/lookahead.rs`: 22 `bs x d x bs`
    // and 9 `bs^3` products on top of the softmax's.
    let (bs, d2) = (64, 32);
    let lookahead = call_flops(Form::Fused { block: bs }, 2 * bs, d2, 64)
        - call_flops(Form::BaselineFused { block: bs }, 2 * bs, d2, 64);
    let (pair, cube) = (2.0 * (bs * d2 * bs) as f64, 2.0 * (bs * bs * bs) as f64);
    assert_eq!(lookahead, 22.0 * pair + 9.0 * cube);
    assert!(naive > chunked && chunked > base);
    assert!(fused > swl && swl > base_fused && base_fused < base);
}
