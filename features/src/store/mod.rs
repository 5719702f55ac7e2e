//! The feature store seam (the checkpoint store seam sits beside the sources, in
//! `recstream_ingest::source::checkpoint`).
//!
//! ```text
//!  Aggregator::drain ─► FlushBatch ─► FeatureStore::write ─┬─► EmbeddedStore (redb on local disk)
//!                                                          └─► DynamoDB
//!  scoring ◄─ FeatureStore::{user, products, trending, category_top} (merged across shards, cached)
//!  EmbeddedStore::checkpoints ─► recstream_ingest::EmbeddedCheckpoints (same redb file)
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

use crate::aggregate::FlushBatch;
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
