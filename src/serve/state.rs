//! What every request handler shares: the engine, the tokenizer and chat format, the model's
//! name and context, the key, the limits, the queue and the shutdown signal; and reply ids.

use super::admission::Admission;
use super::engine::Engine;
use crate::chat_template::ChatFormat;
use crate::tokenizer::Tokenizer;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub struct AppState {
    pub engine: Engine,
    pub tok: Arc<Tokenizer>,
    pub format: Option<ChatFormat>,
    pub model_id: String,
    /// What a plain completion stops at (`infer::completion_stop_ids`).
    pub completion_stop_ids: Vec<u32>,
    pub context: usize,
    pub api_key: Option<String>,
    pub created: u64,
    pub body_limit: usize,
    pub body_timeout: std::time::Duration,
    /// Bytes of the longest token: a text of n bytes has at least n / this many tokens.
    pub longest_token_bytes: usize,
    pub admission: Arc<Admission>,
    /// Turns `true` when a shutdown's grace period is over: running replies end then.
    pub cut: tokio::sync::watch::Receiver<bool>,
}

pub static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub fn new_id(prefix: &str) -> String {
    format!(
        "{prefix}-{:x}{:06x}",
        std::process::id(),
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
