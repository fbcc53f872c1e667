//! HTTP handlers: `/v1/models`, `/v1/completions`, `/v1/chat/completions` (JSON or server-sent
//! events), `/health`, and the web chat page at `/`.

use super::admission::Ticket;
use super::api::*;
use super::engine::{GenEvent, GenRequest};
use super::replies::{chat_logprobs, collect, completion_logprobs, error_chunk, sse};
use super::request_body::{check_fits, off_workers, parse};
use super::state::AppState;
use super::state::{new_id, now, NEXT_ID};
use crate::chat_template::Message;
use crate::infer::{GenerateOptions, SamplingParams};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

type Shared = State<Arc<AppState>>;

pub async fn index() -> Html<&'static str> {
    Html(include_str!("chat.html"))
}

pub async fn health(State(s): Shared) -> Json<Value> {
    Json(json!({"status": "ok", "model": s.model_id}))
}

/// Unknown routes: a 404 in the API's error shape (not an empty body).
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::bad_request(
        format!("no route {}; this server has /v1/models, /v1/completions, /v1/chat/completions, /health and /", uri.path()),
        None,
    )
    .status(StatusCode::NOT_FOUND)
}

fn check_auth(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &s.api_key else { return Ok(()) };
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(key.as_str()) {
        Ok(())
    } else {
        Err(ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "Incorrect API key provided. Pass it as 'Authorization: Bearer KEY'.".into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
            retry_after: None,
        })
    }
}

pub async fn models(State(s): Shared, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    check_auth(&s, &headers)?;
    Ok(Json(json!({
        "object": "list",
        "data": [{"id": s.model_id, "object": "model", "created": s.created, "owned_by": "chatforge"}],
    })))
}

fn check_model(s: &AppState, model: &Option<String>) -> Result<(), ApiError> {
    match model {
        Some(m) if m != &s.model_id => Err(ApiError::bad_request(
            format!(
                "The model '{m}' does not exist; this server serves '{}'",
                s.model_id
            ),
            Some("model"),
        )
        .status(StatusCode::NOT_FOUND)
        .with_code("model_not_found")),
        _ => Ok(()),
    }
}

fn sampling(k: &SamplingFields) -> Result<SamplingParams, ApiError> {
    let defaults = SamplingParams::default();
    let temperature = k.temperature.unwrap_or(defaults.temperature);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad_request(
            "temperature must be between 0 and 2",
            Some("temperature"),
        ));
    }
    let top_p = k.top_p.unwrap_or(defaults.top_p);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad_request(
            "top_p must be in (0, 1]",
            Some("top_p"),
        ));
    }
    let top_k = match k.top_k {
        None => defaults.top_k,
        Some(n) => usize::try_from(n).map_err(|_| {
            ApiError::bad_request("top_k must be 0 (all tokens) or more", Some("top_k"))
        })?,
    };
    if k.n.unwrap_or(1) != 1 {
        return Err(ApiError::bad_request("only n = 1 is supported", Some("n")));
    }
    let seed = k
        .seed
        .unwrap_or_else(|| NEXT_ID.fetch_add(1, Ordering::Relaxed) ^ now());
    let params = SamplingParams {
        temperature,
        top_p,
        top_k,
        min_p: k.min_p.unwrap_or(defaults.min_p),
        repetition_penalty: k.repetition_penalty.unwrap_or(defaults.repetition_penalty),
        seed,
    };
    params.validate().map_err(|(field, must)| {
        ApiError::bad_request(format!("{field} must be {must}"), Some(field))
    })?;
    Ok(params)
}

/// The options a request decodes with: its sampling, the model's stop tokens (none with
/// `ignore_eos`) and the request's stop strings; the budget is set by [`submit`].
fn generate_options(
    sampling: SamplingParams,
    stop_ids: Vec<u32>,
    fields: &SamplingFields,
) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: 0,
        sampling,
        stop_ids: if fields.ignore_eos {
            Vec::new()
        } else {
            stop_ids
        },
        stop_strings: fields
            .stop
            .clone()
            .map(StringOrList::into_vec)
            .unwrap_or_default(),
    }
}

/// Checks the budget against the context and hands the request to the engine.
fn submit(
    s: &AppState,
    prompt: Vec<u32>,
    max_tokens: Option<usize>,
    default_max: usize,
    mut opts: GenerateOptions,
    logprobs: Option<usize>,
    ticket: Ticket,
) -> Result<(UnboundedReceiver<GenEvent>, usize), ApiError> {
    if prompt.is_empty() {
        return Err(ApiError::bad_request("the prompt is empty", Some("prompt")));
    }
    let room = crate::infer::token_budget(usize::MAX, prompt.len(), s.context);
    let max = max_tokens.unwrap_or(default_max.min(room));
    if max > room || max == 0 {
        return Err(ApiError::bad_request(
            format!(
                "This model's maximum context length is {} tokens; the prompt has {} and max_tokens asks for {max} more",
                s.context,
                prompt.len()
            ),
            Some("max_tokens"),
        )
        .with_code("context_length_exceeded"));
    }
    opts.max_new_tokens = max;
    let (tx, rx) = unbounded_channel();
    let n = prompt.len();
    s.engine
        .submit(GenRequest {
            prompt_ids: prompt,
            opts,
            logprobs,
            events: tx,
            ticket,
        })
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok((rx, n))
}

/// What every generation request goes through before the engine: the key, a place in the queue
/// (held until the reply ends), the body, and `prepare` on the blocking pool.
async fn accept<T: Send + 'static>(
    s: &Arc<AppState>,
    headers: &HeaderMap,
    body: Body,
    prepare: fn(&AppState, &[u8]) -> Result<T, ApiError>,
) -> Result<(Ticket, T), ApiError> {
    check_auth(s, headers)?;
    let ticket = s.admission.admit()?;
    let body = super::request_body::read(s, body).await?;
    Ok((ticket, off_workers(s, body, prepare).await?))
}

/// A chat request parsed, rendered and tokenized (on the blocking pool).
fn prepare_chat(
    s: &AppState,
    body: &[u8],
) -> Result<(ChatRequest, Vec<u32>, GenerateOptions), ApiError> {
    let req: ChatRequest = parse(body)?;
    check_model(s, &req.model)?;
    let format = s.format.as_ref().ok_or_else(|| {
        ApiError::bad_request(
            "this model has no chat template; use /v1/completions",
            Some("messages"),
        )
    })?;
    if req.messages.is_empty() {
        return Err(ApiError::bad_request(
            "messages must not be empty",
            Some("messages"),
        ));
    }
    let mut messages = Vec::new();
    for m in &req.messages {
        let content = match &m.content {
            Value::String(t) => t.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(""),
            Value::Null => String::new(),
            _ => {
                return Err(ApiError::bad_request(
                    "message content must be a string or a list of parts",
                    Some("messages"),
                ))
            }
        };
        messages.push(Message::new(&m.role, &content));
    }
    let text_bytes: usize = messages.iter().map(|m| m.content.len()).sum();
    check_fits(s, text_bytes, "messages")?;
    let prompt = format
        .prompt_ids(&s.tok, &messages)
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("messages")))?;
    let sampling = sampling(&req.sampling)?;
    let top = req.top_logprobs.unwrap_or(0);
    if top > 20 {
        return Err(ApiError::bad_request(
            "top_logprobs must be at most 20",
            Some("top_logprobs"),
        ));
    }
    let opts = generate_options(sampling, format.stop_ids.clone(), &req.sampling);
    Ok((req, prompt, opts))
}

pub async fn chat_completions(
    State(s): Shared,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (ticket, (req, prompt, opts)) = accept(&s, &headers, body, prepare_chat).await?;
    let top = req.top_logprobs.unwrap_or(0);
    let max = req.max_completion_tokens.or(req.max_tokens);
    let (rx, _) = submit(
        &s,
        prompt,
        max,
        usize::MAX,
        opts,
        req.logprobs.then_some(top),
        ticket,
    )?;
    let (id, created, model) = (new_id("chatcmpl"), now(), s.model_id.clone());
    if !req.sampling.stream {
        let c = collect(rx, s.cut.clone()).await?;
        let logprobs = if req.logprobs {
            chat_logprobs(&c.logprobs)
        } else {
            Value::Null
        };
        return Ok(Json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text},
                         "logprobs": logprobs, "finish_reason": c.finish}],
            "usage": c.usage,
        }))
        .into_response());
    }
    let include_usage = req.sampling.include_usage();
    let want_logprobs = req.logprobs;
    let mut first = true;
    Ok(sse(rx, s.cut.clone(), move |ev| {
        let base = |choices: Value| json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices});
        let mut out = Vec::new();
        if first {
            first = false;
            out.push(base(json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}])));
        }
        match ev {
            GenEvent::Text { text, logprobs } => {
                let lp = if want_logprobs {
                    chat_logprobs(&logprobs)
                } else {
                    Value::Null
                };
                out.push(base(json!([{"index": 0, "delta": {"content": text}, "logprobs": lp, "finish_reason": null}])));
            }
            GenEvent::Done {
                finish_reason,
                prompt_tokens,
                completion_tokens,
            } => {
                out.push(base(json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": finish_reason}])));
                if include_usage {
                    let mut u = base(json!([]));
                    u["usage"] = json!(Usage::new(prompt_tokens, completion_tokens));
                    out.push(u);
                }
            }
            GenEvent::Error(e) => out.push(error_chunk(e)),
        }
        out
    }))
}

/// A completion request parsed and tokenized (on the blocking pool).
fn prepare_completion(
    s: &AppState,
    body: &[u8],
) -> Result<(CompletionRequest, Vec<u32>, GenerateOptions), ApiError> {
    let mut req: CompletionRequest = parse(body)?;
    check_model(s, &req.model)?;
    let prompts = std::mem::take(&mut req.prompt).into_vec();
    if prompts.len() != 1 {
        return Err(ApiError::bad_request(
            "send exactly one prompt per request",
            Some("prompt"),
        ));
    }
    check_fits(s, prompts[0].len(), "prompt")?;
    let prompt = s
        .tok
        .encode(&prompts[0])
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("prompt")))?;
    let sampling = sampling(&req.sampling)?;
    if req.logprobs.is_some_and(|n| n > 5) {
        return Err(ApiError::bad_request(
            "logprobs must be at most 5",
            Some("logprobs"),
        ));
    }
    let opts = generate_options(sampling, s.completion_stop_ids.clone(), &req.sampling);
    Ok((req, prompt, opts))
}

pub async fn completions(
    State(s): Shared,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (ticket, (req, prompt, opts)) = accept(&s, &headers, body, prepare_completion).await?;
    let (rx, _) = submit(&s, prompt, req.max_tokens, 16, opts, req.logprobs, ticket)?;
    let (id, created, model) = (new_id("cmpl"), now(), s.model_id.clone());
    if !req.sampling.stream {
        let c = collect(rx, s.cut.clone()).await?;
        let logprobs = if req.logprobs.is_some() {
            completion_logprobs(&c.logprobs, 0)
        } else {
            Value::Null
        };
        return Ok(Json(json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": c.text, "logprobs": logprobs, "finish_reason": c.finish}],
            "usage": c.usage,
        }))
        .into_response());
    }
    let include_usage = req.sampling.include_usage();
    let want_logprobs = req.logprobs.is_some();
    let mut offset = 0;
    Ok(sse(rx, s.cut.clone(), move |ev| {
        let base = |choices: Value| json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": choices});
        match ev {
            GenEvent::Text { text, logprobs } => {
                let lp = if want_logprobs {
                    completion_logprobs(&logprobs, offset)
                } else {
                    Value::Null
                };
                offset += text.len();
                vec![base(
                    json!([{"index": 0, "text": text, "logprobs": lp, "finish_reason": null}]),
                )]
            }
            GenEvent::Done {
                finish_reason,
                prompt_tokens,
                completion_tokens,
            } => {
                let mut v = vec![base(
                    json!([{"index": 0, "text": "", "logprobs": null, "finish_reason": finish_reason}]),
                )];
                if include_usage {
                    let mut u = base(json!([]));
                    u["usage"] = json!(Usage::new(prompt_tokens, completion_tokens));
                    v.push(u);
                }
                v
            }
            GenEvent::Error(e) => vec![error_chunk(e)],
        }
    }))
}
