//! Served lists on the stream, across two servers: two `recstream` servers over one
//! embedded store and one stream (the in-process collector shard). A list served by
//! server A is published as a `recommendation` event; the shopper's click reaches server
//! B's collector; the shard processor joins the two; both servers' online learners read
//! the joined rows and end with the same live model (their answers change, identically).
//! The served list is in the Parquet archive with its items.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use recstream::config::Config;
use recstream::runtime::Runtime;
use recstream_ingest::archive::read_archive;
use recstream_ingest::feedback::{FEEDBACK_PREFIX, decode_feedback};
use recstream_ingest::{Event, EventType, OutRecord, Timestamp};
use recstream_model::{NoProgress, TrainParams};
use recstream_serving::auth::{ApiClient, Scope, hash_key};
use serde_json::{Value, json};
use tokio::sync::watch;

const KEY: &str = "rsk_served-lists-test";

/// `users` shoppers who each view `a`, then `b`, then one of `c`, `d`, `e`, in one session
/// (2019, long before the lists are served).
fn history(users: usize) -> Vec<Event> {
    let mut out = Vec::new();
    let mut t = 1_569_888_000_000i64;
    for u in 0..users {
        for p in ["a", "b", ["c", "d", "e"][u % 3]] {
            t += 1000;
            out.push(
                Event::new(
                    &format!("h{}", out.len()),
                    Timestamp(t),
                    &format!("u{u}"),
                    EventType::View,
                )
                .with_product(p, Some("cat"))
                .with_session(&format!("s{u}")),
            );
        }
    }
    out
}

async fn serve(rt: &Runtime, collector: Arc<dyn recstream_ingest::EventSink>) -> String {
    let app = rt.app(collector, None, Arc::new(AtomicBool::new(true)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

/// (product id, score) of a list.
fn ranked(body: &Value) -> Vec<(String, f64)> {
    body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {body}"))
        .iter()
        .map(|i| {
            (
                i["product_id"].as_str().unwrap().to_string(),
                i["score"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_served_by_one_server_and_clicked_through_another_teaches_both() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.embedded.data_dir = dir.path().join("data");
    cfg.processor.checkpoint_interval_ms = 200;
    cfg.scoring.feedback_poll_ms = 50;
    cfg.server.auth.clients = vec![ApiClient {
        id: "storefront".into(),
        scopes: vec![Scope::EventsWrite, Scope::RecommendationsRead],
        key_sha256: vec![hash_key(KEY)],
    }];
    let a = Runtime::embedded(cfg).unwrap();
    let b = a.another_server();
    let (_stop, shutdown) = watch::channel(false);
    // The one stream both servers write to.
    let (collector, _task) = a.spawn_collector(shutdown.clone()).await.unwrap();

    // History through the stream, then a model trained on it, loaded by both servers.
    let events = history(200);
    for chunk in events.chunks(500) {
        let records = chunk
            .iter()
            .map(|e| OutRecord {
                partition_key: e.user_id.to_string(),
                data: e.to_json().into(),
            })
            .collect();
        collector.send(records).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.sinks.features.user("u199").await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "history not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let params = TrainParams {
        skip_embeddings: true,
        skip_segments: true,
        ..TrainParams::default()
    };
    let (mut model, _) = recstream_model::train(&events, "test", &params, &mut NoProgress).unwrap();
    let version = model.save(a.sinks.objects.as_ref()).await.unwrap();
    for rt in [&a, &b] {
        rt.reload_model().await.unwrap().expect("the new model");
        let _feed = rt.spawn_model_reloader(shutdown.clone());
    }
    let (base_a, base_b) = (
        serve(&a, collector.clone()).await,
        serve(&b, collector.clone()).await,
    );
    let http = reqwest::Client::new();
    let get = |base: &str| {
        let req = http
            .get(format!("{base}/v1/recommendations/u0?n=3"))
            .header("x-api-key", KEY);
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200);
            r.json::<Value>().await.unwrap()
        }
    };

    // Server A serves the list; both servers rank alike before any feedback.
    let served = get(&base_a).await;
    let before = ranked(&served);
    assert!(before.len() >= 2, "{served}");
    assert_eq!(ranked(&get(&base_b).await), before);
    let rec = served["recommendation_id"].as_str().unwrap().to_string();
    let shown: Vec<&str> = before.iter().map(|(p, _)| p.as_str()).collect();
    let clicked = shown[1].to_string();

    // The shopper clicks the second item; the event reaches server B's collector.
    let click = json!({
        "event_id": "click-1", "ts": chrono_now(), "user_id": "u0", "type": "click",
        "product_id": clicked, "category": "cat", "recommendation_id": rec,
        "impressions": shown,
    });
    let r = http
        .post(format!("{base_b}/v1/events"))
        .header("x-api-key", KEY)
        .json(&click)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);

    // The processor joined them: one positive, the other impressions negative.
    let deadline = Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let mut rows = Vec::new();
        for key in a.sinks.objects.list(FEEDBACK_PREFIX).await.unwrap() {
            let bytes = a.sinks.objects.get(&key).await.unwrap().unwrap();
            rows.extend(decode_feedback(&bytes).unwrap());
        }
        if !rows.is_empty() {
            break rows;
        }
        assert!(Instant::now() < deadline, "no joined feedback");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(rows.iter().all(|r| r.recommendation_id == rec.as_str()));
    let labels: Vec<(&str, bool)> = rows
        .iter()
        .map(|r| (r.product_id.as_str(), r.engaged))
        .collect();
    let want: Vec<(&str, bool)> = shown.iter().map(|p| (*p, *p == clicked)).collect();
    assert_eq!(labels, want);
    assert!(
        rows.iter()
            .all(|r| r.model_version.as_deref() == Some(version.as_str()))
    );
    assert!(
        rows.iter()
            .all(|r| r.features.len() == recstream_model::NUM_FEATURES)
    );

    // Both live models learned it: both answers move, and stay equal.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (after_a, after_b) = loop {
        let (ra, rb) = (ranked(&get(&base_a).await), ranked(&get(&base_b).await));
        if ra != before && rb != before {
            break (ra, rb);
        }
        assert!(
            Instant::now() < deadline,
            "the online models did not learn: {ra:?} {rb:?} (before {before:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(after_a, after_b, "both servers learned the same rows");

    // The data scientists' copy: the list is in the archive with its items.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let archived = read_archive(a.sinks.objects.as_ref(), "events/")
            .await
            .unwrap();
        if let Some(row) = archived.iter().find(|r| {
            r.event.recommendation_id.as_deref() == Some(rec.as_str())
                && r.event.event_type == EventType::Recommendation
        }) {
            let items: Vec<&str> = row
                .event
                .items
                .iter()
                .map(|i| i.product_id.as_str())
                .collect();
            assert_eq!(items, shown);
            assert_eq!(row.event.model_version.as_deref(), Some(version.as_str()));
            assert_eq!(row.event.strategy.as_deref(), Some("personalized"));
            break;
        }
        assert!(Instant::now() < deadline, "the served list is not archived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
