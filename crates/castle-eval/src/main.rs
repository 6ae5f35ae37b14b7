//! `castle-eval --ckpt runs/small`: perplexity, generation and zero-shot multiple choice for a
//! castle checkpoint. See the crate README.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use castle_data::InputFormat;
use castle_eval::generate::SamplingOptions;
use castle_eval::run::{evaluate, EvalRequest, GenerationRequest, PerplexityRequest};
use castle_train::config::BackendKind;
use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "Evaluate a castle checkpoint: perplexity, generation with the (UQ-)KV cache, zero-shot multiple choice",
    after_help = "Without --prompt or --tasks, reports perplexity on the run's validation split. \
                  Add --perplexity to report it as well when generating or scoring tasks."
)]
struct Args {
    /// A run directory (its latest checkpoint, or the best with --best) or a checkpoint
    /// directory (<run>/checkpoints/step-NNNNNNN).
    #[arg(long, value_name = "DIR")]
    ckpt: PathBuf,
    /// In a run directory, use the checkpoint with the lowest validation loss.
    #[arg(long)]
    best: bool,
    /// Run on this backend instead of the checkpoint's backend.kind.
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,
    /// Print one JSON object instead of a table (generated text is then not streamed).
    #[arg(long)]
    json: bool,
    /// Write the checkpoint's model to this new (or empty) directory as model.safetensors
    /// (PyTorch LLaMA-style names, [out, in] weights), config.json and tokenizer.json, then exit.
    #[arg(long, value_name = "DIR")]
    export: Option<PathBuf>,

    /// Report perplexity even when --prompt or --tasks is given.
    #[arg(long, help_heading = "Perplexity")]
    perplexity: bool,
    /// Documents to evaluate instead of the run's validation split (a file or folder in any
    /// format the data pipeline reads), tokenized with the checkpoint's tokenizer.
    #[arg(long, value_name = "PATH", help_heading = "Perplexity")]
    data: Option<PathBuf>,
    /// Format of --data.
    #[arg(long, value_enum, default_value = "auto", help_heading = "Perplexity")]
    format: InputFormat,
    /// JSON Lines field / Parquet column holding the text of --data.
    #[arg(long, default_value = "text", help_heading = "Perplexity")]
    text_field: String,
    /// Evaluate at most this many predicted tokens (default: the run's eval.tokens on the
    /// validation split, everything in --data).
    #[arg(long, value_name = "N", help_heading = "Perplexity")]
    tokens: Option<usize>,
    /// Window length (default: the run's train.seq_len).
    #[arg(long, help_heading = "Perplexity")]
    seq_len: Option<usize>,
    /// Windows per forward pass (default: the run's train.batch_size).
    #[arg(long, help_heading = "Perplexity")]
    batch_size: Option<usize>,

    /// Generate a continuation of this text.
    #[arg(long, value_name = "TEXT", help_heading = "Generation")]
    prompt: Option<String>,
    #[arg(long, default_value_t = 100, help_heading = "Generation")]
    max_new_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.8, help_heading = "Generation")]
    temperature: f64,
    /// Sample among the K most likely tokens; 0 keeps all.
    #[arg(long, default_value_t = 50, help_heading = "Generation")]
    top_k: usize,
    /// Then among the fewest most likely tokens whose probability reaches P (nucleus sampling);
    /// 1 keeps all.
    #[arg(
        long,
        default_value_t = 1.0,
        value_name = "P",
        help_heading = "Generation"
    )]
    top_p: f64,
    #[arg(long, default_value_t = 0, help_heading = "Generation")]
    seed: u64,
    /// Recompute the whole sequence for every token instead of using the cache (for comparison).
    #[arg(long, help_heading = "Generation")]
    no_cache: bool,

    /// Multiple-choice task files (JSON Lines of {"context", "choices", "gold"}).
    #[arg(long, value_name = "FILE", num_args = 1.., help_heading = "Multiple choice")]
    tasks: Vec<PathBuf>,
}

fn main() -> ExitCode {
    castle_data::cli::main_with_logging(|| run(Args::parse()))
}

fn run(args: Args) -> Result<()> {
    if let Some(out) = &args.export {
        let report = castle_eval::export::export(&args.ckpt, args.best, args.backend, out)?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            print!("{}", report.table());
        }
        return Ok(());
    }
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        anyhow::bail!("--top-p {}: must be in (0, 1]", args.top_p);
    }
    let wants_perplexity =
        args.perplexity || args.data.is_some() || (args.prompt.is_none() && args.tasks.is_empty());
    let request = EvalRequest {
        ckpt: args.ckpt,
        best: args.best,
        backend: args.backend,
        perplexity: wants_perplexity.then(|| PerplexityRequest {
            data: args.data.map(|p| (p, args.format, args.text_field)),
            tokens: args.tokens,
            seq_len: args.seq_len,
            batch_size: args.batch_size,
        }),
        generation: args.prompt.map(|prompt| GenerationRequest {
            prompt,
            max_new_tokens: args.max_new_tokens,
            sampling: SamplingOptions {
                temperature: args.temperature,
                top_k: args.top_k,
                top_p: args.top_p,
                seed: args.seed,
            },
            no_cache: args.no_cache,
            stream: !args.json,
        }),
        tasks: args.tasks,
    };
    let report = evaluate(request)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        if report.generation.is_some() {
            println!();
        }
        print!("{}", report.table());
    }
    Ok(())
}
