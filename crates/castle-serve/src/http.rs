//! The HTTP server: routes, the API key, the body limit, the small endpoints, and a graceful
//! stop on SIGINT/SIGTERM (requests in flight finish first). `POST /v1/completions` is in
//! [`crate::completions`].

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::api;
use crate::error::{body, ApiError};
use crate::state::AppState;

pub fn router(state: Arc<AppState>, body_limit: usize) -> Router {
    let guarded = Router::new()
        .route("/v1/completions", post(crate::completions::completions))
        .route("/v1/models", get(models))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/tokenizer_info", get(tokenizer_info))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .merge(guarded)
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such endpoint: castle-serve serves POST /v1/completions, GET /v1/models, \
                 POST /tokenize, POST /detokenize, GET /tokenizer_info and GET /health",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "wrong method for this endpoint",
            )
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

async fn authorize(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong API key: send `Authorization: Bearer KEY` with the server's --api-key",
            )
            .into_response();
        }
    }
    next.run(request).await
}

async fn models(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let info = &state.info;
    Json(json!({"object": "list", "data": [{
        "id": info.id,
        "object": "model",
        "created": state.started,
        "owned_by": "castle",
        "attention": info.attention.to_string(),
        "params": info.params,
        "step": info.step,
        "max_model_len": info.max_seq_len,
        "source": info.source,
    }]}))
}

/// vLLM's `/tokenizer_info`, as lm-evaluation-harness's remote tokenizer reads it.
async fn tokenizer_info(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let eos = castle_data::tokenizer::EOT;
    Json(json!({
        "tokenizer_class": "castle byte-level BPE",
        "eos_token": eos,
        "eos_token_id": state.tokenizer.eot_id(),
        "bos_token": null,
        "pad_token": null,
        "model_max_length": state.info.max_seq_len,
        "vocab_size": state.vocab_size,
        "add_bos_token": false,
        "chat_template": null,
    }))
}

async fn tokenize(
    State(state): State<Arc<AppState>>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let prompt = api::tokenize(&body(raw)?)?;
    let tokens = state
        .tokenizer
        .encode(&prompt)
        .map_err(|e| ApiError::invalid("prompt", e.to_string()))?;
    Ok(Json(json!({
        "count": tokens.len(),
        "max_model_len": state.info.max_seq_len,
        "tokens": tokens,
    })))
}

async fn detokenize(
    State(state): State<Arc<AppState>>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let ids = api::detokenize(&body(raw)?, state.vocab_size)?;
    let prompt = state
        .tokenizer
        .decode(&ids)
        .map_err(|e| ApiError::invalid("tokens", e.to_string()))?;
    Ok(Json(json!({"prompt": prompt})))
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
    tracing::info!("stopping: finishing the requests in flight");
}
