//! Metrics of the ingest stage, named `recstream_ingest_<what>_<unit>`. Emitted per batch,
//! with bounded labels only (shard, reason kind) — never a user or product id.

/// Records read from a source (label: `shard`).
pub const RECORDS_READ_TOTAL: &str = "recstream_ingest_records_read_total";
/// Records that decoded and validated (label: `shard`).
pub const EVENTS_ACCEPTED_TOTAL: &str = "recstream_ingest_events_accepted_total";
/// Records sent to the dead letters (labels: `shard`, `reason`).
pub const DEAD_LETTERS_TOTAL: &str = "recstream_ingest_dead_letters_total";
/// Accepted events whose type is not one recstream knows (label: `shard`).
pub const UNKNOWN_TYPES_TOTAL: &str = "recstream_ingest_unknown_types_total";
/// Parquet objects written to the archive.
pub const ARCHIVE_OBJECTS_TOTAL: &str = "recstream_ingest_archive_objects_total";
/// Bytes written to the archive.
pub const ARCHIVE_BYTES_TOTAL: &str = "recstream_ingest_archive_bytes_total";
/// Rows written to the archive.
pub const ARCHIVE_ROWS_TOTAL: &str = "recstream_ingest_archive_rows_total";
/// Time to encode and upload one archive roll.
pub const ARCHIVE_ROLL_SECONDS: &str = "recstream_ingest_archive_roll_seconds";
/// Milliseconds between a record's arrival in the stream and its processing (label: `shard`).
pub const LAG_MILLISECONDS: &str = "recstream_ingest_lag_milliseconds";
/// Retries of AWS calls (labels: `service`, `operation`).
pub const AWS_RETRIES_TOTAL: &str = "recstream_ingest_aws_retries_total";
/// Served lists and feedback events seen by the processor's join (labels: `shard`,
/// `outcome`: `served`, `duplicate`, `joined`, `early` (feedback before its list),
/// `unmatched`, `expired`, `foreign_user`, `evicted`).
pub const FEEDBACK_JOIN_TOTAL: &str = "recstream_ingest_feedback_join_total";
/// Labelled impressions the join wrote for the online learners (labels: `shard`, `label`:
/// `engaged`, `ignored`).
pub const FEEDBACK_ROWS_TOTAL: &str = "recstream_ingest_feedback_rows_total";
/// Catalog entries (`product` events) the shard processors wrote to the shop's catalog.
pub const CATALOG_WRITES_TOTAL: &str = "recstream_ingest_catalog_writes_total";
