//! Fixtures shared by the crate's unit tests.

use std::sync::Arc;

use recstream_features::{ProductFeatures, UserFeatures};
use recstream_ingest::{Event, EventType, Timestamp};
use recstream_model::candidates::Candidates;
use recstream_model::{CandidateParams, CandidateSignals, ModelArtifact, NoProgress, TrainParams};

/// `users` users who each view `a`, then `b`, then one of `c`, `d`, `e`, in one session.
pub fn session_log(users: usize) -> Vec<Event> {
    let mut out = Vec::new();
    let mut t = 1_569_888_000_000i64;
    for u in 0..users {
        let user = format!("u{u}");
        for p in ["a", "b", ["c", "d", "e"][u % 3]] {
            t += 1000;
            out.push(
                Event::new(
                    &format!("e{}", out.len()),
                    Timestamp(t),
                    &user,
                    EventType::View,
                )
                .with_product(p, Some("cat"))
                .with_session(&format!("s{u}")),
            );
        }
    }
    out
}

/// A model trained on [`session_log`] (version `v1`), the user `u0` and its candidates with
/// their product views, as the recommender would rank them.
pub struct Fixture {
    pub artifact: ModelArtifact,
    pub user: UserFeatures,
    pub cands: Candidates,
    pub views: Vec<Arc<ProductFeatures>>,
}

impl Fixture {
    pub fn new(users: usize) -> Fixture {
        let params = TrainParams {
            skip_embeddings: true,
            skip_segments: true,
            ..TrainParams::default()
        };
        let (mut artifact, mut replay) =
            recstream_model::train(&session_log(users), "test", &params, &mut NoProgress).unwrap();
        artifact.meta.version = "v1".into();
        let user = replay.user("u0").unwrap();
        let cands = replay.candidates(&user, &CandidateParams::default(), &[]);
        let views = cands
            .iter()
            .map(|(id, _)| replay.product_or_empty(id))
            .collect();
        Fixture {
            artifact,
            user,
            cands,
            views,
        }
    }

    /// The candidates as the ranker sees them.
    pub fn batch(&self) -> Vec<(&ProductFeatures, CandidateSignals)> {
        self.views
            .iter()
            .zip(&self.cands)
            .map(|(v, (_, s))| (v.as_ref(), *s))
            .collect()
    }
}
