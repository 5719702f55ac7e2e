//! Train/serve parity on the bundled OTTO sample: the feature rows the endpoint ranks a
//! user's candidates with (`Recommender::recommend_for`, the rows a served list's event
//! carries) are the rows training builds for that user at the same moment
//! (`Replay::candidates` + `UserContext::pair`). The serving path blends its candidate
//! sources with its own code (borrowed ids, async store reads); this holds it to the
//! training path's definitions, source by source.

mod common;

use std::sync::Arc;

use common::otto;
use recstream_eval::store::LiveStore;
use recstream_features::FeatureStore;
use recstream_model::{
    LinearScorer, ModelHandle, NUM_FEATURES, NoProgress, PairFeatures, TrainParams, UserContext,
    train,
};
use recstream_scoring::{InProcessCache, Recommender, Request, ScoringConfig};

#[test]
fn the_endpoint_ranks_with_the_rows_training_builds() {
    let events = otto();
    let cfg = ScoringConfig::default();
    let params = TrainParams {
        candidates: cfg.candidate_params(),
        skip_embeddings: true,
        skip_segments: true,
        ..TrainParams::default()
    };
    let (artifact, replay) = train(&events, "otto", &params, &mut NoProgress).unwrap();
    let artifact = Arc::new(artifact);
    let store = Arc::new(LiveStore::new(replay));
    let handle = Arc::new(ModelHandle::new());
    handle.set(artifact.clone());
    let dyn_store: Arc<dyn FeatureStore> = store.clone();
    let rec = Recommender::new(dyn_store, Arc::new(InProcessCache::new()), cfg.clone())
        .with_model(handle);
    let users: Vec<String> = store
        .replay()
        .user_ids()
        .into_iter()
        .map(str::to_string)
        .collect();

    let (mut compared, mut two_hop) = (0usize, 0usize);
    for uid in &users {
        let req = Request {
            user_id: uid.clone(),
            n: Some(cfg.max_n),
            context: Vec::new(),
        };
        let served = futures::executor::block_on(rec.recommend_for(&req, Some("parity"))).unwrap();
        // Training's view of the same moment.
        let mut replay = store.replay();
        let user = replay.user(uid).unwrap();
        let cands = replay.candidates(&user, &cfg.candidate_params(), &[]);
        if cands.len() > cfg.rerank_depth {
            // The endpoint ranks only the blend's best `rerank_depth`; the price band of
            // the user is taken over what is ranked, so only whole pools compare.
            continue;
        }
        let views: Vec<_> = cands
            .iter()
            .map(|(id, _)| replay.product_or_empty(id))
            .collect();
        let ctx = UserContext::new(
            &user,
            views.iter().map(|v| v.as_ref()),
            artifact.affinity.schema(),
        );
        // The endpoint ranks every candidate training sees (and backfills after them).
        assert_eq!(
            served.features.len(),
            cands.len().min(cfg.max_n),
            "{uid}: ranked rows"
        );
        for (item, row) in served.items.iter().zip(&served.features) {
            let i = cands
                .iter()
                .position(|(id, _)| *id == item.product_id)
                .unwrap_or_else(|| {
                    panic!(
                        "{uid}: {} served, not a training candidate",
                        item.product_id
                    )
                });
            let mut want: PairFeatures = [0.0; NUM_FEATURES];
            ctx.pair(&views[i], &cands[i].1, &mut want);
            for (j, (got, want)) in row.iter().zip(&want).enumerate() {
                assert!(
                    (got - want).abs() <= 1e-9 * want.abs().max(1.0),
                    "{uid} / {}: feature {} is {got} served, {want} in training",
                    item.product_id,
                    recstream_model::FEATURE_NAMES[j]
                );
            }
            two_hop += (cands[i].1.covisit_2hop > 0.0) as usize;
            compared += 1;
        }
    }
    assert!(compared > 100, "only {compared} rows compared");
    assert!(two_hop > 0, "no candidate came from the second hop");
}
