//! castle-serve's overhead: the same work through HTTP and in-process, in one run.
//!
//! `cargo bench -p castle-serve --bench serve -- --ckpt runs/small` prints a Markdown table:
//! - log-likelihood requests as lm-evaluation-harness sends them (`--batch-size` token prompts
//!   per request with echo, logprobs 1, max_tokens 1; `--concurrency` clients at once), through
//!   HTTP against the same jobs handed to the engine in-process (no HTTP, no JSON);
//! - greedy generation of one prompt through HTTP against castle-eval's `generate` (what
//!   `castle-eval --prompt` runs).
//!
//! Each measurement is repeated `--reps` times, alternating in-process and HTTP; the best of
//! each is reported.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::channel;
use std::thread;
use std::time::Instant;

use anyhow::Result;
use castle_eval::generate::{generate, SamplingOptions};
use castle_model::{KernelBackend, TrainBackend};
use castle_serve::engine::{Engine, Event, Job, Sequence};
use castle_serve::model::{Served, Source};
use castle_serve::Options;
use castle_train::backend::{dispatch, OnBackend};
use castle_train::config::BackendKind;
use clap::Parser;
use serde_json::{json, Value};

#[derive(Parser, Clone)]
struct Args {
    /// A run, checkpoint or export directory.
    #[arg(long)]
    ckpt: std::path::PathBuf,
    /// Log-likelihood prompts in all.
    #[arg(long, default_value_t = 256)]
    prompts: usize,
    /// Tokens per prompt (default and most: the model's context - 1, as lm-eval's max_length cut).
    #[arg(long)]
    prompt_len: Option<usize>,
    /// Prompts per request.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Clients sending at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Tokens to generate in the generation rows (fewer if the model's context ends first).
    #[arg(long, default_value_t = 100)]
    gen_tokens: usize,
    /// Repetitions of each measurement (the best is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    #[arg(long, value_enum, default_value = "flex")]
    backend: BackendKind,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    dispatch(args.backend, Bench(args))
}

struct Bench(Args);

impl OnBackend for Bench {
    type Output = ();
    fn run<B: TrainBackend>(self, device: B::Device) -> Result<()> {
        let args = self.0;
        let served = Served::<B::InnerBackend>::load(Source::find(&args.ckpt, false)?, &device)?;
        let context = served.info.max_seq_len;
        let len = args.prompt_len.unwrap_or(context - 1).min(context - 1);
        let vocab = served.model.vocab_size() as u64;
        let prompts: Vec<Vec<u32>> = (0..args.prompts as u64)
            .map(|i| {
                (0..len as u64)
                    .map(|j| ((i * 7919 + j * 104_729) % vocab) as u32)
                    .collect()
            })
            .collect();
        let batches: Vec<&[Vec<u32>]> = prompts.chunks(args.batch_size).collect();
        let options = Options {
            api_key: None,
            body_limit: 1 << 30,
            batch_tokens: None,
        };
        let eot = served.tokenizer.eot_id();
        let prompt = served.tokenizer.encode("Fellow citizens")?;
        let new_tokens = args.gen_tokens.min(context - prompt.len());
        let (mut local, mut remote, mut gen_local, mut gen_remote) =
            (f64::MAX, f64::MAX, 0.0f64, 0.0f64);
        for rep in 0..args.reps {
            local = local.min(in_process(
                &served,
                &device,
                &batches,
                args.concurrency,
                &options,
            ));
            remote = remote.min(over_http(
                &served,
                &device,
                &options,
                args.concurrency,
                |url| {
                    for batch in batches.iter().skip(url.1).step_by(args.concurrency) {
                        let body = json!({"prompt": batch, "echo": true, "logprobs": 1,
                                      "max_tokens": 1, "temperature": 0});
                        post(&url.0, &body);
                    }
                },
            ));
            let g = generate(
                &served.model,
                &prompt,
                new_tokens,
                Some(eot),
                &SamplingOptions::default(),
                |_| {},
            )?;
            gen_local = gen_local.max(g.tokens_per_s());
            let made = AtomicU64::new(0);
            let seconds = over_http(&served, &device, &options, 1, |url| {
                let body = json!({"prompt": prompt, "max_tokens": new_tokens, "temperature": 0});
                let reply = post(&url.0, &body);
                made.store(
                    reply["usage"]["completion_tokens"].as_u64().unwrap_or(0),
                    Relaxed,
                );
            });
            gen_remote = gen_remote.max(made.load(Relaxed) as f64 / seconds);
            eprintln!(
                "rep {}/{}: log-likelihood {local:.3} s in-process, {remote:.3} s HTTP",
                rep + 1,
                args.reps
            );
        }
        let n = prompts.len() as f64;
        println!(
            "Model: {} ({}, {} parameters, context {context}), backend {}; {} log-likelihood prompts of {len} tokens, {} per request, {} clients; generation of up to {new_tokens} tokens after {} prompt tokens. Best of {}.\n",
            served.info.id, served.info.attention, served.info.params, args.backend, prompts.len(),
            args.batch_size, args.concurrency, prompt.len(), args.reps
        );
        println!("| workload | in-process | through HTTP | HTTP / in-process (time) |");
        println!("|---|---|---|---|");
        println!(
            "| log-likelihood (engine jobs vs `/v1/completions`) | {:.1} prompts/s | {:.1} prompts/s | {:.3} |",
            n / local, n / remote, remote / local
        );
        println!(
            "| greedy generation (`castle-eval`'s `generate` vs `/v1/completions`) | {gen_local:.0} tokens/s | {gen_remote:.0} tokens/s | {:.3} |",
            gen_local / gen_remote
        );
        Ok(())
    }
}

/// lm-eval's scoring request for one prompt, as the engine takes it.
fn scoring(prompt: &[u32]) -> Sequence {
    Sequence {
        prompt: prompt.to_vec(),
        max_tokens: 1,
        sampling: SamplingOptions::default(),
        logprobs: Some(1),
        echo: true,
        stop: vec![],
    }
}

/// Seconds for `clients` threads to hand `batches` straight to an engine and get every answer.
fn in_process<B: KernelBackend>(
    served: &Served<B>,
    device: &B::Device,
    batches: &[&[Vec<u32>]],
    clients: usize,
    options: &Options,
) -> f64 {
    let (jobs, queue) = channel();
    let start = Instant::now();
    thread::scope(|s| {
        for c in 0..clients {
            let jobs = jobs.clone();
            s.spawn(move || {
                for batch in batches.iter().skip(c).step_by(clients) {
                    let (events, mut answers) = tokio::sync::mpsc::unbounded_channel();
                    let sequences = batch.iter().map(|p| scoring(p)).collect();
                    jobs.send(Job { sequences, events }).unwrap();
                    let mut done = 0;
                    while done < batch.len() {
                        if let Some(Event::Done { .. }) = answers.blocking_recv() {
                            done += 1;
                        }
                    }
                }
            });
        }
        drop(jobs);
        Engine {
            model: &served.model,
            tokenizer: served.tokenizer.clone(),
            device: device.clone(),
            batch_tokens: options
                .batch_tokens_for(served.model.vocab_size(), served.info.max_seq_len),
        }
        .run(queue);
    });
    start.elapsed().as_secs_f64()
}

/// Seconds for `clients` threads running `client((url, thread index))` against a server.
fn over_http<B: KernelBackend>(
    served: &Served<B>,
    device: &B::Device,
    options: &Options,
    clients: usize,
    client: impl Fn((String, usize)) + Sync,
) -> f64 {
    let listening = castle_serve::bind("127.0.0.1", 0).unwrap();
    let url = format!("http://{}/v1/completions", listening.address);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    thread::scope(|s| {
        let timed = s.spawn(|| {
            let start = Instant::now();
            thread::scope(|inner| {
                for c in 0..clients {
                    let (client, url) = (&client, url.clone());
                    inner.spawn(move || client((url, c)));
                }
            });
            let seconds = start.elapsed().as_secs_f64();
            let _ = stop.send(());
            seconds
        });
        castle_serve::serve(served, device.clone(), options, listening, async {
            let _ = stopped.await;
        })
        .unwrap();
        timed.join().unwrap()
    })
}

fn post(url: &str, body: &Value) -> Value {
    ureq::post(url)
        .send_json(body.clone())
        .unwrap()
        .into_json()
        .unwrap()
}
