//! The shared shape of every castle binary: `tracing` to stderr (`RUST_LOG`, default `info`;
//! colours only on a terminal), an error printed as `error: ...` with exit code 1, and freed heap
//! memory kept for reuse ([`retain_freed_memory`]).

use std::io::IsTerminal;
use std::process::ExitCode;

pub fn main_with_logging(run: impl FnOnce() -> anyhow::Result<()>) -> ExitCode {
    retain_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Keeps freed heap memory in the process for reuse instead of handing it back to the OS.
///
/// A training step frees and allocates the same large tensors every step. glibc's defaults serve
/// many of them with a fresh `mmap` and unmap them on free, so each step page-faults its
/// activations in again: 12% of a small.toml step was kernel page-fault handling, and the step
/// runs 1.35x faster without it (docs/benchmarks.md, issue 11). The process keeps its peak heap
/// resident instead, which the next step needs anyway. A no-op outside glibc.
pub fn retain_freed_memory() {
    // SAFETY: `mallopt` only sets two of glibc's allocation thresholds.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
