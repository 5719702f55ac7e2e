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
/// Served lists published as `recommendation` events.
pub const SERVED_LISTS_PUBLISHED_TOTAL: &str = "recstream_serving_served_lists_published_total";
/// Served lists not published (label: `reason` = `full`: the queue was full under
/// back-pressure, `sink`: the stream refused the batch, `too_large`: over the record
/// limit, `closed`: the publisher had stopped).
pub const SERVED_LISTS_DROPPED_TOTAL: &str = "recstream_serving_served_lists_dropped_total";
/// Served lists published without their feature rows (over the record limit with them).
pub const SERVED_LISTS_TRIMMED_TOTAL: &str = "recstream_serving_served_lists_trimmed_total";
