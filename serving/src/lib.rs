//! recstream-serving: the HTTP API.
//!
//! ```text
//!  storefront ─► GET  /v1/recommendations/{user}?n=&context=  ─► scoring::Recommender
//!             ─► GET  /v1/products/{id}/similar                ─► co-visitation
//!             ─► POST /v1/events                               ─► EventSink (channel | Kinesis)
//!  ops        ─► /healthz, /readyz, /metrics (Prometheus)
//! ```
//!
//! Every error is a 4xx/5xx with a JSON body; nothing a client sends can panic a handler.

pub mod app;
pub mod collector;
pub mod error;
pub mod metrics;
pub mod segments;

pub use app::{AppState, router};
pub use collector::{EventSink, OutRecord, SinkError};
pub use error::ApiError;
pub mod commerce;
