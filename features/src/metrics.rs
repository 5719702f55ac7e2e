//! Metrics of the features stage, named `recstream_features_<what>_<unit>`.

/// Events folded into the aggregation state (label: `shard`).
pub const EVENTS_APPLIED_TOTAL: &str = "recstream_features_events_applied_total";
/// Flushes to the feature store (labels: `shard`, `outcome`).
pub const FLUSHES_TOTAL: &str = "recstream_features_flushes_total";
/// Items written per flush.
pub const FLUSH_ITEMS: &str = "recstream_features_flush_items";
/// Time to write one flush.
pub const FLUSH_SECONDS: &str = "recstream_features_flush_seconds";
/// Users and products held in memory (label: `kind`).
pub const STATE_KEYS: &str = "recstream_features_state_keys";
