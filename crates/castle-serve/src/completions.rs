//! `POST /v1/completions`: check the request, tokenize its prompts, queue them on the engine,
//! and answer with OpenAI's completion object, or with server-sent events as the tokens come
//! (`stream`), ending with `data: [DONE]`.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use castle_eval::generate::SamplingOptions;
use futures::StreamExt;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::api::{self, CompletionRequest, Prompt};
use crate::engine::{Event, Finish, Job, Sequence};
use crate::error::{body, ApiError};
use crate::logprobs::{char_count, token_text, Scored};
use crate::state::AppState;

pub async fn completions(
    State(state): State<Arc<AppState>>,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    match start(&state, raw) {
        Ok((request, prompt_tokens, events)) => {
            let mut reply = Reply::new(&state, &request, prompt_tokens);
            if request.stream {
                stream(reply, events).into_response()
            } else {
                match reply.collect(events).await {
                    Ok(()) => Json(reply.object()).into_response(),
                    Err(e) => e.into_response(),
                }
            }
        }
        Err(e) => e.into_response(),
    }
}

/// The checked request, its prompt tokens in all, and where the engine's answers arrive.
type Started = (CompletionRequest, usize, UnboundedReceiver<Event>);

/// Checks and tokenizes the request and queues it on the engine.
fn start(state: &AppState, raw: Result<Bytes, BytesRejection>) -> Result<Started, ApiError> {
    let request = api::completion(&body(raw)?, state.vocab_size)?;
    let several = request.prompts.len() > 1;
    let at = |i: usize| {
        if several {
            format!("prompt[{i}]")
        } else {
            "prompt".into()
        }
    };
    let mut prompts = Vec::with_capacity(request.prompts.len());
    for (i, prompt) in request.prompts.iter().enumerate() {
        let tokens = match prompt {
            Prompt::Tokens(ids) => ids.clone(),
            // An empty prompt is the end-of-text token, as OpenAI's API reads it.
            Prompt::Text(text) if text.is_empty() => vec![state.tokenizer.eot_id()],
            Prompt::Text(text) => state
                .tokenizer
                .encode(text)
                .map_err(|e| ApiError::invalid(at(i), e.to_string()))?,
        };
        // The last new token is never fed back: a prompt of n tokens and m new ones reads
        // n + m - 1 positions.
        let positions = tokens.len() + request.max_tokens.max(1) - 1;
        let context = state.info.max_seq_len;
        if positions > context {
            return Err(ApiError::invalid(
                at(i),
                format!(
                    "{} is {} tokens and max_tokens is {}: that needs {positions} positions, more \
                     than the model's context of {context} tokens; shorten the prompt or lower max_tokens",
                    at(i),
                    tokens.len(),
                    request.max_tokens
                ),
            ));
        }
        prompts.push(tokens);
    }
    let seed = request.seed.unwrap_or_else(rand::random);
    let prompt_tokens = prompts.iter().map(Vec::len).sum();
    let sequences = prompts
        .into_iter()
        .map(|prompt| Sequence {
            prompt,
            max_tokens: request.max_tokens,
            sampling: SamplingOptions {
                temperature: request.temperature,
                top_k: request.top_k,
                top_p: request.top_p,
                seed,
            },
            logprobs: request.logprobs,
            echo: request.echo,
            stop: request.stop.clone(),
        })
        .collect();
    let (events, receiver) = unbounded_channel();
    state
        .jobs
        .send(Job { sequences, events })
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping"))?;
    Ok((request, prompt_tokens, receiver))
}

/// One prompt's answer as it builds up.
struct Choice {
    /// The prompt (with `echo`), then the completion.
    text: String,
    /// Token, log-probabilities, for every position `logprobs` reports (gathered for the whole
    /// object; a stream sends them as they come).
    positions: Vec<(u32, Option<Scored>)>,
    /// Where the next reported token starts in `text`, in characters.
    offset: usize,
    finish: Option<Finish>,
    completion_tokens: usize,
}

/// The response being built: one [`Choice`] per prompt.
struct Reply {
    id: String,
    created: u64,
    model: Value,
    tokenizer: Arc<castle_data::Tok>,
    logprobs: bool,
    stream_usage: bool,
    prompt_tokens: usize,
    choices: Vec<Choice>,
}

impl Reply {
    fn new(state: &AppState, request: &CompletionRequest, prompt_tokens: usize) -> Self {
        let n = state.requests.fetch_add(1, Ordering::Relaxed);
        let tokenizer = state.tokenizer.clone();
        let choices = request
            .prompts
            .iter()
            .map(|prompt| {
                let prompt_text = match prompt {
                    Prompt::Text(text) => text.clone(),
                    Prompt::Tokens(ids) => tokenizer.decode(ids).unwrap_or_default(),
                };
                Choice {
                    offset: if request.echo {
                        0
                    } else {
                        prompt_text.chars().count()
                    },
                    text: if request.echo {
                        prompt_text
                    } else {
                        String::new()
                    },
                    positions: vec![],
                    finish: None,
                    completion_tokens: 0,
                }
            })
            .collect();
        Self {
            id: format!("cmpl-castle-{n}"),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model: request
                .model
                .clone()
                .map_or(Value::String(state.info.id.clone()), Value::String),
            tokenizer,
            logprobs: request.logprobs.is_some(),
            stream_usage: request.stream_usage,
            prompt_tokens,
            choices,
        }
    }

    /// Applies one engine event to its choice's text and counts; returns the choice index, the
    /// text and the positions (token, log-probabilities) it added.
    fn apply(&mut self, event: Event) -> (usize, String, Vec<(u32, Option<Scored>)>) {
        match event {
            Event::Prompt { index, positions } => (index, String::new(), positions),
            Event::Token {
                index,
                token,
                scored,
                text,
            } => {
                let choice = &mut self.choices[index];
                choice.completion_tokens += 1;
                choice.text.push_str(&text);
                (index, text, vec![(token, scored)])
            }
            Event::Done {
                index,
                finish,
                text,
            } => {
                let choice = &mut self.choices[index];
                choice.text.push_str(&text);
                choice.finish = Some(finish);
                (index, text, vec![])
            }
        }
    }

    fn finished(&self) -> bool {
        self.choices.iter().all(|c| c.finish.is_some())
    }

    /// Waits for every choice to finish.
    async fn collect(&mut self, mut events: UnboundedReceiver<Event>) -> Result<(), ApiError> {
        while !self.finished() {
            let event = events.recv().await.ok_or_else(stopped)?;
            let (index, _, positions) = self.apply(event);
            if self.logprobs {
                self.choices[index].positions.extend(positions);
            }
        }
        Ok(())
    }

    /// OpenAI's `logprobs` object for `positions` of choice `index`, advancing its offset.
    fn logprobs_object(&mut self, index: usize, positions: &[(u32, Option<Scored>)]) -> Value {
        let choice = &mut self.choices[index];
        let (mut tokens, mut token_logprobs, mut top_logprobs, mut offsets) =
            (vec![], vec![], vec![], vec![]);
        for (token, scored) in positions {
            let bytes = self.tokenizer.token_bytes(*token);
            let text = token_text(&bytes);
            offsets.push(choice.offset);
            choice.offset += char_count(&bytes);
            token_logprobs.push(scored.as_ref().map_or(Value::Null, |s| json!(s.logprob)));
            top_logprobs.push(scored.as_ref().map_or(Value::Null, |s| {
                let mut top = Map::new();
                for (id, logprob) in &s.top {
                    top.insert(token_text(&self.tokenizer.token_bytes(*id)), json!(logprob));
                }
                top.insert(text.clone(), json!(s.logprob));
                Value::Object(top)
            }));
            tokens.push(text);
        }
        json!({
            "tokens": tokens,
            "token_logprobs": token_logprobs,
            "top_logprobs": top_logprobs,
            "text_offset": offsets,
        })
    }

    fn usage(&self) -> Value {
        let completion: usize = self.choices.iter().map(|c| c.completion_tokens).sum();
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        })
    }

    /// The whole completion object.
    fn object(&mut self) -> Value {
        let choices: Vec<Value> = (0..self.choices.len())
            .map(|i| {
                let positions = std::mem::take(&mut self.choices[i].positions);
                let logprobs = if self.logprobs {
                    self.logprobs_object(i, &positions)
                } else {
                    Value::Null
                };
                let c = &self.choices[i];
                json!({
                    "index": i,
                    "text": c.text,
                    "logprobs": logprobs,
                    "finish_reason": c.finish.map(Finish::as_str),
                })
            })
            .collect();
        json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": self.usage(),
        })
    }

    /// One streamed chunk for choice `index`.
    fn chunk(&self, index: usize, text: String, logprobs: Value, finish: Option<Finish>) -> Value {
        json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": index,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": finish.map(Finish::as_str),
            }],
        })
    }
}

fn stopped() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the engine stopped before the request finished",
    )
}

/// Server-sent events: with `echo` a first chunk per choice holding the prompt, then one chunk
/// per token and one with `finish_reason` per choice, `usage` if asked for, and `[DONE]`.
fn stream(
    mut reply: Reply,
    events: UnboundedReceiver<Event>,
) -> Sse<impl futures::Stream<Item = Result<SseEvent, Infallible>>> {
    let data = |value: Value| SseEvent::default().data(value.to_string());
    let mut opening = vec![];
    for i in 0..reply.choices.len() {
        let text = std::mem::take(&mut reply.choices[i].text);
        if !text.is_empty() {
            opening.push(data(reply.chunk(i, text, Value::Null, None)));
        }
    }
    let rest = futures::stream::unfold(Some((reply, events)), move |state| async move {
        let (mut reply, mut events) = state?;
        if reply.finished() {
            let mut last = vec![];
            if reply.stream_usage {
                let mut usage = reply.chunk(0, String::new(), Value::Null, None);
                usage["choices"] = json!([]);
                usage["usage"] = reply.usage();
                last.push(data(usage));
            }
            last.push(SseEvent::default().data("[DONE]"));
            return Some((last, None));
        }
        let out = match events.recv().await {
            Some(event) => {
                let (index, text, positions) = reply.apply(event);
                let finish = reply.choices[index].finish;
                let logprobs = if reply.logprobs && !positions.is_empty() {
                    reply.logprobs_object(index, &positions)
                } else {
                    Value::Null
                };
                if text.is_empty() && logprobs.is_null() && finish.is_none() {
                    vec![]
                } else {
                    vec![data(reply.chunk(index, text, logprobs, finish))]
                }
            }
            None => {
                let error = SseEvent::default().data(stopped().body().to_string());
                return Some((vec![error], None));
            }
        };
        Some((out, Some((reply, events))))
    });
    let all = futures::stream::iter(vec![opening])
        .chain(rest)
        .flat_map(|events| futures::stream::iter(events.into_iter().map(Ok)));
    Sse::new(all)
}
