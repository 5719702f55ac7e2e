//! The Lambda shard processor's checkpoint store: DynamoDB table `<prefix>lambda-checkpoints`,
//! one item per shard, every write conditioned on the position the invocation started from.
//!
//! ```text
//!  item: shard_id (hash key) | committed (seq, "" before any) | checkpoint (JSON) | updated_at_ms
//!
//!  load_checkpoint   GetItem (consistent) ─► remember what `committed` was
//!  save_checkpoint   UpdateItem SET checkpoint, committed
//!                      IF attribute_not_exists(shard_id)      (no item when loaded)
//!                      IF committed = <the value remembered>  (otherwise)
//!                    ok ─► remember the new `committed`
//!                    condition failed ─► IngestError::LeaseLost: another invocation moved
//!                      the shard's checkpoint since this one loaded it; this invocation stops
//!                      and reports its records as failed, the retry starts from the new
//!                      checkpoint and skips what it covers
//! ```
//!
//! The event source mapping runs one invocation per shard at a time
//! (ParallelizationFactor 1), so the condition fails only when an invocation that Lambda
//! gave up on (timeout) is still writing while its retry runs: the older writer loses and
//! never moves the checkpoint backwards. It is the lease tenure token of the long-running
//! workers, with the position itself as the token.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use recstream_ingest::aws::dynamodb::attr::{self, n, s};
use recstream_ingest::aws::dynamodb::{KeySchema, ensure_table, sdk_error};
use recstream_ingest::aws::{AwsConfig, RetryPolicy, is_retriable, retry};
use recstream_ingest::{CheckpointStore, IngestError, ShardCheckpoint, ShardId};

/// The table's name without the prefix (`aws.table(TABLE)` gives the full name).
pub const TABLE: &str = "lambda-checkpoints";
/// The table's key.
pub const KEY: KeySchema<'static> = KeySchema::hash(A_SHARD);

const A_SHARD: &str = "shard_id";
const A_COMMITTED: &str = "committed";
const A_CHECKPOINT: &str = "checkpoint";
const A_UPDATED: &str = "updated_at_ms";

/// What the item held when this process last read or wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// No item.
    Absent,
    /// The item's `committed` attribute ("" = nothing committed yet).
    Committed(String),
}

/// Checkpoints with optimistic concurrency on the committed position.
pub struct ConditionalCheckpoints {
    client: Client,
    table: String,
    policy: RetryPolicy,
    seen: Mutex<HashMap<ShardId, Seen>>,
}

impl ConditionalCheckpoints {
    /// The store on `aws.table("lambda-checkpoints")`.
    pub fn new(client: Client, aws: &AwsConfig) -> ConditionalCheckpoints {
        ConditionalCheckpoints {
            client,
            table: aws.table(TABLE),
            policy: aws.retry_policy(),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The full table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates the table unless it exists (tests and `init`; the SAM template creates it
    /// in a deployment).
    pub async fn create_table_if_missing(&self) -> Result<bool, IngestError> {
        ensure_table(&self.client, &self.table, KEY, &self.policy).await
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<ShardId, Seen>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn committed_of(cp: &ShardCheckpoint) -> String {
    cp.committed
        .as_ref()
        .map(|c| c.as_str().to_string())
        .unwrap_or_default()
}

#[async_trait]
impl CheckpointStore for ConditionalCheckpoints {
    async fn load_checkpoint(
        &self,
        shard: &ShardId,
    ) -> Result<Option<ShardCheckpoint>, IngestError> {
        let out = retry(&self.policy, "dynamodb", "GetItem", is_retriable, || {
            self.client
                .get_item()
                .table_name(&self.table)
                .key(A_SHARD, s(shard.as_str()))
                .consistent_read(true)
                .send()
        })
        .await
        .map_err(|e| sdk_error("GetItem", &e))?;
        let Some(item) = out.item() else {
            self.seen().insert(shard.clone(), Seen::Absent);
            return Ok(None);
        };
        let json = attr::get_s(item, A_CHECKPOINT).ok_or_else(|| {
            IngestError::Checkpoint(format!(
                "checkpoint item of shard {shard} has no checkpoint"
            ))
        })?;
        let cp: ShardCheckpoint = serde_json::from_str(json).map_err(|e| {
            IngestError::Checkpoint(format!("checkpoint of shard {shard} is not valid: {e}"))
        })?;
        let committed = attr::get_s(item, A_COMMITTED).unwrap_or_default();
        if committed != committed_of(&cp) {
            return Err(IngestError::Checkpoint(format!(
                "checkpoint of shard {shard}: attribute committed = {committed:?} disagrees with the checkpoint"
            )));
        }
        self.seen()
            .insert(shard.clone(), Seen::Committed(committed.to_string()));
        Ok(Some(cp))
    }

    async fn save_checkpoint(
        &self,
        shard: &ShardId,
        cp: &ShardCheckpoint,
    ) -> Result<(), IngestError> {
        let Some(seen) = self.seen().get(shard).cloned() else {
            return Err(IngestError::Checkpoint(format!(
                "checkpoint of shard {shard} saved without being loaded first"
            )));
        };
        let json = serde_json::to_string(cp)
            .map_err(|e| IngestError::Checkpoint(format!("encoding a checkpoint: {e}")))?;
        let committed = committed_of(cp);
        let now = chrono::Utc::now().timestamp_millis();
        let res = retry(&self.policy, "dynamodb", "UpdateItem", is_retriable, || {
            let req = self
                .client
                .update_item()
                .table_name(&self.table)
                .key(A_SHARD, s(shard.as_str()))
                .update_expression("SET #cp = :cp, #c = :c, #u = :u")
                .expression_attribute_names("#cp", A_CHECKPOINT)
                .expression_attribute_names("#c", A_COMMITTED)
                .expression_attribute_names("#u", A_UPDATED)
                .expression_attribute_values(":cp", s(&json))
                .expression_attribute_values(":c", s(&committed))
                .expression_attribute_values(":u", n(now));
            match &seen {
                Seen::Absent => req
                    .condition_expression("attribute_not_exists(#k)")
                    .expression_attribute_names("#k", A_SHARD),
                Seen::Committed(prev) => req
                    .condition_expression("#c = :prev")
                    .expression_attribute_values(":prev", s(prev)),
            }
            .send()
        })
        .await;
        match res {
            Ok(_) => {
                self.seen()
                    .insert(shard.clone(), Seen::Committed(committed));
                Ok(())
            }
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                // Whatever is there now is someone else's: forget it, the next load reads it.
                self.seen().remove(shard);
                tracing::warn!(%shard, "checkpoint moved by a concurrent invocation; this one stops");
                Err(IngestError::LeaseLost {
                    shard: shard.to_string(),
                    owner: "a concurrent invocation (the checkpoint moved since it was loaded)"
                        .into(),
                })
            }
            Err(e) => Err(sdk_error("UpdateItem", &e)),
        }
    }
}
