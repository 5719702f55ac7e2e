//! The feature store seam (the checkpoint store seam sits beside the sources, in
//! `recstream_ingest::source::checkpoint`).
//!
//! ```text
//!  Aggregator::drain ─► FlushBatch ─► FeatureStore::write ─┬─► EmbeddedStore (redb on local disk)
//!                                                          └─► DynamoDB
//!  scoring ◄─ FeatureStore::{user, products, trending, category_top} (merged across shards, cached)
//!  EmbeddedStore::checkpoints ─► recstream_ingest::EmbeddedCheckpoints (same redb file)
//!
//!  Aggregator::take_delta ─► StateDelta ─► StateStore::put_state ─┬─► EmbeddedStore (redb tables)
//!  (changed rows, at each checkpoint)                              └─► DynamoDB `<prefix>state`
//!  resume ◄─ StateStore::product_states (the shard's products) + user_states (on demand)
//! ```
//!
//! Writes carry absolute values, never increments, so writing the same batch twice is
//! harmless: that is what makes a replay after a crash safe.

#[cfg(any(test, feature = "testsuite"))]
pub mod conformance;
pub mod dynamodb;
pub mod embedded;

use std::sync::Arc;

use async_trait::async_trait;
use recstream_ingest::ShardId;

use crate::aggregate::{FlushBatch, StateDelta};
use crate::error::StoreError;
use crate::view::{ProductFeatures, TopList, UserFeatures};

pub use embedded::EmbeddedStore;

/// Where flushed views are written and served from: the embedded database or DynamoDB.
/// Products and top lists are stored per shard and merged on read.
#[async_trait]
pub trait FeatureStore: Send + Sync + 'static {
    /// Upserts one shard's changed views (idempotent).
    async fn write(&self, shard: &ShardId, batch: &FlushBatch) -> Result<(), StoreError>;

    /// One user's features.
    async fn user(&self, user_id: &str) -> Result<Option<Arc<UserFeatures>>, StoreError>;

    /// Products' features, merged across shards, in the order asked.
    async fn products(&self, ids: &[&str])
    -> Result<Vec<Option<Arc<ProductFeatures>>>, StoreError>;

    /// Trending products, merged across shards.
    async fn trending(&self) -> Result<Arc<TopList>, StoreError>;

    /// The most popular products of a category, merged across shards.
    async fn category_top(&self, category: &str) -> Result<Option<Arc<TopList>>, StoreError>;

    /// Every user's features, for batch jobs (segments, training).
    async fn scan_users(&self) -> Result<Vec<Arc<UserFeatures>>, StoreError>;
}

/// Where the aggregation state of each shard lives beyond memory: one row per user and
/// per product (this shard's partial), upserted from each checkpoint's
/// [`StateDelta`]. A resumed shard loads its products and meets its users again one by
/// one; an evicted user is read back on their next event.
#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// Upserts the rows of `delta` (absolute values: writing a delta twice is harmless).
    async fn put_state(&self, shard: &ShardId, delta: &StateDelta) -> Result<(), StoreError>;

    /// The state rows of these users of `shard`, in the order asked (`None`: no row).
    async fn user_states(
        &self,
        shard: &ShardId,
        ids: &[&str],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError>;

    /// Every product row of `shard`, as (product id, row).
    async fn product_states(&self, shard: &ShardId) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Records that every row of the delta named `tag` (its checkpoint object's key) is
    /// in the store; called after [`StateStore::put_state`] returned.
    async fn mark_applied(&self, shard: &ShardId, tag: &str) -> Result<(), StoreError>;

    /// The tag of the last delta whose rows are all in the store: a resumed shard whose
    /// checkpoint names that delta need not write its rows again.
    async fn applied(&self, shard: &ShardId) -> Result<Option<String>, StoreError>;
}
