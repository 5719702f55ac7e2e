//! The http-api function: API Gateway HTTP API (payload v2.0) events, as API Gateway sends
//! them with the Cognito JWT authorizer (fixtures derived from aws_lambda_events'
//! `example-apigw-v2-request-jwt-authorizer.json`), through `lambda_http`'s own adapter —
//! the code path `lambda_http::run` takes — into the server's router. Runs embedded
//! (local stores), so it needs no service.

use std::path::Path;

use lambda_http::request::LambdaRequest;
use lambda_http::{Adapter, Context, LambdaEvent, Service};
use recstream::config::Config;
use recstream_lambda::http;
use recstream_serving::auth::{ApiClient, Scope};
use serde_json::Value;

/// The storefront's API key in this test, and its SHA-256 as the configuration holds it
/// (`printf %s KEY | sha256sum`).
const STOREFRONT_KEY: &str = "lambda-test-storefront-key";
const STOREFRONT_KEY_SHA256: &str =
    "464b9bf864d0228aeff201dac45c02e49841b2c9373b80f1d9d26c14f21795af";

/// `event` as the storefront sends it: with its API key.
fn with_key(mut event: Value) -> Value {
    event["headers"]["x-api-key"] = STOREFRONT_KEY.into();
    event
}

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

async fn invoke(router: &axum::Router, event: Value) -> (u16, Value) {
    let req: LambdaRequest = serde_json::from_value(event).expect("an API Gateway v2 event");
    let mut adapter = Adapter::from(router.clone());
    let resp = adapter
        .call(LambdaEvent::new(req, Context::default()))
        .await
        .expect("the adapter answers");
    // The response API Gateway receives (payload v2.0 response shape).
    let v = serde_json::to_value(&resp).unwrap();
    let status = v["statusCode"].as_u64().expect("statusCode") as u16;
    let body = v["body"].as_str().unwrap_or("null");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn get(path: &str, query: &str) -> Value {
    let mut ev = fixture("apigw-v2-get-recommendations.json");
    ev["rawPath"] = path.into();
    ev["rawQueryString"] = query.into();
    ev["requestContext"]["http"]["path"] = path.into();
    let params: serde_json::Map<String, Value> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    ev["queryStringParameters"] = Value::Object(params);
    ev
}

#[tokio::test]
async fn api_gateway_v2_events_reach_the_servers_router() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.embedded.data_dir = dir.path().join("data");
    cfg.commerce.data_dir = dir.path().join("commerce");
    cfg.model.reload_interval_ms = 0;
    cfg.server.auth.clients = vec![ApiClient {
        id: "storefront".into(),
        scopes: vec![Scope::EventsWrite, Scope::RecommendationsRead],
        key_sha256: vec![STOREFRONT_KEY_SHA256.into()],
    }];
    let app = http::build(cfg).await.expect("the router builds");

    let (status, body) = invoke(&app.router, get("/healthz", "")).await;
    assert_eq!(status, 200, "{body}");

    // The same credentials as the server's front door: the fixture's bearer token is not
    // one this deployment verifies (no JWKS configured), so without a key: 401 JSON.
    let (status, body) = invoke(&app.router, fixture("apigw-v2-post-events.json")).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");

    // The collector takes the event from the POST's JSON body.
    let (status, body) = invoke(&app.router, with_key(fixture("apigw-v2-post-events.json"))).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 1);

    // The storefront's call, as the fixture carries it.
    let (status, body) = invoke(
        &app.router,
        with_key(fixture("apigw-v2-get-recommendations.json")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["recommendation_id"].is_string(), "{body}");
    assert!(body["strategy"].is_string(), "{body}");
    assert!(body["items"].is_array(), "{body}");

    // Errors keep the API's JSON shape and stable codes behind the Lambda front door.
    let (status, body) = invoke(&app.router, with_key(get("/v1/recommendations/u1", "n=0"))).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_request", "{body}");
    let _ = app.shutdown.send(true);
}
