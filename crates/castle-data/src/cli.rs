//! The shared shape of every castle binary: `tracing` to stderr (`RUST_LOG`, default `info`;
//! colours only on a terminal), and an error printed as `error: ...` with exit code 1.

use std::io::IsTerminal;
use std::process::ExitCode;

pub fn main_with_logging(run: impl FnOnce() -> anyhow::Result<()>) -> ExitCode {
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
