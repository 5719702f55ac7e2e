//! The checkpoint store seam: where each shard's position is kept. Checkpoints belong to
//! the source — a Kinesis checkpoint lives in the shard's lease — so the seam sits here,
//! beside the sources, with its two implementations.
//!
//! ```text
//!  ShardProcessor ─► CheckpointStore::{load_checkpoint, save_checkpoint}
//!                        ├─► EmbeddedCheckpoints  (redb: table `checkpoints`, one row per shard)
//!                        └─► LeaseCoordinator     (DynamoDB: the checkpoint attribute of the
//!                                                  shard's lease, written only by its holder)
//! ```
//!
//! A save is durable when it returns. A store whose writes are conditional on a lease
//! (the Kinesis one) fails with [`IngestError::LeaseLost`] once the lease is someone
//! else's, so a zombie worker never moves a checkpoint.

mod embedded;
mod lease;

use async_trait::async_trait;

use crate::error::IngestError;
use crate::record::{ShardCheckpoint, ShardId};

pub use embedded::EmbeddedCheckpoints;

/// Loads and saves shard checkpoints.
#[async_trait]
pub trait CheckpointStore: Send + Sync + 'static {
    /// The checkpoint of `shard`, if one was ever saved.
    async fn load_checkpoint(
        &self,
        shard: &ShardId,
    ) -> Result<Option<ShardCheckpoint>, IngestError>;

    /// Replaces the checkpoint of `shard` (durable on return).
    async fn save_checkpoint(
        &self,
        shard: &ShardId,
        cp: &ShardCheckpoint,
    ) -> Result<(), IngestError>;
}
