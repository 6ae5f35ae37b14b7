//! `castle-serve --ckpt runs/small`: serves a castle checkpoint or export over OpenAI's
//! completions API and vLLM's tokenizer endpoints (see the crate docs and the README).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use castle_model::TrainBackend;
use castle_serve::http::shutdown_signal;
use castle_serve::model::{Served, Source};
use castle_serve::Options;
use castle_train::backend::{dispatch, OnBackend};
use castle_train::config::BackendKind;
use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "Serve a castle checkpoint over OpenAI's completions API (lm-evaluation-harness's local-completions)"
)]
struct Args {
    /// A run directory (its latest checkpoint, or the best with --best), a checkpoint directory
    /// (<run>/checkpoints/step-NNNNNNN), or a safetensors export directory (castle-eval --export).
    #[arg(long, value_name = "DIR")]
    ckpt: PathBuf,
    /// In a run directory, serve the checkpoint with the lowest validation loss.
    #[arg(long)]
    best: bool,
    /// Address to listen on; anything but 127.0.0.1 opens the server to the network.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Run on this backend instead of the checkpoint's backend.kind (flex for an export).
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,
    /// Require `Authorization: Bearer KEY` on every endpoint but /health (default: the
    /// CASTLE_API_KEY environment variable; none when unset).
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// Refuse request bodies over this many bytes with 413.
    #[arg(long, default_value_t = 16 << 20, value_name = "BYTES")]
    max_body_bytes: usize,
    /// The most positions (prompts x padded length) one scoring forward pass holds (default:
    /// as many as keep its logits near 256 MiB, at least the model's context).
    #[arg(long, value_name = "N")]
    max_batch_tokens: Option<usize>,
}

fn main() -> ExitCode {
    castle_data::cli::main_with_logging(|| run(Args::parse()))
}

fn run(args: Args) -> Result<()> {
    let source = Source::find(&args.ckpt, args.best)?;
    let kind = args.backend.unwrap_or(source.default_backend());
    let options = Options {
        api_key: args
            .api_key
            .or_else(|| std::env::var("CASTLE_API_KEY").ok())
            .filter(|k| !k.is_empty()),
        body_limit: args.max_body_bytes,
        batch_tokens: args.max_batch_tokens,
    };
    let (host, port) = (args.host, args.port);
    dispatch(
        kind,
        Job {
            source,
            host,
            port,
            options,
        },
    )
}

struct Job {
    source: Source,
    host: String,
    port: u16,
    options: Options,
}

impl OnBackend for Job {
    type Output = ();
    fn run<B: TrainBackend>(self, device: B::Device) -> Result<()> {
        let served = Served::<B::InnerBackend>::load(self.source, &device)?;
        let listening = castle_serve::bind(&self.host, self.port)?;
        println!("castle-serve: listening on http://{}", listening.address);
        std::io::stdout().flush()?;
        castle_serve::serve(&served, device, &self.options, listening, shutdown_signal())
    }
}
