//! The accept loop: HTTP/1.1 connections with a deadline for the request head (a client that
//! trickles its headers, or holds an idle connection, is closed: no slowloris), and a graceful
//! stop on SIGTERM or SIGINT: stop accepting, answer new requests 503, let running replies finish
//! within the grace period, then end the rest with a final chunk that says why.

use super::admission::Admission;
use crate::error::{Error, Result};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// The whole request head (request line and headers) must arrive within this; it also bounds
    /// how long a kept-alive connection may sit idle.
    pub header: Duration,
    /// The request body must arrive within this.
    pub body: Duration,
    /// Running replies may finish within this after SIGTERM.
    pub grace: Duration,
}

/// Serves `router` on `listener` until SIGTERM/SIGINT, then shuts down as described above.
/// `cut` is sent `true` when the grace period is over: the reply streams end then.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    admission: Arc<Admission>,
    cut: watch::Sender<bool>,
    timeouts: Timeouts,
) -> Result<()> {
    let (close_tx, close_rx) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let stop = stop_signal();
    tokio::pin!(stop);
    let signal = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    // Out of file descriptors and the like: wait a moment instead of spinning.
                    Err(e) => {
                        eprintln!("warning: accepting a connection failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let service = TowerToHyperService::new(router.clone());
                let mut close = close_rx.clone();
                connections.spawn(async move {
                    let mut builder = hyper::server::conn::http1::Builder::new();
                    builder.timer(TokioTimer::new()).header_read_timeout(timeouts.header);
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = close.changed() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
                // Reap finished connections so the set does not grow with every one served.
                while connections.try_join_next().is_some() {}
            }
            name = &mut stop => break name?,
        }
    };
    drop(listener);
    admission.drain();
    let _ = close_tx.send(true);
    let running = admission.active();
    eprintln!(
        "{signal}: shutting down; no new requests; {running} running may finish within {}s",
        timeouts.grace.as_secs()
    );
    let deadline = Instant::now() + timeouts.grace;
    while admission.active() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if admission.active() > 0 {
        eprintln!(
            "grace period over: ending {} replies with a final chunk",
            admission.active()
        );
    }
    let _ = cut.send(true);
    // The cut replies write their last chunk; then every connection closes.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    eprintln!("stopped");
    Ok(())
}

/// Resolves with the signal's name at the first SIGTERM or SIGINT.
async fn stop_signal() -> Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let err = |e| Error::io("signal handler", e);
    let mut term = signal(SignalKind::terminate()).map_err(err)?;
    let mut int = signal(SignalKind::interrupt()).map_err(err)?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
