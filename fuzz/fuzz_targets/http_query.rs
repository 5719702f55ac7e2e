//! Request targets from anyone, through the whole hardened public router: any path
//! segment and query string on the GET endpoints (recommendations, similar products,
//! segment members, orders, the catalog, carts) is parsed into the handlers' query structs
//! and checked; the answer is never a 500 and every error is the JSON error body.
#![no_main]

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Request, Uri};
use libfuzzer_sys::fuzz_target;
use recstream_commerce::auth::jsonwebtoken;
use recstream_commerce::{CommerceConfig, CommerceState, ErrorBody, Secret, Secrets};
use recstream_features::{EventCounts, UserFeatures};
use recstream_ingest::sink::{EventSink, OutRecord, SinkError};
use recstream_serving::auth::{AccessConfig, ApiClient, Scope, hash_key};
use recstream_serving::segments::SegmentsState;
use recstream_serving::server::{ServerLimits, harden};
use recstream_serving::{Access, AppState, EventTimeBounds};
use tower::ServiceExt;

const SECRET: &str = "fuzz-hs256-secret-0123456789";
const KEY: &str = "rsk_fuzz-storefront";

struct Discard;

#[async_trait::async_trait]
impl EventSink for Discard {
    async fn send(&self, _: Vec<OutRecord>) -> Result<(), SinkError> {
        Ok(())
    }
}

struct Fixture {
    rt: tokio::runtime::Runtime,
    app: Router,
    shopper: String,
    marketing: String,
    _dir: tempfile::TempDir,
}

fn token(sub: &str, groups: &[&str]) -> String {
    let claims = serde_json::json!({
        "sub": sub,
        "exp": jsonwebtoken::get_current_timestamp() + 365 * 24 * 3600,
        "cognito:groups": groups,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let app = rt.block_on(async {
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
            let commerce = CommerceState::builder(
                CommerceConfig::for_tests(dir.path().join("commerce")),
                Arc::new(Discard),
            )
            .secrets(Secrets {
                jwt_hs256: Some(Secret::new(SECRET)),
                ..Secrets::default()
            })
            .build()
            .await
            .unwrap();
            let access = AccessConfig {
                clients: vec![ApiClient {
                    id: "storefront".into(),
                    scopes: vec![Scope::EventsWrite, Scope::RecommendationsRead],
                    key_sha256: vec![hash_key(KEY)],
                }],
                ..AccessConfig::default()
            };
            let state = AppState {
                recommender,
                collector: Arc::new(Discard),
                access: Arc::new(Access::new(&access, Some(commerce.authenticator()))),
                ready: Arc::new(AtomicBool::new(true)),
                max_record_bytes: 64 * 1024,
                event_time: EventTimeBounds::default(),
                served: None,
            };
            let users: Vec<UserFeatures> = (0..40)
                .map(|i| UserFeatures {
                    user_id: format!("u{i:02}"),
                    counts: EventCounts {
                        view: 1 + (i % 7) as u64,
                        purchase: (i % 3 == 0) as u64,
                        ..Default::default()
                    },
                    spend_minor: 1000 * i as i64,
                    last_ts: 1000 * i as i64,
                    ..Default::default()
                })
                .collect();
            let params = recstream_model::SegmentParams {
                k: 3,
                ..Default::default()
            };
            let segments = recstream_model::Segments::fit(&users, &params).unwrap();
            let segments = SegmentsState::new(Some(Arc::new(segments)));
            let app = recstream_serving::api(state, segments, Some(commerce));
            harden(app, &ServerLimits::default())
        });
        Fixture {
            rt,
            app,
            shopper: token("fuzz-shopper", &[]),
            marketing: token("fuzz-marketing", &["marketing"]),
            _dir: dir,
        }
    })
}

/// Percent-encodes everything but unreserved characters: any bytes as one path segment.
fn segment(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len() * 3);
    for b in raw {
        if b.is_ascii_alphanumeric() || b"-._~".contains(b) {
            out.push(*b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let (param, query) = match rest.iter().position(|b| *b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&b"fuzz-shopper"[..], rest),
    };
    let Ok(query) = std::str::from_utf8(query) else {
        return;
    };
    let p = segment(param);
    let f = fixture();
    let (path, auth) = match which % 7 {
        0 => (
            format!("/v1/recommendations/{p}"),
            ("x-api-key", KEY.to_string()),
        ),
        1 => (
            format!("/v1/products/{p}/similar"),
            ("x-api-key", KEY.to_string()),
        ),
        2 => (
            format!("/v1/segments/{p}/users"),
            ("authorization", format!("Bearer {}", f.marketing)),
        ),
        3 => (
            "/v1/orders".to_string(),
            ("authorization", format!("Bearer {}", f.shopper)),
        ),
        4 => (
            "/v1/catalog/products".to_string(),
            ("x-none", String::new()),
        ),
        5 => (
            format!("/v1/catalog/products/{p}"),
            ("x-none", String::new()),
        ),
        _ => (
            format!("/v1/carts/{p}"),
            ("authorization", format!("Bearer {}", f.shopper)),
        ),
    };
    // Only request targets an HTTP server would accept reach the router.
    let Ok(uri) = format!("{path}?{query}").parse::<Uri>() else {
        return;
    };
    let req = Request::get(uri)
        .header(auth.0, auth.1)
        .body(Body::empty())
        .unwrap();
    f.rt.block_on(async {
        let resp = f.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let body = to_bytes(resp.into_body(), 1 << 22).await.unwrap();
        assert_ne!(status.as_u16(), 500, "{path}?{query}: {body:?}");
        if status.is_client_error() || status.is_server_error() {
            let e: ErrorBody = serde_json::from_slice(&body)
                .unwrap_or_else(|_| panic!("{path}?{query}: non-JSON {status}: {body:?}"));
            assert!(!e.error.code.is_empty());
        }
    });
});
