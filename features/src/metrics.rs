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
/// Bytes of the state delta written per checkpoint.
pub const CHECKPOINT_BYTES: &str = "recstream_features_checkpoint_bytes";
/// State rows (users and products) written per checkpoint.
pub const CHECKPOINT_ROWS: &str = "recstream_features_checkpoint_rows";
/// Users read back from the state store (label: `result` = found | new).
pub const STATE_LOADS_TOTAL: &str = "recstream_features_state_loads_total";
/// Users that left memory at a checkpoint (idle, or past the hot-state bound).
pub const EVICTED_USERS_TOTAL: &str = "recstream_features_evicted_users_total";
