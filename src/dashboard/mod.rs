//! The live training dashboard: `chatforge dashboard RUN_DIR...` and `pretrain`/`sft
//! --dashboard [PORT]` serve one self-contained page on 127.0.0.1 (`page.html`, no outside
//! scripts) that draws each run's training and validation loss, learning rate, tokens/s, MFU and
//! ETA as `metrics.jsonl` grows, and shows its latest samples; several runs are overlaid. The
//! records reach the page as server-sent events (`/events`), read by `follow.rs`.

mod follow;

use crate::error::{Error, Result};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use follow::{Change, Follower};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const PAGE: &str = include_str!("page.html");

/// How often the runs' files are looked at.
const POLL: Duration = Duration::from_millis(500);

struct Runs {
    dirs: Vec<PathBuf>,
    names: Vec<String>,
    /// The host names the page is served under (a page of another site that resolves its name
    /// to 127.0.0.1 is refused: no DNS rebinding).
    hosts: Vec<String>,
}

/// A dashboard being served.
pub struct Dashboard {
    pub url: String,
}

/// Checks that every directory is a chatforge run (it has a metrics.jsonl or a config.toml).
pub fn check_run_dirs(dirs: &[PathBuf]) -> Result<()> {
    for d in dirs {
        if !d.join("metrics.jsonl").exists() && !d.join("config.toml").exists() {
            return Err(Error::bad_file(
                d,
                "not a chatforge run directory (no metrics.jsonl or config.toml): give the --out of a pretrain or sft run",
            ));
        }
    }
    Ok(())
}

/// Binds 127.0.0.1:`port` (0: any free port) and serves `runs` on a thread of its own for as long
/// as the process lives. The runs need not exist yet (a run about to start).
pub fn spawn(runs: Vec<PathBuf>, port: u16) -> Result<Dashboard> {
    let addr = format!("127.0.0.1:{port}");
    let listener = std::net::TcpListener::bind(&addr).map_err(|e| {
        Error::Config(format!(
            "the dashboard cannot listen on {addr} ({e}); choose another port"
        ))
    })?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::io(addr.as_str(), e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io(addr.as_str(), e))?;
    let names = run_names(&runs);
    let state = Arc::new(Runs {
        dirs: runs,
        names,
        hosts: vec!["127.0.0.1".into(), "localhost".into()],
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("tokio runtime", e))?;
    std::thread::Builder::new()
        .name("dashboard".into())
        .spawn(move || rt.block_on(accept(listener, state)))
        .map_err(|e| Error::io("dashboard thread", e))?;
    Ok(Dashboard {
        url: format!("http://{local}/"),
    })
}

/// Each run's name: its directory's, or the whole path where two runs share a name.
fn run_names(dirs: &[PathBuf]) -> Vec<String> {
    let short: Vec<String> = dirs
        .iter()
        .map(|d| match d.file_name() {
            Some(n) => n.to_string_lossy().into_owned(),
            None => d.display().to_string(),
        })
        .collect();
    short
        .iter()
        .zip(dirs)
        .map(|(n, d)| match short.iter().filter(|m| *m == n).count() {
            1 => n.clone(),
            _ => d.display().to_string(),
        })
        .collect()
}

async fn accept(listener: std::net::TcpListener, state: Arc<Runs>) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        eprintln!("warning: the dashboard could not start its listener");
        return;
    };
    let router = Router::new()
        .route("/", get(page))
        .route("/runs", get(runs))
        .route("/events", get(events))
        .with_state(state);
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The request's Host names this machine (any port: an SSH tunnel's local port differs).
fn host_ok(s: &Runs, headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let name = host.map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name));
    name.is_some_and(|n| s.hosts.iter().any(|ok| ok == n))
}

fn refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        "the dashboard answers only at 127.0.0.1 or localhost\n",
    )
        .into_response()
}

async fn page(State(s): State<Arc<Runs>>, headers: HeaderMap) -> Response {
    if !host_ok(&s, &headers) {
        return refused();
    }
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response()
}

async fn runs(State(s): State<Arc<Runs>>, headers: HeaderMap) -> Response {
    if !host_ok(&s, &headers) {
        return refused();
    }
    let list: Vec<_> = s
        .names
        .iter()
        .zip(&s.dirs)
        .map(|(n, d)| json!({ "name": n, "dir": d.display().to_string() }))
        .collect();
    axum::Json(list).into_response()
}

/// Every run's records so far, then each new batch as it is written: one event per run and
/// poll, `{"run": I, "reset": BOOL, "records": [...]}`.
async fn events(State(s): State<Arc<Runs>>, headers: HeaderMap) -> Response {
    if !host_ok(&s, &headers) {
        return refused();
    }
    let (tx, rx) =
        tokio::sync::mpsc::channel::<std::result::Result<Event, std::convert::Infallible>>(16);
    let mut followers: Vec<Follower> = s
        .dirs
        .iter()
        .map(|d| Follower::new(Path::new(d).join("metrics.jsonl")))
        .collect();
    tokio::spawn(async move {
        // Until the page goes away (its stream, the receiver, is dropped with the connection).
        while !tx.is_closed() {
            for (i, f) in followers.iter_mut().enumerate() {
                let (reset, records) = match f.poll() {
                    Change::Reset(r) => (true, r),
                    Change::Appended(r) if r.is_empty() => continue,
                    Change::Appended(r) => (false, r),
                };
                let data = json!({ "run": i, "reset": reset, "records": records });
                if tx
                    .send(Ok(Event::default().data(data.to_string())))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            tokio::time::sleep(POLL).await;
        }
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}
