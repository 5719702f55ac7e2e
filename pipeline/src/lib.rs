//! recstream-pipeline: the shard processor and its checkpoint protocol, as a library.
//! The `recstream` binary's workers and a Lambda handler on a Kinesis event source run
//! the same code; nothing here needs a CLI, an HTTP server or a terminal.
//!
//! ```text
//!  ingest::Source (file replay · collector channel · Kinesis shard with its lease)
//!        │ next_batch
//!        ▼
//!  processor::ShardProcessor (one per shard)
//!        ├─ decode (+ catalog::ProductCatalog: unknown product ids dead-lettered)
//!        │        ─► features::Aggregator ─► FeatureStore::write     (every flush interval)
//!        ├─ join::FeedbackJoin: served lists ⋈ clicks ─► feedback rows ─► ObjectStore (at each checkpoint)
//!        ├─ archive: Parquet + dead letters ─► ObjectStore            (at each checkpoint)
//!        └─ checkpoint: intent ─► roll ─► flush ─► state delta ─► CheckpointStore::save
//!                                                     └─► StateStore (rows) ─► evict idle users
//!                                                     └─► Source::on_checkpoint
//!
//!  Pipeline::spawn_shard      resume (checkpoint + delta + state rows) ─► ShardProcessor::run
//!  kinesis::KinesisWorkers    one processor per lease the LeaseCoordinator hands out,
//!                             stopped when the lease is lost; shards read to their end
//!  kinesis::AwsParts          the AWS clients (Kinesis, lease table, DynamoDB, S3) and
//!                             `init` (stream, tables, bucket; idempotent)
//! ```
//!
//! [`Sinks`] holds the stores a processor writes to, behind their traits; the embedded
//! and AWS implementations both live in `recstream-ingest` and `recstream-features`.

pub mod catalog;
pub mod join;
pub mod kinesis;
pub mod processor;
mod runner;

pub use catalog::ProductCatalog;
pub use processor::{
    ProcessorConfig, ProcessorError, Resume, ShardProcessor, ShardStats, ShardSummary, Sinks,
    resume,
};
pub use runner::{Pipeline, ShardTask};
