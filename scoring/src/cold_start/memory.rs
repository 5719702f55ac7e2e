//! The in-process cold-start cache (the embedded default).

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use rustc_hash::FxHashMap;

use super::{ColdStartCache, ColdStartList};
use crate::error::ScoringError;

/// The cold-start cache of the embedded mode: lists in a map in this process.
#[derive(Default)]
pub struct InProcessCache {
    lists: RwLock<FxHashMap<String, Arc<ColdStartList>>>,
}

impl InProcessCache {
    /// An empty cache.
    pub fn new() -> InProcessCache {
        InProcessCache::default()
    }
}

#[async_trait]
impl ColdStartCache for InProcessCache {
    async fn top(&self, segment: &str) -> Result<Option<Arc<ColdStartList>>, ScoringError> {
        Ok(self.lists.read().expect("lock").get(segment).cloned())
    }

    async fn put(&self, segment: &str, list: &ColdStartList) -> Result<(), ScoringError> {
        self.lists
            .write()
            .expect("lock")
            .insert(segment.to_string(), Arc::new(list.clone()));
        Ok(())
    }

    fn name(&self) -> &'static str {
        "in_process"
    }
}
