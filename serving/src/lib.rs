//! recstream-serving: the HTTP front door. It owns the recommendation endpoints, the
//! collector, segments and the ops endpoints, and mounts the commerce router
//! (`recstream-commerce`: carts, checkout, payments, the order saga) beside them.
//!
//! ```text
//!  storefront ─► GET  /v1/recommendations/{user}?n=&context=  ─► scoring::Recommender
//!             ─► GET  /v1/products/{id}/similar                ─► co-visitation
//!             ─► POST /v1/events (collector)                   ─► ingest::EventSink (channel | Kinesis)
//!                  each served list ─► publish::ServedLists (bounded, batched) ─► the same EventSink
//!             ─► GET  /v1/segments…                            ─► segments (model's clusters)
//!             ─► /v1/carts…, /v1/checkout, /v1/orders…, webhook ─► recstream_commerce::routes
//!  ops        ─► /healthz, /readyz          internal listener ─► /metrics (Prometheus)
//!  anyone     ─► GET /openapi.json (the OpenAPI 3.1 description, [`openapi`])
//! ```
//!
//! Every write and every read of personal data needs a credential ([`auth`]): an API key
//! with a scope, or a JWT (the shopper's own data; marketing and admin roles by group).
//!
//! Every error is a 4xx/5xx with a JSON body ([`ApiError`]); nothing a client sends can
//! panic a handler. [`api`] assembles the whole router.

pub mod app;
pub mod auth;
pub mod catalog;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod publish;
pub mod segments;
pub mod server;

use std::sync::Arc;

pub use app::{AppState, EventTimeBounds, metrics_router, router};
pub use auth::{Access, AccessConfig, Caller};
pub use error::ApiError;
use recstream_commerce::CommerceState;
use utoipa_axum::routes;

/// The whole HTTP API: [`router`], the segment routes, `GET /openapi.json` and, when
/// given, commerce's.
pub fn api(
    state: AppState,
    segments: segments::SegmentsState,
    commerce: Option<CommerceState>,
) -> axum::Router {
    api_with_spec(state, segments, commerce).0
}

/// [`api`] and its OpenAPI 3.1 document (the one `GET /openapi.json` serves): both come
/// from the same route registrations, so the spec lists exactly the routes served.
pub fn api_with_spec(
    state: AppState,
    segments: segments::SegmentsState,
    commerce: Option<CommerceState>,
) -> (axum::Router, utoipa::openapi::OpenApi) {
    let access = state.access.clone();
    let mut documented = app::openapi_routes(state)
        .merge(segments::openapi_routes(segments))
        .routes(routes!(openapi::openapi_json));
    if let Some(c) = commerce {
        documented = documented.merge(recstream_commerce::openapi_routes(c));
    }
    let (router, spec) = documented.split_for_parts();
    let spec = openapi::complete(spec);
    let json = serde_json::to_vec(&spec).expect("an OpenAPI document serializes");
    let router = router.layer(axum::Extension(Arc::new(openapi::SpecJson(json.into()))));
    (app::finish(router, access), spec)
}
