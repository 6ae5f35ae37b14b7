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
    opts.batched_block = Some(8);
    opts.decode_lengths = vec![8, 16];
    opts.model.seq_len = 16;
    opts.model.block_size = 8;
    for backend in [BackendKind::Flex, BackendKind::NdArray] {
        opts.backends = vec![backend];
        let report = run(&opts, &mut |_| {});
        // 2 settings x 2 lengths x (baseline, naive, 2 chunked, 2 swl, batched).
        assert_eq!(report.attention.len(), 2 * 2 * 7);
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
            .all(|r| r.tokens_per_s > 0.0 && r.state_bytes > 0));
        let md = markdown(&report, &opts);
        for heading in ["## 1.", "## 2.", "## 3.", "## Targets"] {
            assert!(md.contains(heading), "missing {heading} in\n{md}");
        }
    }
}

#[test]
fn flop_counts_follow_the_forms() {
    use castle_bench::{forward_flops, Form};
    let (l, d) = (256, 64);
    let base = forward_flops(Form::Baseline, l, d, 128);
    let naive = forward_flops(Form::Naive, l, d, 128);
    let chunked = forward_flops(Form::Chunked { block: 64 }, l, d, 128);
    let swl = forward_flops(Form::Swl { block: 64 }, l, d, 128);
    assert_eq!(base, 4.0 * (l * l * d) as f64);
    assert!(naive > chunked && chunked > base && swl <= chunked);
}
