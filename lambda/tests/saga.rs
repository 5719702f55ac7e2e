//! The saga function: the commerce table's DynamoDB stream (a KEYS_ONLY batch of outbox
//! inserts, shaped as aws_lambda_events' `example-dynamodb-event.json`) and the
//! EventBridge schedule wake it; each invocation runs `jobs::saga_pass`. The checkout is
//! taken by a second commerce state — the http-api function's, through the same
//! commerce router — over one DynamoDB table on the emulator, so the order moves only
//! because the saga function ran. Needs `AWS_ENDPOINT_URL` (scripts/test starts moto);
//! under `CI=true` a missing emulator fails.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::Request;
use recstream::config::Config;
use recstream_commerce::auth::jsonwebtoken::{self, Algorithm, EncodingKey, Header};
use recstream_commerce::{CommerceConfig, CommerceState, DynamoStore, Secret, Secrets, StoreKind};
use recstream_ingest::aws::AwsConfig;
use recstream_ingest::sink::{EventSink, OutRecord, SinkError};
use recstream_lambda::jobs::{self, SagaTrigger};
use serde_json::{Value, json};
use tower::ServiceExt;

const JWT_SECRET: &str = "saga-function-test-secret";

fn emulator(test: &str) -> bool {
    if std::env::var("AWS_ENDPOINT_URL").is_ok_and(|v| !v.is_empty()) {
        return true;
    }
    let msg = format!(
        "{test}: AWS_ENDPOINT_URL is not set, so this emulator test cannot run; run it \
         with `scripts/test`, which starts moto_server and sets it"
    );
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{msg}");
    }
    eprintln!("\n!!!!!!!!!! NOT RUN: {msg}\n");
    false
}

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Records the clickstream events the relay puts on the stream.
#[derive(Default)]
struct Recording(Mutex<Vec<Value>>);

#[async_trait]
impl EventSink for Recording {
    async fn send(&self, records: Vec<OutRecord>) -> Result<(), SinkError> {
        let mut v = self.0.lock().unwrap();
        v.extend(
            records
                .iter()
                .map(|r| serde_json::from_slice(&r.data).unwrap()),
        );
        Ok(())
    }
}

fn token(user: &str) -> String {
    let exp = jsonwebtoken::get_current_timestamp() + 600;
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": user, "exp": exp}),
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

async fn call(
    router: &axum::Router,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {}", token("ada")))
        .header("idempotency-key", "saga-fn-1");
    let body = match body {
        Some(b) => {
            req = req.header("content-type", "application/json");
            Body::from(b.to_string())
        }
        None => Body::empty(),
    };
    let resp = router
        .clone()
        .oneshot(req.body(body).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn deadline_in(d: Duration) -> u64 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        + d)
        .as_millis() as u64
}

/// One invocation of the function: a minute before its deadline, at most 30 s of work.
async fn invoke(state: &CommerceState, trigger: &SagaTrigger) -> recstream_commerce::SagaPass {
    jobs::saga_pass(
        state,
        trigger,
        deadline_in(Duration::from_secs(60)),
        Duration::from_secs(30),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_and_schedule_wake_ups_take_an_order_to_completed() {
    if !emulator("stream_and_schedule_wake_ups_take_an_order_to_completed") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let aws = AwsConfig {
        region: Some(std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into())),
        table_prefix: format!("rl-saga-{}-{}-", std::process::id(), nanos % 1_000_000_000),
        ..Default::default()
    };

    // The saga function, built as its binary builds it: from the configuration.
    let mut cfg = Config {
        aws: aws.clone(),
        commerce: CommerceConfig::for_tests(dir.path().join("saga")),
        ..Default::default()
    };
    cfg.commerce.store = StoreKind::Dynamodb;
    let clicks = Arc::new(Recording::default());
    let saga_fn = jobs::commerce_state(&cfg, clicks.clone()).await.unwrap();

    // The http-api function's commerce state over the same table: the shopper checks out.
    let store = DynamoStore::from_env(&aws).await;
    let front = CommerceState::builder(
        CommerceConfig::for_tests(dir.path().join("api")),
        Arc::new(Recording::default()),
    )
    .secrets(Secrets {
        jwt_hs256: Some(Secret::new(JWT_SECRET)),
        ..Default::default()
    })
    .store(Arc::new(store))
    .build()
    .await
    .unwrap();
    let api = recstream_commerce::routes(front);
    let (status, body) = call(
        &api,
        "POST",
        "/v1/carts/ada/items",
        Some(json!({"product_id": "p-1005", "quantity": 2})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(
        &api,
        "POST",
        "/v1/checkout",
        Some(json!({"payment_method": "4242424242424242"})),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let order_id = body["order_id"].as_str().unwrap().to_string();
    let order_path = format!("/v1/orders/{order_id}");
    assert_eq!(
        call(&api, "GET", &order_path, None).await.1["status"],
        "created"
    );

    // The stream's batch wakes the function: the order is prepared, billed, shipped.
    let stream: SagaTrigger =
        serde_json::from_value(fixture("dynamodb-stream-outbox-insert.json")).unwrap();
    assert!(matches!(stream, SagaTrigger::Stream(_)), "{stream:?}");
    let pass = invoke(&saga_fn, &stream).await;
    assert!(
        pass.drained && pass.relayed > 0 && pass.consumed > 0,
        "{pass:?}"
    );
    let (_, order) = call(&api, "GET", &order_path, None).await;
    assert_eq!(order["status"], "shipped", "{order:#}");

    // The schedule's tick fires the delivery timer; the next rounds complete the order.
    let schedule: SagaTrigger =
        serde_json::from_value(fixture("eventbridge-schedule.json")).unwrap();
    assert!(matches!(schedule, SagaTrigger::Schedule(_)), "{schedule:?}");
    let mut status = String::new();
    for _ in 0..3 {
        invoke(&saga_fn, &schedule).await;
        status = call(&api, "GET", &order_path, None).await.1["status"]
            .as_str()
            .unwrap()
            .to_string();
        if status == "completed" {
            break;
        }
    }
    assert_eq!(status, "completed");

    // The purchase went to the clickstream; a redelivered stream batch moves nothing.
    let purchases = clicks
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "purchase")
        .count();
    assert_eq!(purchases, 1);
    let again = invoke(&saga_fn, &stream).await;
    assert_eq!((again.relayed, again.consumed, again.drained), (0, 0, true));
}

#[test]
fn a_payload_of_neither_shape_is_refused() {
    let r: Result<SagaTrigger, _> = serde_json::from_value(json!({"hello": "world"}));
    assert!(r.is_err());
}
