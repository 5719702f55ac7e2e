//! The README's first command, end to end: `recstream demo` replays the bundled sample,
//! serves real users' recommendations over HTTP, takes new events through the collector
//! and answers bad requests with JSON errors.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Demo {
    child: Child,
    base: String,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_demo(data_dir: &std::path::Path) -> Demo {
    let mut child = Command::new(env!("CARGO_BIN_EXE_recstream"))
        .current_dir(common::root())
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--exit-after",
            "120",
            "--data-dir",
        ])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start recstream demo");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut base = None;
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(url) = line.trim().strip_prefix("serving on ") {
            base = Some(url.to_string());
            break;
        }
    }
    // Keep draining stdout so the demo never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Demo {
        child,
        base: base.expect("the demo prints its URL within a minute"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_real_users_and_takes_events() {
    let dir = tempfile::tempdir().unwrap();
    let demo = start_demo(&dir.path().join("demo"));
    let http = reqwest::Client::new();
    let get = |path: String| {
        let http = http.clone();
        let url = format!("{}{path}", demo.base);
        async move {
            let r = http.get(url).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    // A real user of the sample with purchases gets personalised recommendations.
    let (users, _, _) = common::expected_from_rees46(&common::read_text(&common::sample()));
    let user = common::busiest(&users, 1, |e| e.views >= 5)[0].clone();
    let (status, body) = get(format!("/v1/recommendations/{user}?n=5")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["strategy"], "personalized", "{body}");
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 5, "{body}");
    assert!(
        body["recommendation_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    for it in items {
        assert!(it["score"].as_f64().unwrap() > 0.0);
        assert!(it["reason"].as_str().is_some());
    }

    // An unknown visitor gets the cold-start list.
    let (status, body) = get("/v1/recommendations/nobody-knows-me".into()).await;
    assert_eq!(status, 200);
    assert_eq!(body["strategy"], "cold_start", "{body}");
    assert!(!body["items"].as_array().unwrap().is_empty());

    // A new event through the collector shows up in that user's recommendations.
    let visitor = "visitor-e2e";
    let product = items[0]["product_id"].as_str().unwrap().to_string();
    let event = serde_json::json!({
        "event_id": "e2e-1", "ts": "2019-10-01T03:00:00Z", "user_id": visitor,
        "type": "view", "product_id": product, "category": "e2e.category"
    });
    let sent = Instant::now();
    let r = http
        .post(format!("{}/v1/events", demo.base))
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let mut visible = None;
    while sent.elapsed() < Duration::from_secs(5) {
        let (_, body) = get(format!("/v1/recommendations/{visitor}")).await;
        if body["strategy"] == "personalized" {
            visible = Some(sent.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let visible = visible.expect("the collected event becomes visible");
    eprintln!("collector → recommendations visibility: {visible:?}");

    // Bad requests: 4xx with a JSON error body, never a panic.
    for (method, path, body) in [
        ("GET", "/v1/recommendations/u?n=0".to_string(), None),
        ("GET", "/v1/recommendations/u?n=abc".to_string(), None),
        ("GET", "/v1/recommendations/u?bogus=1".to_string(), None),
        (
            "GET",
            format!("/v1/recommendations/{}", "x".repeat(200)),
            None,
        ),
        ("GET", "/v1/products/nope/similar".to_string(), None),
        ("GET", "/v1/nowhere".to_string(), None),
        ("POST", "/v1/events".to_string(), Some("{not json")),
        (
            "POST",
            "/v1/events".to_string(),
            Some(r#"{"event_id":"x","ts":1,"user_id":"u","type":"view"}"#),
        ),
        ("POST", "/v1/events".to_string(), Some("[]")),
    ] {
        let url = format!("{}{path}", demo.base);
        let req = match method {
            "GET" => http.get(url),
            _ => http
                .post(url)
                .header("content-type", "application/json")
                .body(body.unwrap().to_string()),
        };
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert!((400..500).contains(&status), "{method} {path}: {status}");
        assert!(
            v["error"]["message"].as_str().is_some(),
            "{method} {path}: {v}"
        );
    }

    let (status, _) = get("/healthz".into()).await;
    assert_eq!(status, 200);
    let metrics = http
        .get(format!("{}/metrics", demo.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("recstream_ingest_records_read_total"),
        "{metrics}"
    );
    assert!(metrics.contains("recstream_serving_requests_total"));
}
