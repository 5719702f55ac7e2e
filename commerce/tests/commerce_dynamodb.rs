//! The commerce store on DynamoDB (the AWS emulator at `AWS_ENDPOINT_URL`, as
//! `scripts/test` starts it): the same conformance suite as the embedded store, then a
//! whole order saga with DynamoDB as the store (TransactWriteItems outbox). Under
//! `CI=true` a missing emulator fails; elsewhere the test says loudly that it did not run.

mod commerce_support;

use std::sync::Arc;
use std::time::Duration;

use commerce_support::*;
use recstream_commerce::store::{CommerceStore, DynamoStore, conformance};
use recstream_commerce::{
    CommerceConfig, CommerceState, Secret, Secrets, SimulatedProvider, routes,
};
use recstream_ingest::aws::AwsConfig;
use serde_json::{Value, json};

fn emulator(test: &str) -> bool {
    if std::env::var("AWS_ENDPOINT_URL").is_ok_and(|v| !v.is_empty()) {
        return true;
    }
    let msg = format!(
        "{test}: AWS_ENDPOINT_URL is not set, so this DynamoDB test cannot run; run the suite \
         with `scripts/test` (it starts moto_server and sets AWS_ENDPOINT_URL and credentials)"
    );
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{msg}");
    }
    eprintln!("\n!!!!!!!!!! NOT RUN: {msg}\n");
    false
}

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("rs-{tag}-{}-{}-", std::process::id(), nanos % 1_000_000_000)
}

async fn store(tag: &str) -> Arc<DynamoStore> {
    let aws = AwsConfig {
        region: Some(std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into())),
        table_prefix: unique(tag),
        max_attempts: 6,
        base_backoff_ms: 5,
        max_backoff_ms: 200,
        ..Default::default()
    };
    let s = DynamoStore::from_env(&aws).await;
    s.create_table_if_missing()
        .await
        .expect("create the commerce table");
    Arc::new(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_store_passes_the_conformance_suite() {
    if !emulator("dynamodb_store_passes_the_conformance_suite") {
        return;
    }
    let s = store("conf").await;
    conformance::run_all(s.as_ref(), "c1-").await;
    conformance::run_concurrent(s.clone() as Arc<dyn CommerceStore>, "c2-").await;
    // Idempotent table creation.
    s.create_table_if_missing().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_completes_with_dynamodb_as_the_store() {
    if !emulator("an_order_completes_with_dynamodb_as_the_store") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(RecordingSink::default());
    let provider = Arc::new(SimulatedProvider::new());
    let state = CommerceState::builder(CommerceConfig::for_tests(dir.path()), sink.clone())
        .secrets(Secrets {
            jwt_hs256: Some(Secret::new(JWT_SECRET)),
            ..Default::default()
        })
        .store(store("saga").await)
        .provider(provider.clone())
        .seed(seed(json!([
            {"id": "last", "name": "Last one", "price": {"amount": 5000, "currency": "USD"}, "stock": 1},
            {"id": "many", "name": "Plenty", "price": {"amount": 700, "currency": "USD"}, "stock": 100}
        ])))
        .build()
        .await
        .unwrap();
    let _workers = state.spawn_workers();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = routes(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let http = reqwest::Client::new();

    // Two users race for the last unit; one also buys something plentiful.
    for u in ["u1", "u2"] {
        for p in ["last", "many"] {
            let r = http
                .post(format!("{base}/v1/carts/{u}/items"))
                .bearer_auth(token_for(u, 600))
                .json(&json!({"product_id": p, "quantity": 1}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        }
    }
    let mut ids = Vec::new();
    for u in ["u1", "u2"] {
        let r = http
            .post(format!("{base}/v1/checkout"))
            .bearer_auth(token_for(u, 600))
            .header("Idempotency-Key", format!("k-{u}"))
            .json(&visa())
            .send()
            .await
            .unwrap();
        if r.status() == 202 {
            ids.push((
                u,
                r.json::<Value>().await.unwrap()["order_id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            ));
        }
    }
    let mut statuses = Vec::new();
    for (u, id) in &ids {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let o: Value = http
                .get(format!("{base}/v1/orders/{id}"))
                .bearer_auth(token_for(u, 600))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let s = o["status"].as_str().unwrap().to_string();
            if ["completed", "cancelled"].contains(&s.as_str()) {
                statuses.push(s);
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{o:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(
        statuses.iter().filter(|s| *s == "completed").count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(provider.captures(), 1);
    let s = state.catalog().stock("last").await.unwrap().unwrap();
    assert_eq!((s.on_hand, s.reserved), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_ds_order_is_billed_once_by_its_webhook_with_dynamodb() {
    use recstream_commerce::saga::payments::{PaymentRecord, PaymentStatus, payment_key};
    use recstream_commerce::store::get_json;
    use recstream_commerce::webhook::signature_header;

    if !emulator("a_three_ds_order_is_billed_once_by_its_webhook_with_dynamodb") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(RecordingSink::default());
    let provider = Arc::new(SimulatedProvider::new());
    let store = store("3ds").await;
    let state = CommerceState::builder(CommerceConfig::for_tests(dir.path()), sink.clone())
        .secrets(Secrets {
            jwt_hs256: Some(Secret::new(JWT_SECRET)),
            stripe_webhook_secret: Some(Secret::new(WEBHOOK_SECRET)),
            ..Default::default()
        })
        .store(store.clone())
        .provider(provider.clone())
        .seed(seed(json!([
            {"id": "many", "name": "Plenty", "price": {"amount": 700, "currency": "USD"}, "stock": 100}
        ])))
        .build()
        .await
        .unwrap();
    let _workers = state.spawn_workers();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = routes(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/v1/carts/u3/items"))
        .bearer_auth(token_for("u3", 600))
        .json(&json!({"product_id": "many", "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .post(format!("{base}/v1/checkout"))
        .bearer_auth(token_for("u3", 600))
        .header("Idempotency-Key", "k-3ds")
        .json(&json!({"payment_method": "4000002760003184"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["order_id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let intent = loop {
        if let Some((p, _)) =
            get_json::<PaymentRecord>(store.as_ref(), "payment", &payment_key(&id))
                .await
                .unwrap()
            && p.status == PaymentStatus::RequiresAction
        {
            break p.intent_id.unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "payment never waited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(provider.authenticate(&intent, true).is_some());
    let body = json!({"id": "evt_dyn_3ds", "type": "payment_intent.succeeded",
        "data": {"object": {"id": intent, "metadata": {"order_id": id}}}})
    .to_string();
    for duplicate in [false, true] {
        let sig = signature_header(WEBHOOK_SECRET, now_s() as i64, body.as_bytes());
        let r = http
            .post(format!("{base}/v1/payments/webhook"))
            .header("Stripe-Signature", sig)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<Value>().await.unwrap()["duplicate"], duplicate);
    }
    loop {
        let o: Value = http
            .get(format!("{base}/v1/orders/{id}"))
            .bearer_auth(token_for("u3", 600))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if o["status"] == "completed" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{o:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(provider.captures(), 1);
}
