//! Credentials at the serving doors, black-box over the router: the collector and the
//! recommendations need an API key with the right scope or the shopper's own token;
//! metrics are not on the public router; a repeated `event_id` in one request is one
//! event; blank and bidi-control ids are refused.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use recstream_commerce::auth::jsonwebtoken;
use recstream_commerce::config::AuthConfig;
use recstream_commerce::{Authenticator, Secret};
use recstream_ingest::sink::{EventSink, OutRecord, SinkError};
use recstream_serving::auth::{AccessConfig, ApiClient, Scope, hash_key};
use recstream_serving::{Access, AppState, EventTimeBounds, router};
use serde_json::{Value, json};
use tower::ServiceExt;

const SECRET: &str = "serving-access-test-secret";
const STOREFRONT: &str = "rsk_storefront-test";
const READER: &str = "rsk_reader-test";

#[derive(Default)]
struct Recording(Mutex<Vec<OutRecord>>);

#[async_trait::async_trait]
impl EventSink for Recording {
    async fn send(&self, records: Vec<OutRecord>) -> Result<(), SinkError> {
        self.0.lock().unwrap().extend(records);
        Ok(())
    }
}

struct Fixture {
    app: Router,
    sink: Arc<Recording>,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let features = Arc::new(
        recstream_features::EmbeddedStore::open(
            dir.path().join("features.redb"),
            recstream_features::FeatureConfig::default(),
        )
        .unwrap(),
    );
    let recommender = Arc::new(recstream_scoring::Recommender::new(
        features,
        Arc::new(recstream_scoring::InProcessCache::new()),
        recstream_scoring::ScoringConfig::default(),
    ));
    let cfg = AccessConfig {
        clients: vec![
            ApiClient {
                id: "storefront".into(),
                scopes: vec![Scope::EventsWrite, Scope::RecommendationsRead],
                key_sha256: vec![hash_key(STOREFRONT)],
            },
            ApiClient {
                id: "reader".into(),
                scopes: vec![Scope::RecommendationsRead],
                key_sha256: vec![hash_key(READER)],
            },
        ],
        ..AccessConfig::default()
    };
    let jwt =
        Authenticator::with_jwks(&AuthConfig::default(), Some(&Secret::new(SECRET)), None).unwrap();
    let sink = Arc::new(Recording::default());
    let state = AppState {
        recommender,
        collector: sink.clone(),
        access: Arc::new(Access::new(&cfg, Some(Arc::new(jwt)))),
        ready: Arc::new(AtomicBool::new(true)),
        max_record_bytes: 64 * 1024,
        event_time: EventTimeBounds::default(),
        served: None,
    };
    Fixture {
        app: router(state),
        sink,
        _dir: dir,
    }
}

fn token(sub: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "exp": jsonwebtoken::get_current_timestamp() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

enum Cred<'a> {
    None,
    Key(&'a str),
    Bearer(String),
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    cred: Cred<'_>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    match cred {
        Cred::None => {}
        Cred::Key(k) => req = req.header("x-api-key", k),
        Cred::Bearer(t) => req = req.header("authorization", format!("Bearer {t}")),
    }
    let body = match body {
        Some(v) => {
            req = req.header("content-type", "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    let resp = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn view(event_id: &str, user: &str) -> Value {
    json!({"event_id": event_id, "ts": "2019-10-01T03:00:00Z", "user_id": user,
        "type": "view", "product_id": "p1", "category": "c"})
}

#[tokio::test]
async fn the_collector_needs_a_scoped_key_or_the_shoppers_own_token() {
    let f = fixture();
    let post = |cred, body| call(&f.app, "POST", "/v1/events", cred, Some(body));

    let (s, b) = post(Cred::None, view("e1", "alice")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
    assert_eq!(b["error"]["code"], "unauthorized");
    let (s, _) = post(Cred::Key("rsk_guessed"), view("e1", "alice")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = post(Cred::Bearer("not.a.jwt".into()), view("e1", "alice")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // A key without events:write.
    let (s, b) = post(Cred::Key(READER), view("e1", "alice")).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert_eq!(b["error"]["code"], "forbidden");
    // A shopper writing someone else's events, alone or hidden in a batch.
    let (s, _) = post(Cred::Bearer(token("mallory")), view("e1", "alice")).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = post(
        Cred::Bearer(token("mallory")),
        json!([view("e1", "mallory"), view("e2", "alice")]),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(f.sink.0.lock().unwrap().is_empty(), "nothing was sent");

    let (s, b) = post(Cred::Bearer(token("alice")), view("e1", "alice")).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    let (s, b) = post(Cred::Key(STOREFRONT), view("e2", "bob")).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    assert_eq!(f.sink.0.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn recommendations_are_the_shoppers_own_or_a_services() {
    let f = fixture();
    let get = |uri: &'static str, cred| call(&f.app, "GET", uri, cred, None);
    let (s, b) = get("/v1/recommendations/alice", Cred::None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
    let (s, b) = get("/v1/recommendations/alice", Cred::Bearer(token("mallory"))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    let (s, b) = get("/v1/recommendations/alice", Cred::Bearer(token("alice"))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = get("/v1/recommendations/alice", Cred::Key(READER)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // Similar products hold no personal data: open.
    let (s, _) = get("/v1/products/p1/similar", Cred::None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Metrics are not on the public router at all.
    let (s, b) = get("/metrics", Cred::Key(STOREFRONT)).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
}

#[tokio::test]
async fn a_repeated_event_id_in_one_request_is_one_event() {
    let f = fixture();
    let (s, b) = call(
        &f.app,
        "POST",
        "/v1/events",
        Cred::Key(STOREFRONT),
        Some(json!([
            view("dup", "alice"),
            view("dup", "alice"),
            view("other", "alice"),
            view("dup", "alice")
        ])),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    assert_eq!(b["accepted"], 2, "{b}");
    assert_eq!(b["duplicates"], 2, "{b}");
    assert_eq!(f.sink.0.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn blank_and_bidi_control_ids_are_refused() {
    let f = fixture();
    for user in ["   ", "\u{202E}ecila", "al\u{2067}ice"] {
        let (s, b) = call(
            &f.app,
            "POST",
            "/v1/events",
            Cred::Key(STOREFRONT),
            Some(view("e1", user)),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{user:?}: {b}");
        let uri = format!(
            "/v1/recommendations/{}",
            user.replace(' ', "%20")
                .replace('\u{202E}', "%E2%80%AE")
                .replace('\u{2067}', "%E2%81%A7")
        );
        let (s, b) = call(&f.app, "GET", &uri, Cred::Key(READER), None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{user:?}: {b}");
    }
    assert!(f.sink.0.lock().unwrap().is_empty());
}

#[tokio::test]
async fn the_collector_refuses_an_event_dated_beyond_the_skew_with_422() {
    let f = fixture();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let at = |event_id: &str, ts: i64| {
        json!({"event_id": event_id, "ts": ts, "user_id": "u1",
            "type": "view", "product_id": "p1", "category": "c"})
    };
    // Dated 2099 (the attack): refused at the door, nothing reaches the stream.
    let (status, body) = call(
        &f.app,
        "POST",
        "/v1/events",
        Cred::Key(STOREFRONT),
        Some(json!([at("ok-0", now_ms), at("far", 4_070_908_800_000)])),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "invalid_event", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("ts"),
        "{body}"
    );
    assert!(
        f.sink.0.lock().unwrap().is_empty(),
        "a refused batch sends nothing"
    );
    // A minute ahead (clock skew between the storefront and us) is fine.
    let (status, body) = call(
        &f.app,
        "POST",
        "/v1/events",
        Cred::Key(STOREFRONT),
        Some(json!([at("ok-1", now_ms + 60_000)])),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(f.sink.0.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn the_collector_refuses_catalog_entries_even_from_the_storefront() {
    let f = fixture();
    let entry = json!({"event_id": "cat-1", "ts": "2019-10-01T03:00:00Z", "user_id": "backoffice",
        "type": "product", "product_id": "p1", "price": {"amount": 1, "currency": "USD"},
        "product": {"title": "A sofa for a cent", "stock": 100000}});
    for cred in [Cred::Key(STOREFRONT), Cred::Bearer(token("backoffice"))] {
        let (status, body) = call(
            &f.app,
            "POST",
            "/v1/events",
            cred,
            Some(json!([view("ok-1", "backoffice"), entry.clone()])),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["code"], "invalid_event", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("`product` events are not accepted"),
            "{body}"
        );
    }
    assert!(
        f.sink.0.lock().unwrap().is_empty(),
        "nothing reaches the stream"
    );
}
