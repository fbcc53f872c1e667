//! Admission control: at most `max_batch` requests decode and `max_queue` more wait; past that a
//! request is answered 503 with `Retry-After` at once instead of joining a queue whose wait would
//! run to minutes. While the server shuts down, nothing new is admitted.

use super::api::ApiError;
use axum::http::StatusCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

pub struct Admission {
    active: AtomicUsize,
    limit: usize,
    draining: AtomicBool,
}

/// A place held by one admitted request; dropping it (the response finished, or the client left)
/// gives the place back.
pub struct Ticket(Arc<Admission>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Admission {
    pub fn new(max_batch: usize, max_queue: usize) -> Arc<Self> {
        Arc::new(Admission {
            active: AtomicUsize::new(0),
            limit: max_batch.max(1).saturating_add(max_queue),
            draining: AtomicBool::new(false),
        })
    }

    /// A place for one more request, or the 503 that says to come back later.
    pub fn admit(self: &Arc<Self>) -> Result<Ticket, ApiError> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(unavailable("the server is shutting down"));
        }
        let mut n = self.active.load(Ordering::SeqCst);
        loop {
            if n >= self.limit {
                return Err(unavailable(&format!(
                    "the server is at capacity ({} requests running or queued); retry shortly",
                    self.limit
                )));
            }
            match self
                .active
                .compare_exchange(n, n + 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return Ok(Ticket(self.clone())),
                Err(now) => n = now,
            }
        }
    }

    /// Requests running or queued.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Stops admitting new requests (shutdown).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }
}

fn unavailable(message: &str) -> ApiError {
    ApiError::internal(message)
        .status(StatusCode::SERVICE_UNAVAILABLE)
        .with_code("server_busy")
        .retry_after(1)
}
