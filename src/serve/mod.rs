//! `chatforge serve`: an OpenAI-compatible HTTP API and a web chat page over one model.

pub mod admission;
pub mod api;
pub mod engine;
pub mod listen;
pub mod replies;
pub mod request_body;
pub mod request_guard;
pub mod routes;
pub mod state;

use crate::chat_template::ChatFormat;
use crate::error::{Error, Result};
use crate::formats::LoadedModel;
use axum::routing::{get, post};
use axum::Router;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub host: String,
    pub port: u16,
    pub api_key: Option<String>,
    /// The id clients pass as `model` (default: the file or directory name).
    pub model_name: Option<String>,
    /// Requests decoded together at most.
    pub max_batch: usize,
    /// Requests waiting beyond `max_batch` at most; more are answered 503.
    pub max_queue: usize,
    pub body_limit: usize,
    pub device: crate::DeviceChoice,
    /// How the linear layers' weights are held (`LoadedModel::transformer_with`).
    pub weights: crate::formats::WeightFormat,
    /// `Host` names accepted besides localhost when listening on loopback.
    pub allowed_hosts: Vec<String>,
    pub timeouts: listen::Timeouts,
}

/// A router and what the accept loop needs to shut it down.
pub struct App {
    pub router: Router,
    pub admission: Arc<admission::Admission>,
    pub cut: tokio::sync::watch::Sender<bool>,
}

/// Builds the router over a loaded model and starts its engine.
pub fn app(mut m: LoadedModel, model_path: &Path, opts: &ServeOptions) -> Result<App> {
    let device_model = m.transformer_with(opts.weights)?;
    let tok = Arc::new(m.take_tokenizer(model_path)?);
    let format = ChatFormat::new(&tok, m.cfg.eos_token_id).ok();
    let model_id = opts.model_name.clone().unwrap_or_else(|| {
        let name = model_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        name.strip_suffix(".gguf").map(String::from).unwrap_or(name)
    });
    let admission = admission::Admission::new(opts.max_batch, opts.max_queue);
    let (cut, cut_rx) = tokio::sync::watch::channel(false);
    let longest_token_bytes = tok.longest_token_bytes();
    let completion_stop_ids = crate::infer::completion_stop_ids(&tok, m.cfg.eos_token_id);
    let state = Arc::new(state::AppState {
        engine: engine::Engine::start(device_model, tok.clone(), opts.max_batch),
        tok,
        format,
        model_id,
        completion_stop_ids,
        context: m.cfg.context,
        api_key: opts.api_key.clone(),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        body_limit: opts.body_limit,
        body_timeout: opts.timeouts.body,
        longest_token_bytes,
        admission: admission.clone(),
        cut: cut_rx,
    });
    let hosts = Arc::new(request_guard::HostPolicy::new(
        &opts.host,
        &opts.allowed_hosts,
    ));
    let router = Router::new()
        .route("/", get(routes::index))
        .route("/health", get(routes::health))
        .route("/v1/models", get(routes::models))
        .route("/v1/completions", post(routes::completions))
        .route("/v1/chat/completions", post(routes::chat_completions))
        .fallback(routes::not_found)
        .layer(axum::middleware::from_fn_with_state(
            hosts,
            request_guard::check,
        ))
        .with_state(state);
    Ok(App {
        router,
        admission,
        cut,
    })
}

/// Loads the model and serves until the process is stopped.
pub fn serve(model_path: &Path, opts: &ServeOptions) -> Result<()> {
    let device = opts.device.open()?;
    let m = LoadedModel::load(model_path, &device)?;
    let app = app(m, model_path, opts)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io("tokio runtime", e))?;
    rt.block_on(async {
        let addr = format!("{}:{}", opts.host, opts.port);
        let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|e| Error::io(addr.as_str(), e))?;
        let local = listener.local_addr().map_err(|e| Error::io(addr.as_str(), e))?;
        eprintln!("serving {} on http://{local} (web chat at /, OpenAI API at /v1)", model_path.display());
        if opts.api_key.is_none() && opts.host != "127.0.0.1" && opts.host != "localhost" {
            eprintln!("warning: listening on {} without --api-key: anyone who can reach it can use the model", opts.host);
        }
        listen::serve(listener, app.router, app.admission, app.cut, opts.timeouts).await
    })
}
