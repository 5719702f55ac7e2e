//! Online learning: the FTRL ranker keeps learning, between batch retrainings, from the
//! feedback the shard processors joined to served lists — whichever server served the
//! list and whichever took the click.
//!
//! ```text
//!  GET /v1/recommendations (any server) ─► Recommender ─► the served items' pair features,
//!        exactly as ranked ─► `recommendation` event on the stream (serving publishes it)
//!  POST /v1/events {recommendation_id, product_id, impressions?, type: click|add_to_cart|…}
//!        (any server) ─► the stream
//!  shard processor (worker or Lambda): join ─► labelled rows ─► feedback/<shard>/<end>.jsonl
//!  FeedbackFeed::poll (every server, every `feedback_poll_ms`): objects not yet applied,
//!        in (shard, position) order ─► OnlineLearner::learn: rows of the live version
//!        ─► OnlineRanker::update_rows (linfa-ftrl FitWith) ─► ranks the next requests
//!  model reload ─► OnlineLearner::sync: restart from the new artifact's FTRL state and
//!        read every feedback object again (rows of the new version only)
//! ```
//!
//! Every server reads the same objects, so every server's live model learns the same
//! rows; within a shard they are applied in stream order.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};

use recstream_features::{ProductFeatures, UserFeatures};
use recstream_ingest::ObjectStore;
use recstream_ingest::feedback::{
    FEEDBACK_PREFIX, FeedbackRow, decode_feedback, parse_feedback_key,
};
use recstream_model::{
    CandidateSignals, LinearScorer, ModelArtifact, NUM_FEATURES, OnlineRanker, PairFeatures,
};

use crate::error::ScoringError;
use crate::metrics as m;

/// The live FTRL model of one artifact version.
struct Live {
    version: String,
    ranker: OnlineRanker,
    /// Feedback objects already applied to this live model.
    applied: HashSet<String>,
}

/// What feedback taught the model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Learned {
    /// Served items labelled 1 (engaged with).
    pub positives: usize,
    /// Served items labelled 0 (shown in a list the shopper engaged with, ignored).
    pub negatives: usize,
}

impl std::ops::AddAssign for Learned {
    fn add_assign(&mut self, o: Learned) {
        self.positives += o.positives;
        self.negatives += o.negatives;
    }
}

/// The live FTRL model that ranks requests and learns from joined feedback (see the module
/// docs). Shared by the ranker and the [`FeedbackFeed`].
#[derive(Default)]
pub struct OnlineLearner {
    live: RwLock<Option<Live>>,
}

impl OnlineLearner {
    /// A learner with no live model until the first [`OnlineLearner::sync`].
    pub fn new() -> OnlineLearner {
        OnlineLearner::default()
    }

    /// Starts learning from `model`'s FTRL state (a new version replaces the old live
    /// model and forgets which feedback it applied; the same version keeps what was
    /// learned since it loaded).
    pub fn sync(&self, model: &ModelArtifact) {
        let mut live = self.live.write().unwrap_or_else(|e| e.into_inner());
        if live
            .as_ref()
            .is_some_and(|l| l.version == model.meta.version)
        {
            return;
        }
        *live = Some(Live {
            version: model.meta.version.clone(),
            ranker: model.online.clone(),
            applied: HashSet::new(),
        });
    }

    /// The live model's version, if any.
    pub fn version(&self) -> Option<String> {
        self.live
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|l| l.version.clone())
    }

    /// Scores with the live model if it belongs to `version`; false otherwise.
    pub fn score_into(
        &self,
        version: &str,
        user: &UserFeatures,
        candidates: &[(&ProductFeatures, CandidateSignals)],
        out: &mut Vec<f64>,
    ) -> bool {
        self.score_with_rows(version, user, candidates, out, None)
    }

    /// [`OnlineLearner::score_into`]; with `rows`, also keeps each candidate's feature row
    /// there (see [`LinearScorer::score_with_rows`]).
    pub fn score_with_rows(
        &self,
        version: &str,
        user: &UserFeatures,
        candidates: &[(&ProductFeatures, CandidateSignals)],
        out: &mut Vec<f64>,
        rows: Option<&mut Vec<PairFeatures>>,
    ) -> bool {
        let live = self.live.read().unwrap_or_else(|e| e.into_inner());
        match live.as_ref() {
            Some(l) if l.version == version => {
                l.ranker.score_with_rows(user, candidates, out, rows);
                true
            }
            _ => false,
        }
    }

    /// Whether the feedback object `key` was applied to the live model of `version`.
    fn applied(&self, version: &str, key: &str) -> bool {
        let live = self.live.read().unwrap_or_else(|e| e.into_inner());
        live.as_ref()
            .is_some_and(|l| l.version == version && l.applied.contains(key))
    }

    /// Learns the rows of one feedback object, once: rows of another model version (or
    /// without a feature row: not ranked by a model) are skipped; a second call with the
    /// same `key` learns nothing. `version` is the live version the caller saw when it
    /// listed the object: if the model changed since, nothing is learned or marked.
    pub fn learn(&self, version: &str, key: &str, rows: &[FeedbackRow]) -> Learned {
        let mut xs: Vec<PairFeatures> = Vec::with_capacity(rows.len());
        let mut labels = Vec::with_capacity(rows.len());
        let mut other_version = 0u64;
        for r in rows {
            if r.model_version.as_deref() != Some(version) || r.features.len() != NUM_FEATURES {
                other_version += 1;
                continue;
            }
            let mut x = [0.0; NUM_FEATURES];
            for (d, s) in x.iter_mut().zip(&r.features) {
                *d = f64::from(*s);
            }
            xs.push(x);
            labels.push(r.engaged);
        }
        let mut live = self.live.write().unwrap_or_else(|e| e.into_inner());
        let Some(l) = live.as_mut().filter(|l| l.version == version) else {
            return Learned::default();
        };
        if !l.applied.insert(key.to_string()) {
            return Learned::default();
        }
        if other_version > 0 {
            metrics::counter!(m::FEEDBACK_TOTAL, "outcome" => "other_version")
                .increment(other_version);
        }
        if xs.is_empty() {
            return Learned::default();
        }
        if let Err(err) = l.ranker.update_rows(&xs, &labels) {
            tracing::warn!(error = %err, key, "online update rejected");
            metrics::counter!(m::FEEDBACK_TOTAL, "outcome" => "rejected").increment(1);
            return Learned::default();
        }
        let positives = labels.iter().filter(|l| **l).count();
        metrics::counter!(m::FEEDBACK_TOTAL, "outcome" => "learned").increment(positives as u64);
        metrics::counter!(m::ONLINE_ROWS_TOTAL).increment(labels.len() as u64);
        Learned {
            positives,
            negatives: labels.len() - positives,
        }
    }
}

/// Reads the feedback objects the shard processors write and feeds them to a learner
/// (one per server; see the module docs).
pub struct FeedbackFeed {
    objects: Arc<dyn ObjectStore>,
    learner: Arc<OnlineLearner>,
    /// Serialises polls, so two never apply the same objects in a different order.
    polling: tokio::sync::Mutex<()>,
    /// Objects that failed to decode, reported once.
    bad: Mutex<HashSet<String>>,
}

impl FeedbackFeed {
    /// A feed of the feedback objects in `objects` into `learner`.
    pub fn new(objects: Arc<dyn ObjectStore>, learner: Arc<OnlineLearner>) -> FeedbackFeed {
        FeedbackFeed {
            objects,
            learner,
            polling: tokio::sync::Mutex::new(()),
            bad: Mutex::new(HashSet::new()),
        }
    }

    /// Applies every feedback object the live model has not learned yet, per shard in
    /// stream order. Nothing happens while no model is live. A corrupt object is skipped
    /// (and logged once); an unreadable store is an error (the next poll retries).
    pub async fn poll(&self) -> Result<Learned, ScoringError> {
        let _one = self.polling.lock().await;
        let Some(version) = self.learner.version() else {
            return Ok(Learned::default());
        };
        let mut keys: Vec<(String, recstream_ingest::SeqNo, String)> = self
            .objects
            .list(FEEDBACK_PREFIX)
            .await
            .map_err(feed_err)?
            .into_iter()
            .filter(|k| !self.learner.applied(&version, k))
            .filter_map(|k| parse_feedback_key(&k).map(|(shard, seq)| (shard, seq, k)))
            .collect();
        keys.sort();
        let mut learned = Learned::default();
        for (_, _, key) in keys {
            let Some(bytes) = self.objects.get(&key).await.map_err(feed_err)? else {
                continue;
            };
            match decode_feedback(&bytes) {
                Ok(rows) => learned += self.learner.learn(&version, &key, &rows),
                Err(e) => {
                    if self
                        .bad
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key.clone())
                    {
                        tracing::warn!(key, error = %e, "skipping a corrupt feedback object");
                        metrics::counter!(m::FEEDBACK_TOTAL, "outcome" => "corrupt").increment(1);
                    }
                }
            }
        }
        Ok(learned)
    }
}

fn feed_err(e: recstream_ingest::IngestError) -> ScoringError {
    ScoringError::Feedback(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::Fixture;
    use recstream_ingest::feedback::{encode_feedback, feedback_key};
    use recstream_ingest::{LocalObjectStore, SeqNo, ShardId, Timestamp};

    /// The rows the join would write for a click on `chosen[target]` of a list ranked
    /// with `rows` (f32 on the wire, as in the `recommendation` event).
    fn joined(version: &str, chosen: &[(String, PairFeatures)], target: usize) -> Vec<FeedbackRow> {
        chosen
            .iter()
            .enumerate()
            .map(|(i, (id, x))| FeedbackRow {
                recommendation_id: "r".into(),
                user_id: "u0".into(),
                product_id: id.as_str().into(),
                position: i as u32 + 1,
                score: 0.0,
                engaged: i == target,
                event_type: "click".into(),
                model_version: Some(version.into()),
                served_ts: Timestamp(1),
                ts: Timestamp(2),
                features: x.iter().map(|v| *v as f32).collect(),
            })
            .collect()
    }

    #[test]
    fn joined_feedback_moves_the_live_model_once_per_object_and_version() {
        let f = Fixture::new(200);
        let (mut artifact, user, cands) = (f.artifact.clone(), &f.user, &f.cands);
        let batch = f.batch();
        assert!(batch.len() >= 3, "candidates: {}", batch.len());
        let learner = OnlineLearner::new();
        let mut before = Vec::new();
        assert!(
            !learner.score_into("v1", user, &batch, &mut before),
            "no live model yet"
        );
        learner.sync(&artifact);
        let mut rows = Vec::new();
        assert!(learner.score_with_rows("v1", user, &batch, &mut before, Some(&mut rows)));
        let chosen: Vec<(String, PairFeatures)> = cands
            .iter()
            .zip(&rows)
            .map(|((id, _), x)| (id.to_string(), *x))
            .collect();
        let t = chosen.len() - 1;
        for round in 0..30 {
            let got = learner.learn("v1", &format!("k{round}"), &joined("v1", &chosen, t));
            assert_eq!(
                got,
                Learned {
                    positives: 1,
                    negatives: chosen.len() - 1
                }
            );
            // The same object again teaches nothing.
            assert_eq!(
                learner.learn("v1", &format!("k{round}"), &joined("v1", &chosen, t)),
                Learned::default()
            );
        }
        let mut after = Vec::new();
        learner.score_into("v1", user, &batch, &mut after);
        assert!(
            after[t] > before[t],
            "clicked item rises: {} → {}",
            before[t],
            after[t]
        );

        // Rows of another version, or of a list no model ranked, teach nothing.
        assert_eq!(
            learner.learn("v1", "other", &joined("v0", &chosen, t)),
            Learned::default()
        );
        let mut blend = joined("v1", &chosen, t);
        blend.iter_mut().for_each(|r| r.features.clear());
        assert_eq!(learner.learn("v1", "blend", &blend), Learned::default());
        // A caller that listed under an older version learns nothing.
        assert_eq!(
            learner.learn("v0", "late", &joined("v0", &chosen, t)),
            Learned::default()
        );

        // A new version starts from its own state, and may apply the same objects again.
        artifact.meta.version = "v2".into();
        learner.sync(&artifact);
        let mut fresh = Vec::new();
        learner.score_into("v2", user, &batch, &mut fresh);
        assert_eq!(fresh, before, "v2 starts from the artifact's FTRL state");
        assert!(!learner.applied("v2", "k0"));
    }

    #[tokio::test]
    async fn the_feed_applies_every_object_once_in_stream_order() {
        let dir = tempfile::tempdir().unwrap();
        let objects: Arc<dyn ObjectStore> = Arc::new(LocalObjectStore::new(dir.path()));
        let f = Fixture::new(200);
        let batch = f.batch();
        let (a, b) = (
            Arc::new(OnlineLearner::new()),
            Arc::new(OnlineLearner::new()),
        );
        let (feed_a, feed_b) = (
            FeedbackFeed::new(objects.clone(), a.clone()),
            FeedbackFeed::new(objects.clone(), b.clone()),
        );
        assert_eq!(
            feed_a.poll().await.unwrap(),
            Learned::default(),
            "no live model"
        );
        a.sync(&f.artifact);
        b.sync(&f.artifact);
        let mut rows = Vec::new();
        a.score_with_rows("v1", &f.user, &batch, &mut Vec::new(), Some(&mut rows));
        let chosen: Vec<(String, PairFeatures)> = f
            .cands
            .iter()
            .zip(&rows)
            .map(|((id, _), x)| (id.to_string(), *x))
            .collect();
        let shard = ShardId::new("collector");
        // Position 9 sorts after 10 as text: the feed orders by number.
        for (seq, target) in [(10u64, 1usize), (9, 0)] {
            let key = feedback_key(&shard, &SeqNo::from_u64(seq));
            objects
                .put(&key, encode_feedback(&joined("v1", &chosen, target)))
                .await
                .unwrap();
        }
        objects
            .put("feedback/collector/11.jsonl", "not json\n".into())
            .await
            .unwrap();
        let got = feed_a.poll().await.unwrap();
        assert_eq!(got.positives, 2);
        assert_eq!(
            feed_a.poll().await.unwrap(),
            Learned::default(),
            "each object once"
        );
        // A second server reading the same objects ends with the same live model.
        assert_eq!(feed_b.poll().await.unwrap(), got);
        let (mut sa, mut sb) = (Vec::new(), Vec::new());
        a.score_into("v1", &f.user, &batch, &mut sa);
        b.score_into("v1", &f.user, &batch, &mut sb);
        assert_eq!(sa, sb);
    }
}
