//! recstream-ingest: the event model, sources, decoding and the raw-event archive.
//!
//! ```text
//!  datasets/ (REES46, Diginetica, YooChoose, OTTO) ─► file replay ─┐
//!  POST /v1/events (collector) ───────────────────► channel ───────┼─► Source (one per shard)
//!  Kinesis shards (leases in DynamoDB) ────────────────────────────┘        │
//!                                                                           ▼
//!                                          decode + validate ──► Event ──► features (next crate)
//!                                               │      └──────────► archive: Parquet, dt=/hour= ─► ObjectStore
//!                                               └─ DecodeError ──► dead letters ─────────────────► ObjectStore
//!
//!  producers (collector, commerce, served lists) ─► sink::EventSink ─► channel | Kinesis (PutRecords)
//!  processor join (recommendation ⋈ click) ─► feedback::FeedbackRow ─► feedback/<shard>/<seq>.jsonl
//! ```

pub mod archive;
pub mod aws;
pub mod datasets;
pub mod decode;
pub mod error;
pub mod event;
pub mod event_ref;
pub mod feedback;
pub mod metrics;
pub mod object_store;
pub mod record;
pub mod scan;
pub mod sink;
pub mod source;

pub use decode::{DecodeError, decode, decode_ref};
pub use error::IngestError;
pub use event::{Event, EventType, Money, ProductInfo, Profile, ServedItem, Timestamp};
pub use event_ref::{EventRef, MoneyRef, ProfileRef, Str};
pub use object_store::{LocalObjectStore, ObjectStore};
pub use record::{RawRecord, SeqNo, ShardCheckpoint, ShardId};
pub use sink::{EventSink, OutRecord, SinkError};
pub use source::{CheckpointStore, EmbeddedCheckpoints, Source};
