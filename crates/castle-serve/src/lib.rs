//! castle-serve: an OpenAI-compatible completions server for castle checkpoints, with vLLM's
//! tokenizer endpoints, so that lm-evaluation-harness's `local-completions` model (and any
//! OpenAI client) can evaluate and use a CASTLE or baseline model.
//!
//! - [`model`]: what is served (a checkpoint or a safetensors export) and its tokenizer;
//! - [`api`]: the requests, checked field by field; [`error`]: OpenAI's error object;
//! - [`engine`]: the thread that owns the model, batching what is queued;
//! - [`logprobs`]: a position's log-probabilities and how tokens are written;
//! - [`http`]: routes, API key, body limit, shutdown; [`state`]: what the handlers share;
//!   [`completions`]: `/v1/completions`.

pub mod api;
pub mod completions;
pub mod engine;
pub mod error;
pub mod http;
pub mod logprobs;
pub mod model;
pub mod state;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};
use castle_model::KernelBackend;

use crate::engine::Engine;
use crate::http::router;
use crate::model::Served;
use crate::state::AppState;

/// Who may call the server and how it batches.
#[derive(Debug, Clone)]
pub struct Options {
    pub api_key: Option<String>,
    /// Request bodies over this many bytes get a 413.
    pub body_limit: usize,
    /// The most positions (prompts x padded length) one scoring forward pass holds; `None`:
    /// as many as keep its logits near 256 MiB, and at least one full context.
    pub batch_tokens: Option<usize>,
}

impl Options {
    /// [`Options::batch_tokens`] for a model of this vocabulary and context.
    pub fn batch_tokens_for(&self, vocab_size: usize, context: usize) -> usize {
        self.batch_tokens
            .unwrap_or((1 << 26) / vocab_size)
            .max(context)
    }
}

/// A bound listening socket, before serving.
pub struct Listening {
    listener: TcpListener,
    pub address: SocketAddr,
}

/// Binds `host:port` (port 0: any free port).
pub fn bind(host: &str, port: u16) -> Result<Listening> {
    let listener = TcpListener::bind((host, port)).with_context(|| {
        format!("cannot listen on {host}:{port}: pick another --port (or --host)")
    })?;
    listener.set_nonblocking(true)?;
    let address = listener.local_addr()?;
    Ok(Listening { listener, address })
}

/// Serves `served` on `listening` until `shutdown` resolves (the binary: SIGINT or SIGTERM,
/// [`http::shutdown_signal`]), then finishes the requests in flight and returns.
pub fn serve<B: KernelBackend>(
    served: &Served<B>,
    device: B::Device,
    options: &Options,
    listening: Listening,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let tokenizer = served.tokenizer.clone();
    let vocab_size = served.model.vocab_size();
    let batch_tokens = options.batch_tokens_for(vocab_size, served.info.max_seq_len);
    let (jobs, queue) = std::sync::mpsc::channel();
    let state = Arc::new(AppState {
        jobs,
        tokenizer: tokenizer.clone(),
        info: served.info.clone(),
        vocab_size,
        api_key: options.api_key.clone(),
        requests: AtomicU64::new(0),
        started: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    });
    let app = router(state, options.body_limit);
    let listener = listening.listener;
    let server = std::thread::Builder::new()
        .name("http".into())
        .spawn(move || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
            })?;
            Ok(())
        })?;
    let info = &served.info;
    tracing::info!(
        model = %info.id,
        attention = %info.attention,
        params = info.params,
        context = info.max_seq_len,
        batch_tokens,
        "serving {} on http://{}",
        info.source.display(),
        listening.address
    );
    Engine {
        model: &served.model,
        tokenizer,
        device,
        batch_tokens,
    }
    .run(queue);
    server
        .join()
        .map_err(|_| anyhow!("the HTTP thread panicked"))??;
    tracing::info!("stopped");
    Ok(())
}
