//! Online learning: the FTRL ranker keeps learning from the storefront's feedback on the
//! lists it served, between batch retrainings.
//!
//! ```text
//!  GET /v1/recommendations ─► Recommender ─► the served items' pair features, exactly as
//!        ranked (no training/serving skew) ─► OnlineLearner::record(recommendation_id, …)
//!                                            bounded: `feedback_capacity` lists, `feedback_ttl_secs`
//!  POST /v1/events {recommendation_id, product_id, impressions, type: click|add_to_cart|…}
//!        ─► OnlineLearner::observe: the engaged item → 1, the other impressions (or, without
//!           `impressions`, the other served items) → 0, each item labelled once
//!        ─► OnlineRanker::update_rows (linfa-ftrl FitWith) ─► ranks the next requests
//!  model reload ─► OnlineLearner::sync: restart from the new artifact's FTRL state
//! ```
//!
//! The log is per process: feedback is learned by the server that served the list (the
//! storefront's sticky session); an event that reaches another server finds no list and
//! is ignored (counted as `unmatched`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use recstream_features::{ProductFeatures, UserFeatures};
use recstream_ingest::{Event, EventType};
use recstream_model::{
    CandidateSignals, LinearScorer, ModelArtifact, OnlineRanker, PairFeatures, UserContext,
};

use crate::metrics as m;

/// A served list, waiting for feedback.
struct Served {
    at: Instant,
    version: String,
    /// Product id, its pair features as ranked, whether it has been labelled.
    items: Vec<(String, PairFeatures, bool)>,
}

#[derive(Default)]
struct Log {
    lists: HashMap<String, Served>,
    order: VecDeque<(Instant, String)>,
}

/// The live FTRL model of one artifact version.
struct Live {
    version: String,
    ranker: OnlineRanker,
}

/// What one event taught the model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Learned {
    /// Served items labelled 1 (engaged with).
    pub positives: usize,
    /// Served or shown items labelled 0 (shown, not engaged with).
    pub negatives: usize,
}

/// The per-process log of served lists and the live FTRL model that learns from the
/// feedback on them (see the module docs). Shared by the recommender and the event path.
pub struct OnlineLearner {
    log: Mutex<Log>,
    live: RwLock<Option<Live>>,
    capacity: usize,
    ttl: Duration,
}

impl OnlineLearner {
    /// A learner keeping at most `capacity` served lists, each for `ttl`; no live model
    /// until the first [`OnlineLearner::sync`].
    pub fn new(capacity: usize, ttl: Duration) -> OnlineLearner {
        OnlineLearner {
            log: Mutex::new(Log::default()),
            live: RwLock::new(None),
            capacity: capacity.max(1),
            ttl,
        }
    }

    /// Starts learning from `model`'s FTRL state (a new version replaces the old live
    /// model; the same version keeps what was learned since it loaded).
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
        });
        drop(live);
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .lists
            .clear();
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

    /// Keeps the features of the `chosen` items of a list served under `recommendation_id`
    /// (`candidates` is everything the ranker saw, to build the user context as it did).
    pub fn record(
        &self,
        recommendation_id: &str,
        user: &UserFeatures,
        candidates: &[(&ProductFeatures, CandidateSignals)],
        chosen: &[(String, usize)],
    ) {
        let live = self.live.read().unwrap_or_else(|e| e.into_inner());
        let Some(l) = live.as_ref() else { return };
        let ctx = UserContext::new(user, candidates.iter().map(|(p, _)| *p), l.ranker.schema());
        let mut items = Vec::with_capacity(chosen.len());
        for (id, i) in chosen {
            let Some((p, s)) = candidates.get(*i) else {
                continue;
            };
            let mut x = [0.0; recstream_model::NUM_FEATURES];
            ctx.pair(p, s, &mut x);
            items.push((id.clone(), x, false));
        }
        let version = l.version.clone();
        drop(live);
        self.keep(recommendation_id, version, items);
    }

    /// Keeps the served items of a list with the feature rows they were ranked with (the
    /// rows of [`OnlineLearner::score_with_rows`]): no feature is built a second time.
    pub fn record_rows(
        &self,
        recommendation_id: &str,
        items: impl IntoIterator<Item = (String, PairFeatures)>,
    ) {
        let Some(version) = self.version() else {
            return;
        };
        let items = items.into_iter().map(|(id, x)| (id, x, false)).collect();
        self.keep(recommendation_id, version, items);
    }

    fn keep(
        &self,
        recommendation_id: &str,
        version: String,
        items: Vec<(String, PairFeatures, bool)>,
    ) {
        let now = Instant::now();
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        while log.lists.len() >= self.capacity
            || log
                .order
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > self.ttl)
        {
            let Some((_, id)) = log.order.pop_front() else {
                break;
            };
            log.lists.remove(&id);
        }
        log.order.push_back((now, recommendation_id.to_string()));
        log.lists.insert(
            recommendation_id.to_string(),
            Served {
                at: now,
                version,
                items,
            },
        );
    }

    /// Learns from one event that names the list it came from. Views, clicks, carts and
    /// purchases of a served item are engagement.
    pub fn observe(&self, e: &Event) -> Learned {
        let (Some(rec), Some(product)) = (e.recommendation_id.as_deref(), e.product_id.as_deref())
        else {
            return Learned::default();
        };
        if !matches!(
            e.event_type,
            EventType::View | EventType::Click | EventType::AddToCart | EventType::Purchase
        ) {
            return Learned::default();
        }
        let (rows, labels) = {
            let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
            let Some(served) = log.lists.get_mut(rec) else {
                metrics::counter!(m::FEEDBACK_TOTAL, "outcome" => "unmatched").increment(1);
                return Learned::default();
            };
            if served.at.elapsed() > self.ttl {
                metrics::counter!(m::FEEDBACK_TOTAL, "outcome" => "expired").increment(1);
                return Learned::default();
            }
            let mut rows = Vec::new();
            let mut labels = Vec::new();
            for (id, x, done) in served.items.iter_mut() {
                if *done {
                    continue;
                }
                let engaged = id == product;
                let shown = e.impressions.is_empty() || e.impressions.iter().any(|i| i == id);
                if engaged || shown {
                    rows.push(*x);
                    labels.push(engaged);
                    *done = true;
                }
            }
            if !labels.iter().any(|l| *l) {
                // Feedback on something the list did not hold (or already learned).
                return Learned::default();
            }
            let version = served.version.clone();
            drop(log);
            let live = self.live.read().unwrap_or_else(|e| e.into_inner());
            if live.as_ref().is_none_or(|l| l.version != version) {
                return Learned::default();
            }
            (rows, labels)
        };
        let mut live = self.live.write().unwrap_or_else(|e| e.into_inner());
        let Some(l) = live.as_mut() else {
            return Learned::default();
        };
        if let Err(err) = l.ranker.update_rows(&rows, &labels) {
            tracing::warn!(error = %err, "online update rejected");
            return Learned::default();
        }
        let positives = labels.iter().filter(|l| **l).count();
        metrics::counter!(m::FEEDBACK_TOTAL, "outcome" => "learned").increment(1);
        metrics::counter!(m::ONLINE_ROWS_TOTAL).increment(labels.len() as u64);
        Learned {
            positives,
            negatives: labels.len() - positives,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::Fixture;
    use recstream_ingest::Timestamp;

    #[test]
    fn the_rows_kept_while_scoring_teach_exactly_what_recomputed_features_do() {
        let f = Fixture::new(200);
        let (artifact, user, cands) = (&f.artifact, &f.user, &f.cands);
        let batch = f.batch();
        let (a, b) = (
            OnlineLearner::new(10, Duration::from_secs(60)),
            OnlineLearner::new(10, Duration::from_secs(60)),
        );
        a.sync(artifact);
        b.sync(artifact);
        let (mut plain, mut scored, mut rows) = (Vec::new(), Vec::new(), Vec::new());
        assert!(a.score_into("v1", user, &batch, &mut plain));
        assert!(b.score_with_rows("v1", user, &batch, &mut scored, Some(&mut rows)));
        assert_eq!(plain, scored);
        assert_eq!(rows.len(), batch.len());

        let chosen: Vec<(String, usize)> = cands
            .iter()
            .enumerate()
            .take(5)
            .map(|(i, (id, _))| (id.to_string(), i))
            .collect();
        a.record("r", user, &batch, &chosen);
        b.record_rows("r", chosen.iter().map(|(id, i)| (id.clone(), rows[*i])));
        let target = &chosen[2].0;
        assert_eq!(
            a.observe(&click("r", target, &[])),
            b.observe(&click("r", target, &[]))
        );
        let (mut after_a, mut after_b) = (Vec::new(), Vec::new());
        a.score_into("v1", user, &batch, &mut after_a);
        b.score_into("v1", user, &batch, &mut after_b);
        assert_ne!(after_a, plain, "the click was learned");
        assert_eq!(after_a, after_b);
    }

    fn click(rec: &str, product: &str, impressions: &[&str]) -> Event {
        let mut e = Event::new("fb", Timestamp(1_569_999_000_000), "u0", EventType::Click)
            .with_product(product, Some("cat"));
        e.recommendation_id = Some(rec.into());
        e.impressions = impressions.iter().map(|s| (*s).into()).collect();
        e
    }

    #[test]
    fn feedback_on_a_served_list_moves_the_live_model_once_per_item() {
        let f = Fixture::new(200);
        let (mut artifact, user, cands) = (f.artifact.clone(), &f.user, &f.cands);
        let batch = f.batch();
        assert!(batch.len() >= 3, "candidates: {}", batch.len());
        let chosen: Vec<(String, usize)> = cands
            .iter()
            .enumerate()
            .map(|(i, (id, _))| (id.to_string(), i))
            .collect();
        let target = chosen[chosen.len() - 1].0.clone();

        let learner = OnlineLearner::new(10, Duration::from_secs(60));
        let mut before = Vec::new();
        assert!(
            !learner.score_into("v1", user, &batch, &mut before),
            "no live model yet"
        );
        learner.sync(&artifact);
        assert!(learner.score_into("v1", user, &batch, &mut before));
        assert!(!learner.score_into("v0", user, &batch, &mut before.clone()));

        // Unknown list, or an event without a list: nothing learned.
        assert_eq!(
            learner.observe(&click("nope", &target, &[])),
            Learned::default()
        );
        let mut plain = click("x", &target, &[]);
        plain.recommendation_id = None;
        assert_eq!(learner.observe(&plain), Learned::default());

        for round in 0..30 {
            let rec = format!("r{round}");
            learner.record(&rec, user, &batch, &chosen);
            let learned = learner.observe(&click(&rec, &target, &[]));
            assert_eq!(learned.positives, 1);
            assert_eq!(learned.negatives, chosen.len() - 1);
            // A second event on the same list teaches nothing new.
            assert_eq!(
                learner.observe(&click(&rec, &target, &[])),
                Learned::default()
            );
        }
        let mut after = Vec::new();
        learner.score_into("v1", user, &batch, &mut after);
        let t = chosen.len() - 1;
        assert!(
            after[t] > before[t],
            "clicked item rises: {} → {}",
            before[t],
            after[t]
        );

        // Impressions restrict the negatives to what was shown.
        learner.record("imp", user, &batch, &chosen);
        let shown = [chosen[0].0.as_str(), target.as_str()];
        let learned = learner.observe(&click("imp", &target, &shown));
        assert_eq!(
            learned,
            Learned {
                positives: 1,
                negatives: 1
            }
        );

        // A new version starts from its own state and forgets lists served before it.
        learner.record("old", user, &batch, &chosen);
        artifact.meta.version = "v2".into();
        learner.sync(&artifact);
        assert_eq!(
            learner.observe(&click("old", &target, &[])),
            Learned::default()
        );
        let mut fresh = Vec::new();
        learner.score_into("v2", user, &batch, &mut fresh);
        assert_eq!(fresh, before, "v2 starts from the artifact's FTRL state");
    }

    #[test]
    fn the_log_is_bounded() {
        let learner = OnlineLearner::new(3, Duration::from_secs(60));
        let f = Fixture::new(200);
        learner.sync(&f.artifact);
        let user = &f.user;
        let view = ProductFeatures::default();
        let batch = [(&view, CandidateSignals::default())];
        for i in 0..10 {
            learner.record(&format!("r{i}"), user, &batch, &[("p".into(), 0)]);
        }
        let log = learner.log.lock().unwrap();
        assert_eq!(log.lists.len(), 3);
        assert!(log.lists.contains_key("r9") && !log.lists.contains_key("r0"));
    }
}
