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
pub mod publish;
pub mod segments;
pub mod server;

pub use app::{AppState, EventTimeBounds, metrics_router, router};
pub use auth::{Access, AccessConfig, Caller};
pub use error::ApiError;
use recstream_commerce::CommerceState;

/// The whole HTTP API: [`router`], the segment routes and, when given, commerce's.
pub fn api(
    state: AppState,
    segments: segments::SegmentsState,
    commerce: Option<CommerceState>,
) -> axum::Router {
    let access = state.access.clone();
    let app = router(state)
        .merge(segments::routes(segments))
        .layer(axum::Extension(access));
    match commerce {
        Some(c) => app.merge(recstream_commerce::routes(c)),
        None => app,
    }
}
