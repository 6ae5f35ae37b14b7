//! `castle-bench`: see the library docs. Prints a Markdown report; with `--write` it also puts it
//! into `docs/benchmarks.md` (or the given file) between the generated-section markers, keeping
//! the rest of the file.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use castle_bench::{alloc, markdown, run, BackendKind, Options};
use clap::Parser;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

const BEGIN: &str = "<!-- BEGIN castle-bench output -->";
const END: &str = "<!-- END castle-bench output -->";

#[derive(Parser, Debug)]
#[command(about = "CASTLE vs baseline attention, training step and decoding benchmarks")]
struct Args {
    /// A small smoke run (tiny sizes, one repetition) that finishes in seconds.
    #[arg(long)]
    quick: bool,
    /// Tables to run, comma-separated: 1 (attention), 2 (training step), 3 (decoding).
    #[arg(long, value_delimiter = ',')]
    tables: Option<Vec<u8>>,
    /// Backends for tables 1-2, comma-separated (flex, ndarray; cuda or wgpu in a build with that
    /// cargo feature); the first also runs table 3.
    #[arg(long, value_enum, value_delimiter = ',')]
    backends: Option<Vec<BackendKind>>,
    /// Sequence lengths of table 1.
    #[arg(long, value_delimiter = ',')]
    lengths: Option<Vec<usize>>,
    /// Timed repetitions per variant in table 1.
    #[arg(long)]
    reps: Option<usize>,
    /// Block sizes tried for the fused kernels.
    #[arg(long, value_delimiter = ',')]
    blocks: Option<Vec<usize>>,
    /// Block size at which to also time the tensor-op chunked form; 0 skips it.
    #[arg(long)]
    chunked_block: Option<usize>,
    /// Side of the square matrix product that measures the matmul rate (MFU's denominator);
    /// a GPU needs a larger one than the default 1024 to reach its rate.
    #[arg(long)]
    matmul_size: Option<usize>,
    /// Timed training steps per model in table 2.
    #[arg(long)]
    train_reps: Option<usize>,
    /// Context lengths of table 3.
    #[arg(long, value_delimiter = ',')]
    decode_lengths: Option<Vec<usize>>,
    /// Timed decode steps per context length in table 3.
    #[arg(long)]
    decode_steps: Option<usize>,
    /// Run the GPU backends (cuda, wgpu) without burn's `Fusion` wrapper, one GPU kernel per op
    /// (`backend.fusion = false`).
    #[arg(long)]
    no_fusion: bool,
    /// Also write the report into this file, between its generated-section markers (the rest of
    /// the file is kept). Without a value: docs/benchmarks.md.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "docs/benchmarks.md")]
    write: Option<PathBuf>,
}

fn main() -> Result<()> {
    castle_data::cli::retain_freed_memory();
    let args = Args::parse();
    let mut opts = if args.quick {
        Options::quick()
    } else {
        Options::full()
    };
    if let Some(t) = args.tables {
        opts.tables = t;
    }
    if let Some(b) = args.backends {
        opts.backends = b;
    }
    if let Some(l) = args.lengths {
        opts.lengths = l;
    }
    if let Some(r) = args.reps {
        opts.reps = r;
    }
    if let Some(b) = args.blocks {
        opts.blocks = b;
    }
    if let Some(b) = args.chunked_block {
        opts.chunked_block = (b > 0).then_some(b);
    }
    if let Some(n) = args.matmul_size {
        opts.matmul_size = n;
    }
    if let Some(r) = args.train_reps {
        opts.train_reps = r;
    }
    if let Some(l) = args.decode_lengths {
        opts.decode_lengths = l;
    }
    opts.fusion = !args.no_fusion;
    if let Some(s) = args.decode_steps {
        opts.decode_steps = s;
    }
    if opts.reps == 0 || opts.train_reps == 0 || opts.decode_steps == 0 {
        bail!("repetitions must be at least 1");
    }
    if opts.decode_lengths.contains(&0) {
        bail!("--decode-lengths: every context length must be at least 1 (a prompt of one token)");
    }

    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let report = run(&opts, &mut |line| eprintln!("{line}"))?;
    let body = format!(
        "Command: `{command}` (release build). Machine: {cores} cores{}. \
         Wall time of the run: {:.0} s.\n\n{}",
        if alloc::installed() {
            ""
        } else {
            " (counting allocator not installed: memory reads 0)"
        },
        report.seconds,
        markdown(&report, &opts)
    );
    println!("{body}");
    if let Some(path) = &args.write {
        write_section(path, &body)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Replaces the generated section of `path` (creating the file if needed), keeping the rest.
fn write_section(path: &Path, body: &str) -> Result<()> {
    let section = format!("{BEGIN}\n{body}\n{END}");
    let text = match std::fs::read_to_string(path) {
        Ok(old) => match (old.find(BEGIN), old.find(END)) {
            (Some(a), Some(b)) if a < b => {
                format!("{}{section}{}", &old[..a], &old[b + END.len()..])
            }
            _ => format!("{old}\n{section}\n"),
        },
        Err(_) => format!("# Benchmarks\n\n{section}\n"),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    castle_data::write_atomic(path, text.as_bytes())
}
