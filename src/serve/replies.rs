//! A request's engine events turned into what the client gets: one JSON reply (collected) or a
//! stream of server-sent events ending in `[DONE]`, either cut short by a shutdown; and OpenAI's
//! log-probability shapes.

use super::api::*;
use super::engine::{GenEvent, TokenLogprob};
use crate::infer::FinishReason;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::convert::Infallible;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio_stream::wrappers::UnboundedReceiverStream;

/// Everything a request generated, for the non-streaming responses.
pub struct Collected {
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    pub finish: FinishReason,
    pub usage: Usage,
}

pub async fn collect(
    mut rx: UnboundedReceiver<GenEvent>,
    mut cut: tokio::sync::watch::Receiver<bool>,
) -> Result<Collected, ApiError> {
    let (mut text, mut logprobs) = (String::new(), Vec::new());
    loop {
        let ev = match next_event(&mut rx, &mut cut).await {
            Next::Event(ev) => ev,
            Next::Ended => break,
            Next::Cut => {
                return Err(ApiError::internal(SHUTDOWN_CUT).status(StatusCode::SERVICE_UNAVAILABLE))
            }
        };
        match ev {
            GenEvent::Text {
                text: t,
                logprobs: l,
            } => {
                text.push_str(&t);
                logprobs.extend(l);
            }
            GenEvent::Done {
                finish_reason,
                prompt_tokens,
                completion_tokens,
            } => {
                return Ok(Collected {
                    text,
                    logprobs,
                    finish: finish_reason,
                    usage: Usage::new(prompt_tokens, completion_tokens),
                })
            }
            GenEvent::Error(e) => return Err(ApiError::internal(e)),
        }
    }
    Err(ApiError::internal("the generation ended without a result"))
}

pub fn chat_logprobs(l: &[TokenLogprob]) -> Value {
    let entry = |t: &str, lp: f32| json!({"token": t, "logprob": lp, "bytes": t.as_bytes()});
    json!({"content": l.iter().map(|x| {
        let mut e = entry(&x.token, x.logprob);
        e["top_logprobs"] = x.top.iter().map(|(t, lp)| entry(t, *lp)).collect();
        e
    }).collect::<Vec<_>>()})
}

pub fn completion_logprobs(l: &[TokenLogprob], offset: usize) -> Value {
    let mut pos = offset;
    let offsets: Vec<usize> = l
        .iter()
        .map(|x| {
            let p = pos;
            pos += x.token.len();
            p
        })
        .collect();
    json!({
        "tokens": l.iter().map(|x| &x.token).collect::<Vec<_>>(),
        "token_logprobs": l.iter().map(|x| x.logprob).collect::<Vec<_>>(),
        "top_logprobs": l.iter().map(|x| x.top.iter().map(|(t, lp)| (t.clone(), json!(lp))).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}

const SHUTDOWN_CUT: &str = "the server is shutting down; this reply was cut short";

enum Next {
    Event(GenEvent),
    /// The engine dropped the request's channel.
    Ended,
    /// A shutdown's grace period is over.
    Cut,
}

/// The next engine event of a reply, unless the reply ended or a shutdown cuts it first.
async fn next_event(
    rx: &mut UnboundedReceiver<GenEvent>,
    cut: &mut tokio::sync::watch::Receiver<bool>,
) -> Next {
    tokio::select! {
        ev = rx.recv() => ev.map_or(Next::Ended, Next::Event),
        _ = cut.wait_for(|&c| c) => Next::Cut,
    }
}

/// Server-sent events from a task that turns engine events into JSON chunks, ending with [DONE]
/// (also when a shutdown cuts the reply: then an error chunk says so first).
pub fn sse(
    mut rx: UnboundedReceiver<GenEvent>,
    mut cut: tokio::sync::watch::Receiver<bool>,
    mut chunk: impl FnMut(GenEvent) -> Vec<Value> + Send + 'static,
) -> Response {
    let (tx, out) = unbounded_channel::<Result<Event, Infallible>>();
    tokio::spawn(async move {
        loop {
            let ev = match next_event(&mut rx, &mut cut).await {
                Next::Event(ev) => ev,
                Next::Ended => break,
                Next::Cut => {
                    let chunk = error_chunk(SHUTDOWN_CUT.into()).to_string();
                    let _ = tx.send(Ok(Event::default().data(chunk)));
                    break;
                }
            };
            let last = matches!(ev, GenEvent::Done { .. } | GenEvent::Error(_));
            for v in chunk(ev) {
                if tx.send(Ok(Event::default().data(v.to_string()))).is_err() {
                    return; // client gone: dropping rx tells the engine to stop
                }
            }
            if last {
                break;
            }
        }
        let _ = tx.send(Ok(Event::default().data("[DONE]")));
    });
    Sse::new(UnboundedReceiverStream::new(out))
        .keep_alive(KeepAlive::default())
        .into_response()
}

pub fn error_chunk(e: String) -> Value {
    json!({"error": {"message": e, "type": "server_error", "param": null, "code": null}})
}
