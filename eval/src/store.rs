//! A read-only [`FeatureStore`] over a [`Replay`]: the feature pipeline's own
//! `Aggregator` (and the top lists the flush publishes), queried at the point in time of
//! the replay, so the served path reads exactly the features the pipeline would have
//! stored at that moment.
//!
//! ```text
//!  events ─► Replay::apply (Aggregator + top lists) ─► LiveStore ─► Recommender::recommend
//! ```

use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use recstream_features::{
    FeatureStore, FlushBatch, ProductFeatures, StoreError, TopList, UserFeatures,
};
use recstream_ingest::{Event, ShardId};
use recstream_model::Replay;

/// A [`FeatureStore`] over the evaluator's replay: the served path reads features exactly as the pipeline's aggregation left them at each target's time, with no flush in between.
pub struct LiveStore {
    replay: Mutex<Replay>,
}

impl LiveStore {
    /// Serves the features of `replay`.
    pub fn new(replay: Replay) -> LiveStore {
        LiveStore {
            replay: Mutex::new(replay),
        }
    }

    /// The replay, for applying events and for the baselines' questions.
    pub fn replay(&self) -> MutexGuard<'_, Replay> {
        self.replay.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Folds one event in (features stay live, as in production).
    pub fn apply(&self, e: &Event) {
        self.replay().apply(e);
    }
}

fn top_list(at: i64, items: &[(compact_str::CompactString, f64)]) -> Arc<TopList> {
    Arc::new(TopList {
        at,
        items: items.iter().map(|(p, w)| (p.to_string(), *w)).collect(),
    })
}

#[async_trait]
impl FeatureStore for LiveStore {
    async fn write(&self, _shard: &ShardId, _batch: &FlushBatch) -> Result<(), StoreError> {
        Err(StoreError::Config(
            "the evaluation store is read-only: events are applied by the replay".into(),
        ))
    }

    async fn user(&self, user_id: &str) -> Result<Option<Arc<UserFeatures>>, StoreError> {
        Ok(self.replay().user(user_id).map(Arc::new))
    }

    async fn products(
        &self,
        ids: &[&str],
    ) -> Result<Vec<Option<Arc<ProductFeatures>>>, StoreError> {
        let mut r = self.replay();
        Ok(ids.iter().map(|id| r.product(id)).collect())
    }

    async fn trending(&self) -> Result<Arc<TopList>, StoreError> {
        let mut r = self.replay();
        let at = r.watermark();
        Ok(top_list(at, r.trending()))
    }

    async fn category_top(&self, category: &str) -> Result<Option<Arc<TopList>>, StoreError> {
        let mut r = self.replay();
        let at = r.watermark();
        Ok(r.category_top(category).map(|l| top_list(at, l)))
    }

    async fn scan_users(&self) -> Result<Vec<Arc<UserFeatures>>, StoreError> {
        let r = self.replay();
        Ok(r.user_ids()
            .into_iter()
            .filter_map(|u| r.user(u).map(Arc::new))
            .collect())
    }
}
