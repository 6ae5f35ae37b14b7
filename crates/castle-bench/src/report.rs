//! The report: the machine's matmul rate, one section per table, and the targets they grade.

use std::fmt::Write as _;

use crate::{attention, decode, train, Options, Report};

/// The report as Markdown.
pub fn markdown(report: &Report, opts: &Options) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Matrix-multiply rate ({0} x {0} x {0}, f32, best of {1} after a warm-up, read at the \
         start and at the end of the run; the better reading is the denominator of MFU):",
        opts.matmul_size,
        opts.reps.max(10)
    );
    let _ = writeln!(md);
    for ((b, best), (_, [first, last])) in report.matmul_gflops.iter().zip(&report.matmul_readings)
    {
        let _ = writeln!(
            md,
            "- `{b}`: {best:.1} GFLOP/s (start {first:.1}, end {last:.1})"
        );
    }
    let _ = writeln!(md);
    if report
        .matmul_gflops
        .iter()
        .any(|&(b, _)| !attention::on_host(b))
    {
        let fusion = if opts.fusion { "under" } else { "without" };
        let _ = writeln!(
            md,
            "The GPU backends run {fusion} burn's `Fusion` wrapper.\n"
        );
    }

    let mut targets = String::new();
    attention::section(report, opts, &mut md, &mut targets);
    train::section(report, opts, &mut md, &mut targets);
    decode::section(report, opts, &mut md, &mut targets);
    if !targets.is_empty() {
        let _ = writeln!(
            md,
            "\n## Targets\n\n| where | target | measured | |\n|---|---|---|---|\n{targets}"
        );
    }
    md
}
