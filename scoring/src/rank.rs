//! Ranking candidates with the affinity model.
//!
//! ```text
//!  Recommender: candidates (recent, co-visitation, top categories, trending)
//!        │ (&ProductFeatures, CandidateSignals) per candidate, signals = each source's
//!        │ normalised contribution before the blend weights
//!        ▼
//!  Ranker::score ─┬─ ModelRanker        batch logistic regression of the current artifact
//!                 ├─ OnlineModelRanker  FTRL, updated from the live stream
//!                 ├─ HotRanker          whatever ModelHandle holds now (hot reload): its
//!                 │                     live FTRL model (feedback::OnlineLearner) or its
//!                 │                     logistic regression; the blend until one is loaded
//!                 └─ HeuristicRanker    the fixed-weight blend (no model)
//! ```
//!
//! Scoring builds each pair's features in a stack array and takes one dot product: no
//! allocation per candidate (one small set of lookups per request), ~1 µs per candidate.

use std::sync::{Arc, RwLock};

use recstream_features::{ProductFeatures, UserFeatures};
use recstream_model::{LinearScorer, ModelArtifact, ModelHandle, OnlineRanker, PairFeatures};

use crate::feedback::OnlineLearner;

pub use recstream_model::CandidateSignals;

/// Scores a user's candidates: higher is better, one score per candidate, in order.
pub trait Ranker: Send + Sync {
    /// Scores into `out` (cleared first), reusing its allocation.
    fn score_into(
        &self,
        user: &UserFeatures,
        candidates: &[(&ProductFeatures, CandidateSignals)],
        out: &mut Vec<f64>,
    );

    /// Scores into a new vector; see [`Ranker::score_into`].
    fn score(
        &self,
        user: &UserFeatures,
        candidates: &[(&ProductFeatures, CandidateSignals)],
    ) -> Vec<f64> {
        let mut out = Vec::with_capacity(candidates.len());
        self.score_into(user, candidates, &mut out);
        out
    }

    /// [`Ranker::score_into`]; with `rows`, also fills it (cleared first) with each
    /// candidate's feature row when a linear model over [`PairFeatures`] scored them. Rankers
    /// without features (the blend) leave it empty.
    fn score_with_rows(
        &self,
        user: &UserFeatures,
        candidates: &[(&ProductFeatures, CandidateSignals)],
        out: &mut Vec<f64>,
        rows: Option<&mut Vec<PairFeatures>>,
    ) {
        if let Some(r) = rows {
            r.clear();
        }
        self.score_into(user, candidates, out);
    }

    /// A short name for responses and metrics (bounded: never a version string).
    fn name(&self) -> &'static str;
}

/// The fixed-weight blend of the candidate sources (`ScoringConfig`'s `w_*` weights).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeuristicRanker {
    /// Weight of the recently-viewed signal.
    pub w_recent: f64,
    /// Weight of the co-visitation signal.
    pub w_covisit: f64,
    /// Weight of the top-category signal.
    pub w_category: f64,
    /// Weight of the trending signal.
    pub w_trending: f64,
}

impl Default for HeuristicRanker {
    fn default() -> Self {
        HeuristicRanker {
            w_recent: 0.6,
            w_covisit: 1.0,
            w_category: 0.4,
            w_trending: 0.15,
        }
    }
}

impl Ranker for HeuristicRanker {
    fn score_into(
        &self,
        _user: &UserFeatures,
        candidates: &[(&ProductFeatures, CandidateSignals)],
        out: &mut Vec<f64>,
    ) {
        out.clear();
        out.extend(candidates.iter().map(|(_, s)| {
            self.w_recent * s.recent
                + self.w_covisit * (s.covisit + s.covisit_2hop)
                + self.w_category * s.category
                + self.w_trending * s.trending
        }));
    }

    fn name(&self) -> &'static str {
        "heuristic"
    }
}

/// The batch logistic-regression model of one artifact.
#[derive(Clone)]
pub struct ModelRanker(pub Arc<ModelArtifact>);

impl Ranker for ModelRanker {
    fn score_into(
        &self,
        user: &UserFeatures,
        candidates: &[(&ProductFeatures, CandidateSignals)],
        out: &mut Vec<f64>,
    ) {
        self.0.affinity.score_into(user, candidates, out);
    }

    fn name(&self) -> &'static str {
        "model"
    }
}

/// The FTRL model, shared with the task that feeds it the live stream.
#[derive(Clone)]
pub struct OnlineModelRanker(pub Arc<RwLock<OnlineRanker>>);

impl OnlineModelRanker {
    /// Shares `ranker` for scoring and for the task that updates it.
    pub fn new(ranker: OnlineRanker) -> OnlineModelRanker {
        OnlineModelRanker(Arc::new(RwLock::new(ranker)))
    }

    /// One online step: `engaged` for the clicked / carted impression, `false` for the
    /// impressions shown with it and ignored. Features are those computed when the list
    /// was served (see [`recstream_model::UserContext::pair`]).
    pub fn update(
        &self,
        rows: &[PairFeatures],
        engaged: &[bool],
    ) -> Result<(), recstream_model::ModelError> {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .update_rows(rows, engaged)
    }
}

impl Ranker for OnlineModelRanker {
    fn score_into(
        &self,
        user: &UserFeatures,
        candidates: &[(&ProductFeatures, CandidateSignals)],
        out: &mut Vec<f64>,
    ) {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .score_into(user, candidates, out);
    }

    fn name(&self) -> &'static str {
        "model_online"
    }
}

/// Ranks with whatever model the handle holds now, so a new version is picked up without
/// a restart; falls back to the heuristic blend while none is loaded.
pub struct HotRanker {
    /// Holds the model in use; read on every request.
    pub handle: Arc<ModelHandle>,
    /// Ranks while no model is loaded.
    pub fallback: HeuristicRanker,
    /// When set, the live FTRL model of the current version ranks (it keeps learning from
    /// feedback); else the version's batch logistic regression.
    pub online: Option<Arc<OnlineLearner>>,
}

impl HotRanker {
    /// Ranks with the batch model of `handle`, or `fallback` until one is loaded; no live
    /// FTRL model until one is attached.
    pub fn new(handle: Arc<ModelHandle>, fallback: HeuristicRanker) -> HotRanker {
        HotRanker {
            handle,
            fallback,
            online: None,
        }
    }

    /// Ranks with `learner`'s live model whenever it belongs to the current version.
    pub fn with_online(mut self, learner: Arc<OnlineLearner>) -> HotRanker {
        self.online = Some(learner);
        self
    }

    /// Whether a model is loaded (else the heuristic answers).
    pub fn has_model(&self) -> bool {
        self.handle.get().is_some()
    }
}

impl Ranker for HotRanker {
    fn score_into(
        &self,
        user: &UserFeatures,
        candidates: &[(&ProductFeatures, CandidateSignals)],
        out: &mut Vec<f64>,
    ) {
        self.score_with_rows(user, candidates, out, None);
    }

    /// The current model (its live FTRL model when it has one) scores and gives rows; with
    /// no model, the blend (and no rows).
    fn score_with_rows(
        &self,
        user: &UserFeatures,
        candidates: &[(&ProductFeatures, CandidateSignals)],
        out: &mut Vec<f64>,
        mut rows: Option<&mut Vec<PairFeatures>>,
    ) {
        let Some(m) = self.handle.get() else {
            if let Some(r) = rows {
                r.clear();
            }
            self.fallback.score_into(user, candidates, out);
            return;
        };
        let live = self.online.as_ref().is_some_and(|l| {
            l.score_with_rows(m.version(), user, candidates, out, rows.as_deref_mut())
        });
        if !live {
            m.affinity.score_with_rows(user, candidates, out, rows);
        }
    }

    fn name(&self) -> &'static str {
        match (self.handle.get(), &self.online) {
            (Some(m), Some(l)) if l.version().as_deref() == Some(m.version()) => "model_online",
            (Some(_), _) => "model",
            (None, _) => "heuristic",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_and_hot_ranker_score_candidates() {
        let f = crate::test_support::Fixture::new(300);
        let (user, batch) = (&f.user, f.batch());

        let model = ModelRanker(Arc::new(f.artifact.clone()));
        let scores = model.score(user, &batch);
        assert_eq!(scores.len(), batch.len());
        assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)));

        let handle = Arc::new(ModelHandle::new());
        let hot = HotRanker::new(handle.clone(), HeuristicRanker::default());
        assert_eq!(hot.name(), "heuristic");
        assert_eq!(
            hot.score(user, &batch),
            HeuristicRanker::default().score(user, &batch)
        );
        handle.set(model.0.clone());
        assert_eq!(hot.name(), "model");
        assert_eq!(hot.score(user, &batch), scores);

        let online = OnlineModelRanker::new(model.0.online.clone());
        let before = online.score(user, &batch);
        let mut row = [0.0; recstream_model::NUM_FEATURES];
        let ctx = recstream_model::UserContext::new(
            user,
            batch.iter().map(|(p, _)| *p),
            &model.0.online.schema,
        );
        ctx.pair(batch[0].0, &batch[0].1, &mut row);
        for _ in 0..20 {
            online.update(&[row], &[true]).unwrap();
        }
        assert!(online.score(user, &batch)[0] > before[0]);
    }
}
