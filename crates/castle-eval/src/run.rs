//! The binary's work: resolve the checkpoint, load it on its backend, run the requested
//! evaluations, and report them as a table or one JSON object.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Result;
use castle_data::InputFormat;
use castle_model::TrainBackend;
use castle_model::{AttentionKind, KernelBackend};
use castle_train::backend::{dispatch, OnBackend};
use castle_train::checkpoint::Checkpoint;
use castle_train::config::BackendKind;
use castle_train::summary::human;
use serde::Serialize;

use crate::generate::{self, SamplingOptions, TextStream};
use crate::load::{resolve, Loaded};
use crate::mc::{self, ModelScorer, TaskResult};
use crate::perplexity::{self, Source};

/// Perplexity on the validation split (`data: None`) or on documents.
#[derive(Debug, Clone, Default)]
pub struct PerplexityRequest {
    /// `(path, format, text_field)` of documents to read instead of the validation split.
    pub data: Option<(PathBuf, InputFormat, String)>,
    /// Cap on predicted tokens; default `eval.tokens` on the validation split, all of `data`.
    pub tokens: Option<usize>,
    /// Window length; default `train.seq_len`.
    pub seq_len: Option<usize>,
    /// Windows per forward pass; default `train.batch_size`.
    pub batch_size: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub prompt: String,
    pub max_new_tokens: usize,
    pub sampling: SamplingOptions,
    /// Recompute the whole sequence per token instead of using the cache.
    pub no_cache: bool,
    /// Print the prompt and the continuation to stdout as it is generated.
    pub stream: bool,
}

#[derive(Debug, Clone)]
pub struct EvalRequest {
    /// A run directory or a checkpoint directory.
    pub ckpt: PathBuf,
    /// In a run directory, the checkpoint with the lowest validation loss instead of the latest.
    pub best: bool,
    /// Backend to run on instead of the checkpoint's `backend.kind`.
    pub backend: Option<BackendKind>,
    pub perplexity: Option<PerplexityRequest>,
    pub generation: Option<GenerationRequest>,
    pub tasks: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PerplexityReport {
    pub val_loss: f64,
    pub val_ppl: f64,
    /// Predicted tokens the loss is averaged over.
    pub tokens: usize,
    pub seq_len: usize,
    /// What was evaluated.
    pub data: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationReport {
    pub prompt: String,
    /// The continuation (without the prompt).
    pub text: String,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub stopped_at_eot: bool,
    /// `kv`, `uq-kv`, `uq-kv (window W)` or `none`.
    pub cache: String,
    pub prefill_s: f64,
    pub decode_s: f64,
    /// New tokens per second, prefill included.
    pub tokens_per_s: f64,
}

/// Everything one invocation measured; `--json` prints it as one object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub checkpoint: PathBuf,
    pub step: usize,
    pub attention: String,
    pub params: usize,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<PerplexityReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<GenerationReport>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskResult>,
}

/// Resolves the checkpoint and runs `request` on the chosen backend.
pub fn evaluate(request: EvalRequest) -> Result<Report> {
    let ckpt = resolve(&request.ckpt, request.best)?;
    let kind = request.backend.unwrap_or(ckpt.config.backend.kind);
    dispatch(kind, Job { ckpt, request })
}

struct Job {
    ckpt: Checkpoint,
    request: EvalRequest,
}

impl OnBackend for Job {
    type Output = Report;
    fn run<B: TrainBackend>(self, device: B::Device) -> Result<Report> {
        evaluate_on::<B::InnerBackend>(self.ckpt, &self.request, &device)
    }
}

/// [`evaluate`] on a given (inference) backend, for an already resolved checkpoint.
pub fn evaluate_on<B: KernelBackend>(
    ckpt: Checkpoint,
    request: &EvalRequest,
    device: &B::Device,
) -> Result<Report> {
    let loaded = Loaded::<B>::load(ckpt, device)?;
    let ckpt = &loaded.checkpoint;
    let mut report = Report {
        checkpoint: ckpt.dir.clone(),
        step: ckpt.state.step,
        attention: ckpt.config.model.attention.to_string(),
        params: loaded.params(),
        perplexity: None,
        generation: None,
        tasks: vec![],
    };
    if let Some(p) = &request.perplexity {
        report.perplexity = Some(run_perplexity(&loaded, p, device)?);
    }
    if let Some(g) = &request.generation {
        report.generation = Some(run_generation(&loaded, g)?);
    }
    for path in &request.tasks {
        let mut scorer = ModelScorer {
            model: &loaded.model,
            device: device.clone(),
        };
        report
            .tasks
            .push(mc::evaluate_task(path, &loaded.tokenizer, &mut scorer)?);
    }
    Ok(report)
}

fn run_perplexity<B: KernelBackend>(
    loaded: &Loaded<B>,
    request: &PerplexityRequest,
    device: &B::Device,
) -> Result<PerplexityReport> {
    let config = &loaded.checkpoint.config;
    let seq_len = request.seq_len.unwrap_or(config.train.seq_len);
    if seq_len == 0 || seq_len > config.model.max_seq_len {
        anyhow::bail!(
            "--seq-len {seq_len}: must be between 1 and the model's context of {} tokens",
            config.model.max_seq_len
        );
    }
    let source = match &request.data {
        None => Source::Validation,
        Some((path, format, text_field)) => Source::Documents {
            path,
            format: *format,
            text_field,
        },
    };
    let (windows, data) = perplexity::load_windows(
        &loaded.checkpoint,
        &loaded.tokenizer,
        &source,
        seq_len,
        request.tokens,
    )?;
    let batch = request.batch_size.unwrap_or(config.train.batch_size);
    // The trainer's own validation computation, so the two agree exactly.
    let val_loss =
        castle_train::validation::mean_loss(&loaded.model, &windows, batch.max(1), device);
    Ok(PerplexityReport {
        val_loss,
        val_ppl: val_loss.exp(),
        tokens: windows.len() * seq_len,
        seq_len,
        data,
    })
}

fn run_generation<B: KernelBackend>(
    loaded: &Loaded<B>,
    request: &GenerationRequest,
) -> Result<GenerationReport> {
    let tok = &loaded.tokenizer;
    let model_config = &loaded.checkpoint.config.model;
    let mut prompt = tok.encode(&request.prompt)?;
    if prompt.is_empty() {
        prompt.push(tok.eot_id()); // start a fresh document
    }
    let max_new_tokens = generate::fit_to_context(
        prompt.len(),
        request.max_new_tokens,
        model_config.max_seq_len,
    )?;
    let decode = |ids: &[u32]| tok.decode(ids);
    let mut stream = TextStream::new();
    let mut stream_error = None;
    let stdout = std::io::stdout();
    if request.stream {
        print!("{}", request.prompt);
        let _ = stdout.lock().flush();
    }
    let on_token = |id: u32| {
        if !request.stream {
            return;
        }
        match stream.push(id, decode) {
            Ok(text) => {
                print!("{text}");
                let _ = stdout.lock().flush();
            }
            Err(e) => stream_error = Some(e),
        }
    };
    let eot = Some(tok.eot_id());
    let (run, cache): (fn(_, _, _, _, _, _) -> _, _) = if request.no_cache {
        (generate::generate_uncached, "none".to_string())
    } else {
        let cache = match (model_config.attention, model_config.lookahead_window()) {
            (AttentionKind::Baseline, _) => "kv".to_string(),
            (_, None) => "uq-kv".to_string(),
            (_, Some(w)) => format!("uq-kv (window {w})"),
        };
        (generate::generate, cache)
    };
    let generation = run(
        &loaded.model,
        &prompt,
        max_new_tokens,
        eot,
        &request.sampling,
        on_token,
    )?;
    if let Some(e) = stream_error {
        return Err(e);
    }
    if request.stream {
        println!("{}", stream.finish(decode)?);
    }
    let report = GenerationReport {
        prompt: request.prompt.clone(),
        text: tok.decode(&generation.tokens)?,
        prompt_tokens: generation.prompt_tokens,
        new_tokens: generation.tokens.len(),
        stopped_at_eot: generation.stopped_at_eot,
        cache,
        prefill_s: generation.prefill_s,
        decode_s: generation.decode_s,
        tokens_per_s: generation.tokens_per_s(),
    };
    eprintln!(
        "generated {} tokens in {:.2} s: {:.1} tokens/s (prompt {} tokens, prefill {:.1} ms; cache: {}){}",
        report.new_tokens,
        report.prefill_s + report.decode_s,
        report.tokens_per_s,
        report.prompt_tokens,
        report.prefill_s * 1e3,
        report.cache,
        if report.stopped_at_eot { "; stopped at <|endoftext|>" } else { "" }
    );
    Ok(report)
}

impl Report {
    /// A short aligned table (the generated text itself is streamed, not repeated here).
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = vec![
            (
                "checkpoint".into(),
                format!("{} (step {})", self.checkpoint.display(), self.step),
            ),
            ("attention".into(), self.attention.clone()),
            (
                "params".into(),
                format!("{} ({})", human(self.params as f64), self.params),
            ),
        ];
        if let Some(p) = &self.perplexity {
            rows.push(("data".into(), p.data.clone()));
            rows.push((
                "tokens".into(),
                format!("{} (windows of {})", p.tokens, p.seq_len),
            ));
            rows.push(("val_loss".into(), format!("{:.4}", p.val_loss)));
            rows.push(("val_ppl".into(), format!("{:.3}", p.val_ppl)));
        }
        if let Some(g) = &self.generation {
            rows.push((
                "generated".into(),
                format!("{} tokens, cache {}", g.new_tokens, g.cache),
            ));
            rows.push(("tokens/s".into(), format!("{:.1}", g.tokens_per_s)));
        }
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut s = String::new();
        for (k, v) in &rows {
            let _ = writeln!(s, "{k:<width$}  {v}");
        }
        if !self.tasks.is_empty() {
            let w = self
                .tasks
                .iter()
                .map(|t| t.task.len())
                .max()
                .unwrap_or(0)
                .max(4);
            let _ = writeln!(
                s,
                "\n{:<w$}  {:>6}  {:>15}  {:>15}",
                "task", "items", "acc", "acc_norm"
            );
            for t in &self.tasks {
                let _ = writeln!(
                    s,
                    "{:<w$}  {:>6}  {:>6.4} ± {:.4}  {:>6.4} ± {:.4}",
                    t.task, t.items, t.acc, t.acc_stderr, t.acc_norm, t.acc_norm_stderr
                );
            }
        }
        s
    }
}
