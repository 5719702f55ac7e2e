//! Event sources: where raw records come from.
//!
//! ```text
//!  file replay ─┐
//!  collector  ──┼─► Source::next_batch ─► (decode, aggregate, archive) ─► commit ─► Source::on_checkpoint
//!  Kinesis    ──┘        one Source per shard, resumed after the shard's checkpoint
//! ```
//!
//! A [`Source`] reads exactly one shard. Batches are bounded by count; a source that has
//! nothing right now waits (bounded) and returns an empty batch, so the caller can flush on
//! time; `None` means the shard is finished (end of a replay, or a closed Kinesis shard).

pub mod channel;
pub mod checkpoint;
pub mod file;
pub mod kinesis;

pub use checkpoint::{CheckpointStore, EmbeddedCheckpoints};

use async_trait::async_trait;

use crate::error::IngestError;
use crate::record::{RawRecord, SeqNo, ShardId};

/// One shard's supply of raw records: file replay, the collector channel or a Kinesis
/// shard. The processor pulls batches and checkpoints what it committed.
#[async_trait]
pub trait Source: Send {
    /// The shard this source reads.
    fn shard(&self) -> &ShardId;

    /// The next batch of at most `max` records; empty when nothing arrived in time,
    /// `None` once the shard is finished.
    async fn next_batch(&mut self, max: usize) -> Result<Option<Vec<RawRecord>>, IngestError>;

    /// Everything up to and including `seq` is durable. Sources that hold leases or
    /// acknowledge upstream do it here; the default does nothing.
    async fn on_checkpoint(&mut self, _seq: &SeqNo) -> Result<(), IngestError> {
        Ok(())
    }

    /// The processor is shutting down cleanly (release leases, close connections).
    async fn close(&mut self) -> Result<(), IngestError> {
        Ok(())
    }
}
