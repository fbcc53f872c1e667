//! Checks every request passes before a handler sees it. A server on 127.0.0.1 is reachable from any
//! web page its user opens (the browser sends the request; DNS rebinding makes the page's own
//! origin point at 127.0.0.1), so on loopback the `Host` header must name this machine (or one of
//! `--allowed-host`), and a POST must say `Content-Type: application/json`, which a page cannot
//! send across origins without the browser asking first (CORS preflight).

use super::api::ApiError;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// Which `Host` headers are accepted: `None` accepts all (listening beyond loopback without
/// `--allowed-host`, where the address itself is what clients use).
#[derive(Debug, Clone)]
pub struct HostPolicy {
    allowed: Option<Vec<String>>,
}

impl HostPolicy {
    /// For a server bound to `bind_host`, with the user's `--allowed-host` names.
    pub fn new(bind_host: &str, extra: &[String]) -> Self {
        let loopback = matches!(bind_host, "localhost" | "::1" | "[::1]")
            || bind_host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|a| a.is_loopback());
        if !loopback && extra.is_empty() {
            return HostPolicy { allowed: None };
        }
        let mut allowed: Vec<String> = extra.iter().map(|h| h.to_ascii_lowercase()).collect();
        if loopback {
            allowed.extend(["localhost", "127.0.0.1", "[::1]"].map(String::from));
        }
        allowed.push(bind_host.to_ascii_lowercase());
        HostPolicy {
            allowed: Some(allowed),
        }
    }

    fn admits(&self, host_header: Option<&str>) -> bool {
        let Some(allowed) = &self.allowed else {
            return true;
        };
        let Some(host) = host_header else {
            return false;
        };
        let host = host.trim().to_ascii_lowercase();
        // Drop the port: "[::1]:8000" -> "[::1]", "localhost:8000" -> "localhost".
        let name = match host.rfind(':') {
            Some(i)
                if !host[i..].contains(']')
                    && host[i + 1..].bytes().all(|b| b.is_ascii_digit()) =>
            {
                &host[..i]
            }
            _ => host.as_str(),
        };
        allowed.iter().any(|a| a == name)
    }
}

/// The middleware: Host first (a foreign page learns nothing), then the content type of POSTs.
pub async fn check(State(policy): State<Arc<HostPolicy>>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    if !policy.admits(host.as_deref()) {
        let shown = host.unwrap_or_else(|| "(none)".into());
        return ApiError::bad_request(
            format!(
                "Host '{shown}' is not allowed: this server listens on loopback and answers only requests for localhost; start it with --allowed-host NAME to accept another name"
            ),
            None,
        )
        .status(StatusCode::FORBIDDEN)
        .with_code("host_not_allowed")
        .into_response();
    }
    if req.method() == Method::POST {
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let essence = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if essence != "application/json" {
            let shown = if ct.is_empty() { "none" } else { ct };
            return ApiError::bad_request(
                format!("Content-Type must be application/json (got {shown})"),
                None,
            )
            .status(StatusCode::UNSUPPORTED_MEDIA_TYPE)
            .into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::HostPolicy;

    #[test]
    fn loopback_admits_local_names_only() {
        let p = HostPolicy::new("127.0.0.1", &[]);
        for ok in ["127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:9"] {
            assert!(p.admits(Some(ok)), "{ok}");
        }
        for bad in [
            "evil.example:8000",
            "127.0.0.1.evil.example",
            "",
            "localhost.:1",
        ] {
            assert!(!p.admits(Some(bad)), "{bad}");
        }
        assert!(!p.admits(None));
        let p = HostPolicy::new("127.0.0.1", &["box.lan".into()]);
        assert!(p.admits(Some("box.lan:8000")));
        assert!(HostPolicy::new("0.0.0.0", &[]).admits(Some("anything")));
    }
}
