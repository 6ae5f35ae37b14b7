//! The requests castle-serve accepts, parsed and checked before anything reaches the model:
//! every error is a 400 naming the field (`param`) and what would be valid.
//!
//! `POST /v1/completions` follows OpenAI's completions API; fields that would change the result
//! in ways castle does not implement (`n` > 1, `best_of` > 1, `suffix`, penalties, `logit_bias`)
//! and unknown fields are refused by name rather than ignored. `top_k` is an extension (as in
//! vLLM). `POST /tokenize` and `/detokenize` follow vLLM's tokenizer endpoints.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// The most alternatives `logprobs` may ask for per position (OpenAI's limit).
pub const MAX_LOGPROBS: usize = 20;

/// One prompt as sent: text to tokenize, or token ids (checked against the vocabulary).
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

/// A checked `POST /v1/completions` body.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    /// Echoed in the response; any name is accepted (one model is served).
    pub model: Option<String>,
    pub prompts: Vec<Prompt>,
    /// Tokens to generate per prompt; 0 only with `echo` (scoring the prompt alone).
    pub max_tokens: usize,
    /// 0 is greedy.
    pub temperature: f64,
    /// Nucleus sampling: the smallest set of most likely tokens whose probability reaches `top_p`.
    pub top_p: f64,
    /// Sample among the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// `None`: a fresh seed per request.
    pub seed: Option<u64>,
    /// Generation stops before the first of these strings, which is not returned.
    pub stop: Vec<String>,
    /// Return the prompt (and with `logprobs` its tokens' log-probabilities) before the completion.
    pub echo: bool,
    /// Alternatives per position in `top_logprobs`; `None`: no `logprobs` object.
    pub logprobs: Option<usize>,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with `usage` before `[DONE]`.
    pub stream_usage: bool,
}

#[derive(Deserialize)]
struct RawCompletion {
    model: Option<String>,
    max_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    seed: Option<u64>,
    stop: Option<Stop>,
    echo: Option<bool>,
    logprobs: Option<i64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    n: Option<i64>,
    best_of: Option<i64>,
    suffix: Option<String>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    logit_bias: Option<BTreeMap<String, f64>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// Fields of `/v1/completions`; `prompt` is read by hand (four shapes), `user` is ignored.
const COMPLETION_FIELDS: [&str; 19] = [
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "echo",
    "logprobs",
    "stream",
    "stream_options",
    "n",
    "best_of",
    "suffix",
    "user",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
];

/// Parses and checks a completions body; token ids must be below `vocab_size`.
pub fn completion(body: &[u8], vocab_size: usize) -> Result<CompletionRequest, ApiError> {
    let mut object = json_object(body, &COMPLETION_FIELDS)?;
    let prompt = object
        .remove("prompt")
        .ok_or_else(|| ApiError::invalid("prompt", "`prompt` is required"))?;
    let prompts = prompts(&prompt, vocab_size)?;
    let raw: RawCompletion = typed(object)?;
    refuse_unsupported(&raw)?;
    let max_tokens = match raw.max_tokens {
        None => 16,
        Some(n) if n < 0 => {
            return Err(ApiError::invalid(
                "max_tokens",
                format!("`max_tokens` is {n}: it must be 0 or more"),
            ))
        }
        Some(n) => n as usize,
    };
    let echo = raw.echo.unwrap_or(false);
    if max_tokens == 0 && !echo {
        return Err(ApiError::invalid(
            "max_tokens",
            "`max_tokens` is 0: that returns nothing unless `echo` is true",
        ));
    }
    let temperature = raw.temperature.unwrap_or(1.0);
    if !(temperature.is_finite() && temperature >= 0.0) {
        return Err(ApiError::invalid(
            "temperature",
            format!("`temperature` is {temperature}: it must be 0 (greedy) or more"),
        ));
    }
    let top_p = raw.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            "top_p",
            format!("`top_p` is {top_p}: it must be in (0, 1]"),
        ));
    }
    let top_k = match raw.top_k {
        None | Some(-1) => 0,
        Some(k) if k < 0 => {
            return Err(ApiError::invalid(
                "top_k",
                format!("`top_k` is {k}: it must be 0 or -1 (all tokens) or a positive count"),
            ))
        }
        Some(k) => k as usize,
    };
    let logprobs = match raw.logprobs {
        None => None,
        Some(k) if (0..=MAX_LOGPROBS as i64).contains(&k) => Some(k as usize),
        Some(k) => {
            return Err(ApiError::invalid(
                "logprobs",
                format!("`logprobs` is {k}: it must be between 0 and {MAX_LOGPROBS}"),
            ))
        }
    };
    let stop = match raw.stop {
        None => vec![],
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(list)) => list,
    };
    if let Some(i) = stop.iter().position(String::is_empty) {
        return Err(ApiError::invalid(
            format!("stop[{i}]"),
            "an empty stop string would stop before the first token",
        ));
    }
    let stream = raw.stream.unwrap_or(false);
    let stream_usage = raw
        .stream_options
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    Ok(CompletionRequest {
        model: raw.model,
        prompts,
        max_tokens,
        temperature,
        top_p,
        top_k,
        seed: raw.seed,
        stop,
        echo,
        logprobs,
        stream,
        stream_usage,
    })
}

/// Fields accepted only at the value that changes nothing.
fn refuse_unsupported(raw: &RawCompletion) -> Result<(), ApiError> {
    let unsupported = |field: &str, why: &str| {
        Err(ApiError::invalid(
            field,
            format!("`{field}` {why}; castle-serve does not support it"),
        ))
    };
    if raw.n.is_some_and(|n| n != 1) {
        return unsupported("n", "must be 1 (send the prompt again for more choices)");
    }
    if raw.best_of.is_some_and(|n| n != 1) {
        return unsupported("best_of", "must be 1");
    }
    if raw.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
        return unsupported("suffix", "asks for insertion");
    }
    for (field, value) in [
        ("presence_penalty", raw.presence_penalty),
        ("frequency_penalty", raw.frequency_penalty),
    ] {
        if value.is_some_and(|v| v != 0.0) {
            return unsupported(field, "must be 0");
        }
    }
    if raw.logit_bias.as_ref().is_some_and(|b| !b.is_empty()) {
        return unsupported("logit_bias", "must be empty");
    }
    Ok(())
}

/// `prompt`: a string, a list of strings, a list of token ids, or a list of lists of token ids.
fn prompts(value: &Value, vocab_size: usize) -> Result<Vec<Prompt>, ApiError> {
    const SHAPES: &str = "`prompt` must be a string, a list of strings, a list of token ids or a list of lists of token ids";
    match value {
        Value::String(s) => Ok(vec![Prompt::Text(s.clone())]),
        Value::Array(items) if items.is_empty() => {
            Err(ApiError::invalid("prompt", "`prompt` is an empty list"))
        }
        Value::Array(items) => match &items[0] {
            Value::String(_) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) => Ok(Prompt::Text(s.clone())),
                    _ => Err(ApiError::invalid(format!("prompt[{i}]"), SHAPES)),
                })
                .collect(),
            Value::Number(_) => Ok(vec![Prompt::Tokens(token_ids(
                items,
                "prompt".into(),
                vocab_size,
            )?)]),
            Value::Array(_) => items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let at = format!("prompt[{i}]");
                    match item {
                        Value::Array(ids) if ids.is_empty() => {
                            Err(ApiError::invalid(at, "a token prompt is an empty list"))
                        }
                        Value::Array(ids) => Ok(Prompt::Tokens(token_ids(ids, at, vocab_size)?)),
                        _ => Err(ApiError::invalid(at, SHAPES)),
                    }
                })
                .collect(),
            _ => Err(ApiError::invalid("prompt", SHAPES)),
        },
        _ => Err(ApiError::invalid("prompt", SHAPES)),
    }
}

/// Token ids below `vocab_size`; errors name the position (`prompt[2][7]`).
pub fn token_ids(items: &[Value], at: String, vocab_size: usize) -> Result<Vec<u32>, ApiError> {
    items
        .iter()
        .enumerate()
        .map(|(j, item)| match item.as_u64() {
            Some(id) if (id as usize) < vocab_size => Ok(id as u32),
            _ => Err(ApiError::invalid(
                format!("{at}[{j}]"),
                format!(
                    "token id {item} is not in the vocabulary: ids are integers from 0 to {}",
                    vocab_size - 1
                ),
            )),
        })
        .collect()
}

/// The text of a checked `POST /tokenize` body (vLLM's).
pub fn tokenize(body: &[u8]) -> Result<String, ApiError> {
    #[derive(Deserialize)]
    struct Raw {
        prompt: Option<String>,
    }
    // `add_special_tokens` is accepted and changes nothing: castle's tokenizer adds none.
    let object = json_object(body, &["model", "prompt", "add_special_tokens"])?;
    let raw: Raw = typed(object)?;
    raw.prompt
        .ok_or_else(|| ApiError::invalid("prompt", "`prompt` (a string) is required"))
}

/// A checked `POST /detokenize` body: token ids below `vocab_size`.
pub fn detokenize(body: &[u8], vocab_size: usize) -> Result<Vec<u32>, ApiError> {
    let mut object = json_object(body, &["model", "tokens"])?;
    match object.remove("tokens") {
        Some(Value::Array(ids)) => token_ids(&ids, "tokens".into(), vocab_size),
        Some(_) => Err(ApiError::invalid(
            "tokens",
            "`tokens` must be a list of token ids",
        )),
        None => Err(ApiError::invalid("tokens", "`tokens` is required")),
    }
}

/// The body as a JSON object holding only `fields`; an unknown field is refused by name.
fn json_object(body: &[u8], fields: &[&str]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            format!("the request body is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(object) = value else {
        return Err(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "the request body must be a JSON object",
        ));
    };
    if let Some(unknown) = object.keys().find(|k| !fields.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            unknown.clone(),
            format!(
                "unknown field `{unknown}`: castle-serve does not support it (fields: {})",
                fields.join(", ")
            ),
        ));
    }
    Ok(object)
}

/// The object as `T`; a wrong type names the field it sits in.
fn typed<T: DeserializeOwned>(object: Map<String, Value>) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(Value::Object(object)).map_err(|e| {
        let param = e.path().to_string();
        ApiError::invalid(param.clone(), format!("`{param}`: {}", e.into_inner()))
    })
}
