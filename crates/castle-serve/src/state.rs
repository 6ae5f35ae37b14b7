//! [`AppState`]: what every HTTP handler shares.

use std::sync::atomic::AtomicU64;
use std::sync::mpsc::Sender;
use std::sync::Arc;

use castle_data::Tok;

use crate::engine::Job;
use crate::model::ModelInfo;

/// What every handler shares.
pub struct AppState {
    pub jobs: Sender<Job>,
    pub tokenizer: Arc<Tok>,
    pub info: ModelInfo,
    pub vocab_size: usize,
    /// `Authorization: Bearer KEY` required on every endpoint but `/health`.
    pub api_key: Option<String>,
    /// Numbers the responses' ids.
    pub requests: AtomicU64,
    /// Unix seconds at start (`created` of the model).
    pub started: u64,
}
