//! The model lifecycle through the binary, embedded: a server started before any model
//! exists ranks by the blend and says segments are not there yet; `recstream train` on the
//! archive publishes a version; the running server picks it up without a restart (segments,
//! similar products from the embedding, model ranking); `recstream segments export` writes
//! files a real reader (pyarrow, when RECSTREAM_PYTHON is set) reads back.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cli(args: &[&str], config: &Path) -> String {
    String::from_utf8(common::cli(args, config).stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_picks_up_a_trained_model_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    // One service key with every scope the test needs (segments too), stored hashed.
    let key = "rsk_model-serving-test";
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n[[server.auth.clients]]\nid = \"test\"\nscopes = [\"events:write\", \"recommendations:read\", \"segments:read\"]\nkey_sha256 = [\"{}\"]\n[embedded]\ndata_dir = \"{}\"\n[model]\nreload_interval_ms = 200\n[processor]\ncheckpoint_interval_ms = 300\n[scoring]\nfeedback_poll_ms = 100\n[commerce]\ndata_dir = \"{}\"\n",
            recstream_serving::auth::hash_key(key),
            dir.path().join("data").display(),
            dir.path().join("commerce").display()
        ),
    )
    .unwrap();
    cli(
        &[
            "replay",
            "rees46",
            "--path",
            common::sample().to_str().unwrap(),
        ],
        &config,
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_recstream"))
        .args(["run", "--exit-after", "120", "--config"])
        .arg(&config)
        .env("RECSTREAM_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut metrics_line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    out.read_line(&mut metrics_line).unwrap();
    let _server = Server(child);
    let metrics_url = metrics_line
        .trim()
        .strip_prefix("metrics on ")
        .unwrap_or_else(|| panic!("unexpected second line {metrics_line:?}"))
        .to_string();
    let base = line
        .trim()
        .strip_prefix("serving on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    let http = reqwest::Client::new();
    let get = |path: String| {
        let (http, url) = (http.clone(), format!("{base}{path}"));
        async move {
            let r = http.get(url).header("x-api-key", key).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };

    let (status, body) = get("/v1/segments".into()).await;
    assert_eq!(status, 503, "no model yet: {body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    let (users, products, _) = common::expected_from_rees46(&common::read_text(&common::sample()));
    let user = common::busiest(&users, 1, |e| e.views >= 5)[0].clone();
    let (status, body) = get(format!("/v1/recommendations/{user}?n=5")).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["strategy"], "personalized",
        "the blend ranks before any model: {body}"
    );

    // Train on the archive the replay wrote, into the store the server watches.
    let summary: Value = serde_json::from_str(&cli(&["train", "--json"], &config)).unwrap();
    let version = summary["version"].as_str().unwrap().to_string();
    assert!(summary["segments"].as_u64().unwrap() >= 2, "{summary}");

    let deadline = Instant::now() + Duration::from_secs(20);
    let segments = loop {
        let (status, body) = get("/v1/segments".into()).await;
        if status == 200 {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "model not picked up: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(segments["version"], version, "{segments}");
    let profiles = segments["segments"].as_array().unwrap();
    assert!(profiles.len() >= 2);
    let total: u64 = profiles.iter().map(|p| p["size"].as_u64().unwrap()).sum();
    assert_eq!(
        total as usize,
        users.len(),
        "every user in exactly one segment"
    );

    // Paging through a segment returns each member once.
    let id = profiles[0]["id"].as_str().unwrap().to_string();
    let mut seen = std::collections::BTreeSet::new();
    let mut token: Option<String> = None;
    loop {
        let q = match &token {
            Some(t) => format!("/v1/segments/{id}/users?limit=50&page_token={t}"),
            None => format!("/v1/segments/{id}/users?limit=50"),
        };
        let (status, page) = get(q).await;
        assert_eq!(status, 200, "{page}");
        for u in page["users"].as_array().unwrap() {
            assert!(
                seen.insert(u["user_id"].as_str().unwrap().to_string()),
                "{u} twice"
            );
        }
        match page["next_page_token"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len() as u64, profiles[0]["size"].as_u64().unwrap());

    // Similar products now come from the model's embedding.
    let product = common::busiest(&products, 1, |_| true)[0].clone();
    let (status, body) = get(format!("/v1/products/{product}/similar?n=5")).await;
    assert_eq!(status, 200, "{body}");
    let items = body["items"].as_array().unwrap();
    assert!(!items.is_empty(), "{body}");
    assert!(items.iter().all(|i| i["reason"] == "similar"), "{body}");

    // Recommendations are still served (now ranked by the model), and feedback on a served
    // list (a click naming its recommendation_id) teaches the live FTRL model: the list is
    // published on the stream, the processor joins the click to it, the server's feed
    // reads the joined rows.
    let (status, body) = get(format!("/v1/recommendations/{user}?n=5")).await;
    assert_eq!(status, 200);
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 5, "{body}");
    let shown: Vec<&str> = items
        .iter()
        .map(|i| i["product_id"].as_str().unwrap())
        .collect();
    let click = serde_json::json!({
        "event_id": "fb-1", "ts": "2019-10-01T04:00:00Z", "user_id": user, "type": "click",
        "product_id": shown[2], "recommendation_id": body["recommendation_id"],
        "impressions": shown,
    });
    let r = http
        .post(format!("{base}/v1/events"))
        .header("x-api-key", key)
        .json(&click)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let metrics = http
            .get(&metrics_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics
            .lines()
            .any(|l| l.starts_with("recstream_scoring_feedback_total{outcome=\"learned\"}"))
        {
            break metrics;
        }
        assert!(
            Instant::now() < deadline,
            "no learned feedback in /metrics:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let learned = metrics
        .lines()
        .find(|l| l.starts_with("recstream_scoring_feedback_total{outcome=\"learned\"}"))
        .unwrap();
    assert!(learned.ends_with(" 1"), "{learned}");
    let rows = metrics
        .lines()
        .find(|l| l.starts_with("recstream_scoring_online_rows_total"))
        .unwrap();
    assert!(
        rows.ends_with(" 5"),
        "one positive and four shown-but-ignored: {rows}"
    );

    // Marketing export, read back.
    let out = dir.path().join("export");
    cli(
        &["segments", "export", "--out", out.to_str().unwrap()],
        &config,
    );
    let csv = std::fs::read_to_string(out.join("segment_members.csv")).unwrap();
    assert_eq!(csv.lines().count() - 1, users.len(), "one CSV row per user");
    if let Ok(python) = std::env::var("RECSTREAM_PYTHON") {
        let o = Command::new(python)
            .args([
                "-c",
                "import sys, pyarrow.parquet as pq; print(pq.read_table(sys.argv[1]).num_rows)",
            ])
            .arg(out.join("segment_members.parquet"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let rows: usize = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
        assert_eq!(rows, users.len());
    }
}
