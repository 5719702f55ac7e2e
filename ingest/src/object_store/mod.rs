//! Object stores: where the archive, dead letters, state snapshots and models live.
//!
//! ```text
//!  archive / dead letters / snapshots / models ─► ObjectStore ─┬─► LocalObjectStore (a directory)
//!                                                              └─► S3 (aws-sdk-s3)
//! ```
//!
//! Both implementations use the same key layout (`events/dt=…/hour=…/…parquet`), so a local
//! archive can be synced to S3 as it is, and every reader (DuckDB, pyarrow, Athena) sees
//! the same thing. Writes are atomic: a reader sees the whole object or nothing.

#[cfg(any(test, feature = "testsuite"))]
pub mod conformance;
pub mod local;
pub mod s3;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::IngestError;

pub use local::LocalObjectStore;
pub use s3::S3ObjectStore;

/// A flat key-value store of immutable-ish objects (the archive, dead letters, snapshots
/// and models): S3 in production, a local directory in the embedded mode.
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Writes (or overwrites) an object atomically.
    async fn put(&self, key: &str, body: Bytes) -> Result<(), IngestError>;
    /// Reads an object; `None` if it does not exist.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, IngestError>;
    /// Keys under `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, IngestError>;
    /// Deletes an object; deleting a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<(), IngestError>;
    /// Where this store points, for logs (`file:///var/recstream`, `s3://bucket/prefix`).
    fn describe(&self) -> String;
}
