//! The README's first command, end to end: `recstream demo` replays the bundled sample,
//! serves real users' recommendations over HTTP to the credentials it prints, takes new
//! events through the collector, refuses callers without a credential (401) or with the
//! wrong one (403), keeps /metrics off the public port and answers bad requests with JSON
//! errors.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Demo {
    child: Child,
    base: String,
    /// The lines `  <name>: <value>` the demo printed before `serving on`.
    printed: std::collections::HashMap<String, String>,
}

impl Demo {
    fn printed(&self, name: &str) -> &str {
        self.printed
            .get(name)
            .unwrap_or_else(|| panic!("the demo prints `{name}:`"))
    }
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
    let mut printed = std::collections::HashMap::new();
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(url) = line.trim().strip_prefix("serving on ") {
            base = Some(url.to_string());
            break;
        }
        if let Some((k, v)) = line.trim().split_once(": ") {
            printed.insert(k.to_string(), v.trim().to_string());
        }
    }
    // Keep draining stdout so the demo never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Demo {
        child,
        base: base.expect("the demo prints its URL within a minute"),
        printed,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_real_users_and_takes_events() {
    let dir = tempfile::tempdir().unwrap();
    let demo = start_demo(&dir.path().join("demo"));
    let key = demo.printed("storefront key").to_string();
    let http = reqwest::Client::new();
    let get = |path: String| {
        let http = http.clone();
        let url = format!("{}{path}", demo.base);
        let key = key.clone();
        async move {
            let r = http.get(url).header("x-api-key", key).send().await.unwrap();
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
        .header("x-api-key", &key)
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
        }
        .header("x-api-key", &key);
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
    // /metrics is not on the public port; it is on the internal listener the demo prints.
    let public = http
        .get(format!("{}/metrics", demo.base))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status().as_u16(), 404);
    let metrics = http
        .get(demo.printed("metrics (internal listener)"))
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

    // One demo serves every check (a demo start replays and trains: seconds of CPU).
    the_demo_credentials_open_only_their_doors(&demo).await;
    every_recommended_product_can_be_bought(&demo).await;
}

/// One catalog: the demo's shop is built from the replayed sample, and every product
/// recommended — personalised or cold start — can be added to the shopper's cart and
/// checked out.
async fn every_recommended_product_can_be_bought(demo: &Demo) {
    let http = reqwest::Client::new();
    let shopper = demo.printed("shopper");
    let token = demo.printed("shopper token");
    let key = demo.printed("storefront key");
    let mut ids = std::collections::BTreeSet::new();
    for (path, n) in [
        (format!("/v1/recommendations/{shopper}?n=20"), 20),
        ("/v1/recommendations/cold-visitor?n=10".to_string(), 10),
    ] {
        let body: Value = http
            .get(format!("{}{path}", demo.base))
            .header("x-api-key", key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let items = body["items"].as_array().unwrap();
        assert!(items.len() >= n / 2, "{path}: {body}");
        ids.extend(
            items
                .iter()
                .map(|i| i["product_id"].as_str().unwrap().to_string()),
        );
    }
    for id in &ids {
        let r = http
            .post(format!("{}/v1/carts/{shopper}/items", demo.base))
            .bearer_auth(token)
            .json(&serde_json::json!({"product_id": id, "quantity": 1}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        assert_eq!(
            status,
            200,
            "recommended product {id} cannot be added: {}",
            r.text().await.unwrap()
        );
    }
    let r = http
        .post(format!("{}/v1/checkout", demo.base))
        .bearer_auth(token)
        .header("idempotency-key", "demo-e2e-1")
        .json(&serde_json::json!({"payment_method": "4242424242424242"}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert_eq!(status, 202, "{}", r.text().await.unwrap());
}

/// Every door needs a credential: 401 without or with a bad one, 403 with the wrong one;
/// the shopper's token reaches that shopper's data only, the marketing token the segments.
async fn the_demo_credentials_open_only_their_doors(demo: &Demo) {
    let http = reqwest::Client::new();
    let shopper = demo.printed("shopper").to_string();
    let key = demo.printed("storefront key");
    let bearer = |t: &str| format!("Bearer {t}");
    let call = |method: &str,
                path: &str,
                auth: Option<(&str, String)>,
                body: Option<serde_json::Value>| {
        let url = format!("{}{path}", demo.base);
        let mut req = match method {
            "GET" => http.get(url),
            _ => http.post(url).json(&body.unwrap_or(Value::Null)),
        };
        if let Some((h, v)) = auth {
            req = req.header(h, v);
        }
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // A product of the shop (the demo's catalog is the sample's products).
    let product: String = {
        let body: Value = http
            .get(format!("{}/v1/recommendations/{shopper}", demo.base))
            .header("x-api-key", key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["items"][0]["product_id"].as_str().unwrap().to_string()
    };
    let event = |user: &str| {
        serde_json::json!({"event_id": format!("auth-{user}"), "ts": "2019-10-01T03:00:00Z",
            "user_id": user, "type": "view", "product_id": product, "category": "c"})
    };
    let shopper_auth = || Some(("authorization", bearer(demo.printed("shopper token"))));
    let marketing_auth = || Some(("authorization", bearer(demo.printed("marketing token"))));
    let recs = format!("/v1/recommendations/{shopper}");

    // No credential, a wrong key, a forged token: 401 with a JSON error.
    for auth in [
        None,
        Some(("x-api-key", "rsk_guessed".to_string())),
        Some((
            "authorization",
            bearer("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"),
        )),
    ] {
        for (method, path, body) in [
            ("GET", recs.clone(), None),
            ("POST", "/v1/events".to_string(), Some(event(&shopper))),
            ("GET", "/v1/segments".to_string(), None),
        ] {
            let (status, body) = call(method, &path, auth.clone(), body).await;
            assert_eq!(status, 401, "{method} {path} {auth:?}: {body}");
            assert_eq!(body["error"]["code"], "unauthorized", "{body}");
        }
    }

    // The storefront key: events and recommendations of anyone, but no segments.
    let store = || Some(("x-api-key", key.to_string()));
    assert_eq!(call("GET", &recs, store(), None).await.0, 200);
    assert_eq!(
        call("POST", "/v1/events", store(), Some(event("someone")))
            .await
            .0,
        202
    );
    let (status, body) = call("GET", "/v1/segments", store(), None).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");

    // The shopper: own recommendations and events only.
    assert_eq!(call("GET", &recs, shopper_auth(), None).await.0, 200);
    assert_eq!(
        call(
            "GET",
            "/v1/recommendations/someone-else",
            shopper_auth(),
            None
        )
        .await
        .0,
        403
    );
    assert_eq!(
        call("POST", "/v1/events", shopper_auth(), Some(event(&shopper)))
            .await
            .0,
        202
    );
    let (status, body) = call(
        "POST",
        "/v1/events",
        shopper_auth(),
        Some(event("someone-else")),
    )
    .await;
    assert_eq!(status, 403, "another user's event: {body}");
    assert_eq!(
        call("GET", "/v1/segments", shopper_auth(), None).await.0,
        403
    );

    // A product id the shop does not know is refused, never applied.
    let mut fake = event("someone");
    fake["product_id"] = serde_json::json!("EVIL-PRODUCT");
    let (status, body) = call("POST", "/v1/events", store(), Some(fake)).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "unknown_product");

    // Marketing: the segments, not a shopper's recommendations.
    let (status, body) = call("GET", "/v1/segments", marketing_auth(), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(call("GET", &recs, marketing_auth(), None).await.0, 403);
}
