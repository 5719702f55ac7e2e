//! The hardened server over real sockets: slowloris connections are closed by the header
//! timeout, idle ones by the idle timeout, a connection limit holds, and every error the
//! framework produces (405, 408, 413, 414, 415, a panic) is the JSON error body.

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};
use recstream_serving::server::{ServerLimits, harden, serve};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn limits() -> ServerLimits {
    ServerLimits {
        header_read_timeout_ms: 300,
        idle_timeout_ms: 600,
        request_timeout_ms: 300,
        max_connections: 100,
        max_uri_bytes: 1024,
    }
}

async fn start(limits: ServerLimits) -> (String, tokio::sync::watch::Sender<bool>) {
    let app = Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route(
            "/json",
            post(|axum::Json(v): axum::Json<Value>| async move { axum::Json(v) })
                .layer(axum::extract::DefaultBodyLimit::max(64)),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        )
        .route(
            "/panic",
            get(|| async {
                if std::hint::black_box(true) {
                    panic!("handler bug");
                }
                "unreachable"
            }),
        );
    let app = harden(app, &limits);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(serve(listener, app, limits, rx));
    (addr, tx)
}

/// Reads until the peer closes (Ok(bytes)) or `within` passes (Err).
async fn closed_within(s: &mut TcpStream, within: Duration) -> Result<Vec<u8>, ()> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return Err(()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_slowloris_connections_are_closed_by_the_header_timeout() {
    let (addr, _stop) = start(limits()).await;
    let started = Instant::now();
    let mut conns = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        conns.push(s);
    }
    for s in &mut conns {
        closed_within(s, Duration::from_secs(3))
            .await
            .expect("a partial request is cut off");
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
    // The server still answers.
    let r = reqwest::get(format!("http://{addr}/ok")).await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() {
    let (addr, _stop) = start(limits()).await;
    // Nothing sent at all.
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    // One request, then an idle keep-alive connection.
    let mut kept = TcpStream::connect(&addr).await.unwrap();
    kept.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = kept.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    closed_within(&mut silent, Duration::from_secs(3))
        .await
        .expect("a silent connection is closed");
    closed_within(&mut kept, Duration::from_secs(3))
        .await
        .expect("an idle keep-alive connection is closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_holds() {
    let (addr, _stop) = start(ServerLimits {
        max_connections: 5,
        header_read_timeout_ms: 5_000,
        idle_timeout_ms: 5_000,
        ..limits()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = TcpStream::connect(&addr).await.unwrap();
    let _ = extra
        .write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let got = closed_within(&mut extra, Duration::from_secs(2))
        .await
        .expect("the sixth connection is closed");
    assert!(
        got.is_empty(),
        "not served: {}",
        String::from_utf8_lossy(&got)
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = reqwest::get(format!("http://{addr}/ok")).await.unwrap();
    assert_eq!(r.status(), 200, "slots are given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framework_errors_are_json_with_stable_codes() {
    let (addr, _stop) = start(limits()).await;
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (http.delete(format!("{base}/ok")), 405, "method_not_allowed"),
        (
            http.post(format!("{base}/json"))
                .header("content-type", "application/json")
                .body(format!("{{\"a\":\"{}\"}}", "x".repeat(200))),
            413,
            "payload_too_large",
        ),
        (
            http.post(format!("{base}/json"))
                .header("content-type", "text/plain")
                .body("{}"),
            415,
            "unsupported_media_type",
        ),
        (
            http.get(format!("{base}/ok?q={}", "x".repeat(2000))),
            414,
            "uri_too_long",
        ),
        (http.get(format!("{base}/slow")), 408, "request_timeout"),
        (http.get(format!("{base}/panic")), 500, "internal"),
        (http.get(format!("{base}/nowhere")), 404, "not_found"),
    ];
    for (req, status, code) in cases {
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{code}");
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        assert!(ct.starts_with("application/json"), "{code}: {ct}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(body["error"]["message"].is_string(), "{body}");
    }
}
