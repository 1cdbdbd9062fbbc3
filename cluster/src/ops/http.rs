//! The three endpoints (axum), and the small blocking HTTP client the supervisor and the
//! tests use to call them.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;

use super::{probe, Target, PROBE_TIMEOUT};

struct Ctx<T> {
    target: Arc<T>,
    registry: Arc<Registry>,
}

impl<T> Clone for Ctx<T> {
    fn clone(&self) -> Self {
        Ctx {
            target: self.target.clone(),
            registry: self.registry.clone(),
        }
    }
}

pub(super) fn router<T: Target>(target: Arc<T>, registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/healthz", get(healthz::<T>))
        .route("/readyz", get(readyz::<T>))
        .route("/metrics", get(metrics::<T>))
        .with_state(Ctx { target, registry })
}

/// 200 once a worker took a probe (the body says how long that took), 503 otherwise.
async fn healthz<T: Target>(State(ctx): State<Ctx<T>>) -> Response {
    match probe(&*ctx.target, PROBE_TIMEOUT).await {
        Ok(waited) => (
            StatusCode::OK,
            format!("ok: a worker took the probe in {} µs\n", waited.as_micros()),
        )
            .into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {why}\n"),
        )
            .into_response(),
    }
}

/// 200 when the process serves, 503 with the reason otherwise.
async fn readyz<T: Target>(State(ctx): State<Ctx<T>>) -> Response {
    match ctx.target.ready() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()).into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

/// The Prometheus text format (version 0.0.4).
async fn metrics<T: Target>(State(ctx): State<Ctx<T>>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::prometheus_text::encode(&mut body, &ctx.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n").into_response(),
    }
}

/// An HTTP answer: the status code and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    /// The status code.
    pub status: u16,
    /// The body (the whole response after the headers; the endpoints close the connection).
    pub body: String,
}

/// `GET path` from `addr`, all of it within `timeout` (a stopped process accepts the
/// connection in the kernel but never answers: the read times out).
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<HttpAnswer> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let mut s = TcpStream::connect_timeout(&addr, left())?;
    s.set_write_timeout(Some(left()))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("GET {path} from {addr}: no whole answer within {timeout:?}"),
            ));
        }
        s.set_read_timeout(Some(left()))?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not an HTTP answer: {text:?}"),
        )
    };
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok(HttpAnswer { status, body })
}

/// A chunked body's data (the chunk sizes removed).
pub(super) fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}
