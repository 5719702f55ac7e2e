//! The DynamoDB checkpoint store is the lease table itself: the checkpoint is an
//! attribute of the shard's lease item, written conditionally on the lease's tenure
//! (see [`crate::source::kinesis::lease`] for the protocol).

use async_trait::async_trait;

use super::CheckpointStore;
use crate::error::IngestError;
use crate::record::{ShardCheckpoint, ShardId};
use crate::source::kinesis::LeaseCoordinator;

#[async_trait]
impl CheckpointStore for LeaseCoordinator {
    async fn load_checkpoint(
        &self,
        shard: &ShardId,
    ) -> Result<Option<ShardCheckpoint>, IngestError> {
        LeaseCoordinator::load_checkpoint(self, shard).await
    }

    async fn save_checkpoint(
        &self,
        shard: &ShardId,
        cp: &ShardCheckpoint,
    ) -> Result<(), IngestError> {
        LeaseCoordinator::save_checkpoint(self, shard, cp).await
    }
}
