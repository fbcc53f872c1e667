//! Reading and preparing a request off the async workers: the body arrives within a deadline and a
//! size limit, and the CPU-heavy part (JSON parsing, chat template, tokenization) runs on tokio's
//! blocking pool, so a few megabyte-sized prompts never stall `/health` or other clients.

use super::api::ApiError;
use super::state::AppState;
use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use std::sync::Arc;
use tokio_stream::StreamExt;

/// The body, at most `s.body_limit` bytes, within `s.body_timeout`.
pub async fn read(s: &AppState, body: Body) -> Result<Bytes, ApiError> {
    let limit = s.body_limit;
    let too_large = || {
        ApiError::bad_request(
            format!("the request body is larger than {limit} bytes"),
            None,
        )
        .status(StatusCode::PAYLOAD_TOO_LARGE)
    };
    let read = async {
        let mut stream = body.into_data_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::bad_request(format!("could not read the request body: {e}"), None)
            })?;
            if buf.len() + chunk.len() > limit {
                return Err(too_large());
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(buf))
    };
    match tokio::time::timeout(s.body_timeout, read).await {
        Ok(r) => r,
        Err(_) => Err(ApiError::bad_request(
            format!(
                "the request body did not arrive within {}s",
                s.body_timeout.as_secs()
            ),
            None,
        )
        .status(StatusCode::REQUEST_TIMEOUT)),
    }
}

/// Runs `prepare` on the blocking pool.
pub async fn off_workers<T: Send + 'static>(
    s: &Arc<AppState>,
    body: Bytes,
    prepare: impl FnOnce(&AppState, &[u8]) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let s = s.clone();
    tokio::task::spawn_blocking(move || prepare(&s, &body))
        .await
        .map_err(|e| ApiError::internal(format!("preparing the request failed: {e}")))?
}

/// Parses a JSON body.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut json = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut json).map_err(|e| {
        // The field whose value is wrong (e.g. `top_k: -1`), where it is one.
        let path = e.path().to_string();
        let inner = e.into_inner();
        match path.as_str() {
            "." | "" => ApiError::bad_request(format!("malformed JSON body: {inner}"), None),
            p => ApiError::bad_request(format!("malformed JSON body: {p}: {inner}"), None),
        }
    })
}

/// Refuses, before tokenizing it, a text that cannot fit the context: a text of `bytes` bytes has
/// at least `bytes / longest_token` tokens.
pub fn check_fits(s: &AppState, bytes: usize, param: &'static str) -> Result<(), ApiError> {
    let least_tokens = bytes / s.longest_token_bytes.max(1);
    if least_tokens > s.context {
        return Err(ApiError::bad_request(
            format!(
                "This model's maximum context length is {} tokens; the {param} ({bytes} bytes) has at least {least_tokens}",
                s.context
            ),
            Some(param),
        )
        .with_code("context_length_exceeded"));
    }
    Ok(())
}
