//! The OpenAPI document against the router it describes: `GET /openapi.json` is public and
//! is the document `api_with_spec` returns; it lists exactly the operations the router
//! serves (each listed operation is routed, every other method on a listed path is a 405,
//! the list is the one below); every operation documents its error answers as the JSON
//! error body, and the secured ones name the two security schemes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use recstream_commerce::{CommerceConfig, CommerceState, Secret, Secrets};
use recstream_ingest::sink::{EventSink, OutRecord, SinkError};
use recstream_serving::segments::SegmentsState;
use recstream_serving::{Access, AccessConfig, AppState, EventTimeBounds, api_with_spec};
use serde_json::Value;
use tower::ServiceExt;

struct Discard;

#[async_trait::async_trait]
impl EventSink for Discard {
    async fn send(&self, _: Vec<OutRecord>) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Every operation of the public API. A route added, removed or renamed changes the spec,
/// and this list must follow (the README and clients depend on it).
const OPERATIONS: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/openapi.json"),
    ("GET", "/readyz"),
    ("DELETE", "/v1/carts/{user_id}"),
    ("GET", "/v1/carts/{user_id}"),
    ("POST", "/v1/carts/{user_id}/items"),
    ("DELETE", "/v1/carts/{user_id}/items/{product_id}"),
    ("PUT", "/v1/carts/{user_id}/items/{product_id}"),
    ("GET", "/v1/catalog/products"),
    ("GET", "/v1/catalog/products/{product_id}"),
    ("PUT", "/v1/catalog/products/{product_id}"),
    ("POST", "/v1/catalog/products/{product_id}/deactivate"),
    ("PUT", "/v1/catalog/products/{product_id}/stock"),
    ("POST", "/v1/checkout"),
    ("POST", "/v1/events"),
    ("GET", "/v1/orders"),
    ("GET", "/v1/orders/{order_id}"),
    ("POST", "/v1/payments/webhook"),
    ("GET", "/v1/products/{product_id}/similar"),
    ("GET", "/v1/recommendations/{user_id}"),
    ("GET", "/v1/segments"),
    ("GET", "/v1/segments/{segment_id}/users"),
];

const METHODS: &[&str] = &["GET", "PUT", "POST", "DELETE", "PATCH"];

async fn fixture(dir: &std::path::Path) -> (Router, Value) {
    let features = Arc::new(
        recstream_features::EmbeddedStore::open(
            dir.join("features.redb"),
            recstream_features::FeatureConfig::default(),
        )
        .unwrap(),
    );
    let recommender = Arc::new(recstream_scoring::Recommender::new(
        features,
        Arc::new(recstream_scoring::InProcessCache::new()),
        recstream_scoring::ScoringConfig::default(),
    ));
    let commerce = CommerceState::builder(
        CommerceConfig::for_tests(dir.join("commerce")),
        Arc::new(Discard),
    )
    .secrets(Secrets {
        jwt_hs256: Some(Secret::new("openapi-test-secret-0123456789")),
        ..Secrets::default()
    })
    .build()
    .await
    .unwrap();
    let state = AppState {
        recommender,
        collector: Arc::new(Discard),
        access: Arc::new(Access::new(
            &AccessConfig::default(),
            Some(commerce.authenticator()),
        )),
        ready: Arc::new(AtomicBool::new(true)),
        max_record_bytes: 64 * 1024,
        event_time: EventTimeBounds::default(),
        served: None,
    };
    let (app, spec) = api_with_spec(state, SegmentsState::default(), Some(commerce));
    (app, serde_json::to_value(&spec).unwrap())
}

async fn send(app: &Router, method: &str, uri: &str) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = to_bytes(resp.into_body(), 1 << 22).await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn operations(spec: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, _) in item.as_object().unwrap() {
            out.insert((method.to_uppercase(), path.clone()));
        }
    }
    out
}

/// A concrete URI for a templated path.
fn concrete(path: &str) -> String {
    path.replace("{user_id}", "u1")
        .replace("{product_id}", "p1")
        .replace("{order_id}", "o1")
        .replace("{segment_id}", "s1")
}

#[tokio::test]
async fn the_spec_lists_exactly_the_routes_served() {
    let dir = tempfile::tempdir().unwrap();
    let (app, spec) = fixture(dir.path()).await;
    let listed = operations(&spec);
    let want: BTreeSet<(String, String)> = OPERATIONS
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(listed, want, "the spec's operations");

    let paths: BTreeSet<&String> = listed.iter().map(|(_, p)| p).collect();
    for path in paths {
        let uri = concrete(path);
        for method in METHODS {
            let (status, body) = send(&app, method, &uri).await;
            if listed.contains(&(method.to_string(), path.clone())) {
                // Routed: whatever the handler says (401, 400, 200, …), not the fallbacks.
                assert_ne!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {uri} is listed but not routed"
                );
                assert!(
                    body["error"]["message"] != "no such endpoint",
                    "{method} {uri} is listed but not routed"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {uri} is served but not in the spec: {body}"
                );
                assert_eq!(body["error"]["code"], "method_not_allowed");
            }
        }
    }
    // Outside the listed paths there is nothing.
    let (status, body) = send(&app, "GET", "/v1/not-a-route").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["message"], "no such endpoint");
}

/// Every route of the public API is registered with its description (utoipa-axum's
/// `routes!`), never with a bare `.route(…)` the spec would not see. Only the internal
/// listener's `/metrics` (not on the public router) is a bare route.
#[test]
fn no_route_is_registered_without_its_description() {
    for (file, text) in [
        ("serving/src/app.rs", include_str!("../src/app.rs")),
        ("serving/src/lib.rs", include_str!("../src/lib.rs")),
        (
            "serving/src/segments.rs",
            include_str!("../src/segments.rs"),
        ),
        ("serving/src/openapi.rs", include_str!("../src/openapi.rs")),
        (
            "commerce/src/http.rs",
            include_str!("../../commerce/src/http.rs"),
        ),
    ] {
        let bare: Vec<&str> = [".route(", ".nest("]
            .iter()
            .flat_map(|pat| text.match_indices(pat))
            .map(|(i, _)| text[i..].split(')').next().unwrap_or_default())
            .filter(|call| !(file == "serving/src/app.rs" && call.contains("\"/metrics\"")))
            .collect();
        assert!(
            bare.is_empty(),
            "{file} registers a route the spec cannot see: {bare:?}"
        );
    }
}

#[tokio::test]
async fn openapi_json_is_public_and_is_the_spec() {
    let dir = tempfile::tempdir().unwrap();
    let (app, spec) = fixture(dir.path()).await;
    let req = Request::get("/openapi.json").body(Body::empty()).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let body: Value =
        serde_json::from_slice(&to_bytes(resp.into_body(), 1 << 22).await.unwrap()).unwrap();
    assert_eq!(body, spec);
    assert!(body["openapi"].as_str().unwrap().starts_with("3.1"));
    assert_eq!(body["info"]["title"], "recstream API");
}

#[tokio::test]
async fn every_operation_documents_its_errors_and_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let (_, spec) = fixture(dir.path()).await;
    let schemes = &spec["components"]["securitySchemes"];
    assert_eq!(schemes["api_key"]["type"], "apiKey");
    assert_eq!(schemes["api_key"]["in"], "header");
    assert_eq!(schemes["api_key"]["name"], "x-api-key");
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["bearer"]["bearerFormat"], "JWT");
    let error_body = &spec["components"]["schemas"]["ErrorBody"];
    assert_eq!(error_body["required"], serde_json::json!(["error"]));

    // Operations without a credential: health, the spec, the public catalog reads, similar
    // products and the webhook (signed instead).
    let public: BTreeSet<&str> = [
        "GET /healthz",
        "GET /readyz",
        "GET /openapi.json",
        "GET /v1/catalog/products",
        "GET /v1/catalog/products/{product_id}",
        "GET /v1/products/{product_id}/similar",
        "POST /v1/payments/webhook",
    ]
    .into();
    let resolve = |r: &Value| -> Value {
        match r["$ref"].as_str() {
            Some(name) => {
                let name = name.trim_start_matches("#/components/responses/");
                spec["components"]["responses"][name].clone()
            }
            None => r.clone(),
        }
    };
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let name = format!("{} {path}", method.to_uppercase());
            let responses = op["responses"].as_object().unwrap();
            for status in ["400", "408", "414", "500", "503"] {
                assert!(responses.contains_key(status), "{name} lacks {status}");
            }
            let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
            assert_eq!(!secured, public.contains(name.as_str()), "{name}: security");
            if secured {
                for status in ["401", "403"] {
                    assert!(responses.contains_key(status), "{name} lacks {status}");
                }
            }
            if op.get("requestBody").is_some() {
                for status in ["413", "415", "422"] {
                    assert!(responses.contains_key(status), "{name} lacks {status}");
                }
            }
            for (status, r) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    let r = resolve(r);
                    assert_eq!(
                        r["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{name} {status}"
                    );
                }
            }
        }
    }
}

/// The spec says 1 to 200 products per catalog page; the server used to clamp anything
/// else silently (0 and 1000 answered 200). Out of range is now a 400, as for orders.
#[tokio::test]
async fn the_catalog_page_size_is_bounded_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let (app, spec) = fixture(dir.path()).await;
    let limit = spec["paths"]["/v1/catalog/products"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .unwrap()
        .clone();
    assert_eq!(limit["schema"]["maximum"], 200);
    for (q, want) in [
        ("limit=0", StatusCode::BAD_REQUEST),
        ("limit=201", StatusCode::BAD_REQUEST),
        ("limit=1", StatusCode::OK),
        ("limit=200", StatusCode::OK),
    ] {
        let (status, body) = send(&app, "GET", &format!("/v1/catalog/products?{q}")).await;
        assert_eq!(status, want, "{q}: {body}");
        if status == StatusCode::BAD_REQUEST {
            assert_eq!(body["error"]["code"], "bad_request");
        }
    }
}
