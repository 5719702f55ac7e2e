//! The HTTP server around the router, hardened for the open internet.
//!
//! ```text
//!  accept ─► connection limit (semaphore; over it: closed at once)
//!         ─► hyper http1: header read timeout (a partial request line is cut off)
//!         ─► idle watchdog: no bytes either way for `idle_timeout` ─► graceful close
//!         ─► router layers: catch panic ─► request timeout ─► URI length ─► JSON errors
//! ```
//!
//! Every error the server itself produces is the API's JSON error body with a stable code:
//! 405 `method_not_allowed`, 408 `request_timeout`, 413 `payload_too_large`, 414
//! `uri_too_long`, 415 `unsupported_media_type`, 500 `internal` (a handler panicked);
//! [`json_errors`] rewrites any non-JSON error response (axum's body-limit and extractor
//! rejections are text/plain) into that shape.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::error::ApiError;

/// `[server.limits]`: how long and how many.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerLimits {
    /// A client must send a request's whole header within this time.
    pub header_read_timeout_ms: u64,
    /// A connection with no bytes in either direction for this long is closed.
    pub idle_timeout_ms: u64,
    /// A request (handler included) must be answered within this time (408 otherwise).
    pub request_timeout_ms: u64,
    /// Open connections at most; further ones are closed on accept.
    pub max_connections: usize,
    /// Longest request target (path and query), bytes (414 above).
    pub max_uri_bytes: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            request_timeout_ms: 30_000,
            max_connections: 10_000,
            max_uri_bytes: 8 * 1024,
        }
    }
}

impl ServerLimits {
    /// Timeouts in 10 ms ..= 1 h, connections in 1 ..= 1,000,000, URIs 256 B ..= 64 KiB.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
        ] {
            if !(10..=3_600_000).contains(&v) {
                return Err(format!("server.limits.{name} must be in 10..=3600000"));
            }
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            return Err("server.limits.max_connections must be in 1..=1000000".into());
        }
        if !(256..=64 * 1024).contains(&self.max_uri_bytes) {
            return Err("server.limits.max_uri_bytes must be in 256..=65536".into());
        }
        Ok(())
    }
}

/// The router with the hardening layers: JSON errors, URI length, request timeout and a
/// panic turned into a 500 JSON error (innermost to outermost).
pub fn harden(app: Router, limits: &ServerLimits) -> Router {
    let timeout = Duration::from_millis(limits.request_timeout_ms);
    let max_uri = limits.max_uri_bytes;
    app.layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            check_uri(req, next, max_uri)
        }))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            request_timeout(req, next, timeout)
        }))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| ApiError::internal("internal error").into_response(),
        ))
}

async fn check_uri(req: Request, next: Next, max: usize) -> Response {
    let len = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().len())
        .unwrap_or(0);
    if len > max {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target is {len} bytes; at most {max}"),
        )
        .into_response();
    }
    next.run(req).await
}

async fn request_timeout(req: Request, next: Next, limit: Duration) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the request took longer than {} ms", limit.as_millis()),
        )
        .into_response(),
    }
}

/// The stable code of an error status the framework (not a handler) produced.
pub fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "unprocessable",
        StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "error",
    }
}

/// Rewrites an error response that is not JSON (an axum rejection's text/plain, an empty
/// 405) into the API's JSON error body with the status' stable code; the text, if any,
/// becomes the message. JSON errors pass untouched.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    } else {
        text
    };
    let mut out = ApiError::new(status, code_for(status), message).into_response();
    // Keep headers such as Allow and WWW-Authenticate.
    for (k, v) in parts.headers.iter() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

/// A socket that records when bytes last moved, for the idle watchdog.
struct Tracked<S> {
    inner: S,
    last: Arc<AtomicU64>,
    epoch: Instant,
}

impl<S> Tracked<S> {
    fn touch(&self) {
        self.last
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves `app` (already [`harden`]ed or not) on `listener` with the connection-level
/// limits until `shutdown` turns true; open connections then finish their requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let header_timeout = Duration::from_millis(limits.header_read_timeout_ms);
    let idle = Duration::from_millis(limits.idle_timeout_ms);
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let builder = Arc::new(builder.http1_only());
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let (stream, _peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            metrics::counter!(crate::metrics::CONNECTIONS_REFUSED_TOTAL).increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let epoch = Instant::now();
        let last = Arc::new(AtomicU64::new(0));
        let io = TokioIo::new(Tracked {
            inner: stream,
            last: last.clone(),
            epoch,
        });
        let svc = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let mut stop = shutdown.clone();
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            let _permit = permit;
            let conn = builder.serve_connection_with_upgrades(io, svc);
            tokio::pin!(conn);
            let check = (idle / 4).max(Duration::from_millis(5));
            let mut closing = false;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    _ = tokio::time::sleep(check), if !closing => {
                        let quiet = (epoch.elapsed().as_millis() as u64)
                            .saturating_sub(last.load(Ordering::Relaxed));
                        if quiet >= idle.as_millis() as u64 {
                            closing = true;
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                    _ = async { let _ = stop.wait_for(|s| *s).await; }, if !closing => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        });
    }
    // Let open connections finish (graceful_shutdown was signalled to each).
    while tasks.join_next().await.is_some() {}
    Ok(())
}
