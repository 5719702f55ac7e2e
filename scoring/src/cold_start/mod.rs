//! The cold-start cache: precomputed top-N lists per demographic segment and overall.
//!
//! ```text
//!  training / popularity job ─► ColdStartCache::put ─┬─► InProcessCache (embedded)
//!                                                    └─► Redis (AWS mode, ElastiCache)
//!  recommend(user without history) ─► ColdStartCache::top(segment) ─► or `OVERALL`
//! ```

#[cfg(any(test, feature = "testsuite"))]
pub mod conformance;
pub mod memory;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::ScoringError;

pub use memory::InProcessCache;

/// The key of the list for users with no known segment.
pub const OVERALL: &str = "overall";

/// A precomputed list: product ids with scores, best first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ColdStartList {
    /// `(product_id, score)`, best first.
    pub items: Vec<(String, f64)>,
    /// Which model version (or job) produced it.
    pub source: String,
}

/// Where precomputed cold-start lists live: in process (embedded) or Redis (AWS).
#[async_trait]
pub trait ColdStartCache: Send + Sync + 'static {
    /// The list of `segment` (a demographic key or [`OVERALL`]), or `None` if none was put.
    async fn top(&self, segment: &str) -> Result<Option<Arc<ColdStartList>>, ScoringError>;
    /// Stores (replaces) the list of `segment`.
    async fn put(&self, segment: &str, list: &ColdStartList) -> Result<(), ScoringError>;
    /// A short name for responses and metrics (`in_process`, `redis`).
    fn name(&self) -> &'static str;
}
