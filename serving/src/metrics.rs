//! Metrics of the serving stage, named `recstream_serving_<what>_<unit>`.

/// HTTP requests (labels: `route` (the matched pattern), `status`).
pub const REQUESTS_TOTAL: &str = "recstream_serving_requests_total";
/// HTTP request latency (label: `route`).
pub const REQUEST_SECONDS: &str = "recstream_serving_request_seconds";
/// Events accepted by the collector.
pub const EVENTS_COLLECTED_TOTAL: &str = "recstream_serving_events_collected_total";
/// Events rejected by the collector (label: `reason`).
pub const EVENTS_REJECTED_TOTAL: &str = "recstream_serving_events_rejected_total";
/// Connections closed on accept because `server.limits.max_connections` were open.
pub const CONNECTIONS_REFUSED_TOTAL: &str = "recstream_serving_connections_refused_total";
