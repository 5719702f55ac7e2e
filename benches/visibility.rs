//! Event → recommendation visibility: how long after `POST /v1/events` returns 202 the
//! event shows in `GET /v1/recommendations/{user}` of the same server, over real HTTP on
//! loopback. Each sample is a new user viewing a product of the sample, polled every 2 ms.
//!
//! ```text
//!  embedded   POST ─► in-process channel shard ─► aggregate ─► flush (redb) ─► GET
//!  kinesis    POST ─► PutRecords ─► GetRecords poll ─► aggregate ─► flush (DynamoDB) ─► GET
//! ```
//!
//! `cargo bench --bench visibility` (kinesis only with `AWS_ENDPOINT_URL` set, e.g. moto as
//! scripts/test starts it). Under `cargo test` it runs 3 samples of each as a smoke test.
//! Budgets: 50 ms embedded, 1.5 s through Kinesis.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use recstream::config::{Config, Mode};
use recstream::runtime::Runtime;
use serde_json::{Value, json};

/// The storefront's key, as a deployment would configure it (hashed).
const KEY: &str = "rsk_visibility-bench";

fn with_storefront_key(cfg: &mut Config) {
    cfg.server
        .auth
        .clients
        .push(recstream_serving::auth::ApiClient {
            id: "storefront".into(),
            scopes: vec![
                recstream_serving::auth::Scope::EventsWrite,
                recstream_serving::auth::Scope::RecommendationsRead,
            ],
            key_sha256: vec![recstream_serving::auth::hash_key(KEY)],
        });
}

fn median_p(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    (at(0.5), at(0.9), *v.last().unwrap())
}

async fn measure(rt: Runtime, samples: usize, label: &str) {
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let workers = rt
        .aws
        .is_some()
        .then(|| tokio::spawn(rt.clone().run_workers(stop.clone())));
    let (collector, collector_task) = rt.spawn_collector(stop.clone()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = {
        let rt = rt.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            rt.serve(
                listener,
                collector,
                None,
                Arc::new(AtomicBool::new(true)),
                stop,
            )
            .await
        })
    };
    let http = reqwest::Client::new();
    // Warm up: the first event also waits for the shard to be leased.
    let mut times = Vec::new();
    for i in 0..samples + 1 {
        let user = format!("vis-{}-{i}", std::process::id());
        let event = json!({
            "event_id": format!("{user}-e"), "ts": "2019-10-01T03:00:00Z", "user_id": user,
            "type": "view", "product_id": "1004856", "category": "electronics.smartphone"
        });
        let sent = Instant::now();
        let r = http
            .post(format!("{base}/v1/events"))
            .header("x-api-key", KEY)
            .json(&event)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
        let deadline = sent + Duration::from_secs(30);
        loop {
            let body: Value = http
                .get(format!("{base}/v1/recommendations/{user}"))
                .header("x-api-key", KEY)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if body["strategy"] == "personalized" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{label}: event not visible in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if i > 0 {
            times.push(sent.elapsed());
        }
    }
    let (p50, p90, max) = median_p(times.clone());
    println!(
        "visibility/{label}: {} samples, median {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        times.len(),
        p50.as_secs_f64() * 1e3,
        p90.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    let _ = stop_tx.send(true);
    server.await.unwrap().unwrap();
    if let Some(t) = collector_task {
        t.await.unwrap().unwrap();
    }
    if let Some(w) = workers {
        w.await.unwrap().unwrap();
    }
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let samples = if bench { 50 } else { 3 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.embedded.data_dir = dir.path().join("embedded");
        with_storefront_key(&mut cfg);
        measure(Runtime::open(cfg).await.unwrap(), samples, "embedded").await;

        if std::env::var("AWS_ENDPOINT_URL").is_err() {
            println!("visibility/kinesis: not run (AWS_ENDPOINT_URL is not set)");
            return;
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("rs-vis-{}-{nanos}", std::process::id());
        let mut cfg = Config {
            mode: Mode::Aws,
            ..Config::default()
        };
        cfg.aws.stream = name.clone();
        cfg.aws.shards = 1;
        cfg.aws.table_prefix = format!("{name}-");
        cfg.aws.bucket = name;
        cfg.aws.region = Some("us-east-1".into());
        cfg.aws.lease_duration_ms = 3_000;
        if let Ok(url) = std::env::var("REDIS_URL") {
            cfg.aws.redis_url = url;
        }
        // The defaults of a production deployment: GetRecords every 200 ms at most
        // (Kinesis' 5 calls per second and shard), backing off to 1 s while idle.
        cfg.kinesis.lease.sync_interval_ms = Some(500);
        with_storefront_key(&mut cfg);
        cfg.validate().unwrap();
        let rt = Runtime::open(cfg).await.unwrap();
        recstream::kinesis::init(&rt.cfg, rt.aws.as_ref())
            .await
            .unwrap();
        measure(rt, samples, "kinesis").await;
    });
}
