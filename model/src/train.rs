//! Batch training from an event log.
//!
//! ```text
//!  events (sorted by time) ─► Replay ─► at each positive (the user's next product, sampled):
//!        candidates (recent, co-visitation, category top, trending) as they were then
//!        label 1: the next product; label 0: sampled other candidates
//!        rows = features(user view, product view, signals)
//!  rows ─► AffinityParams::fit (logistic regression)  ─► AffinityModel
//!       └► OnlineParams::fit_with (FTRL, in time order) ─► OnlineRanker
//!  events ─► ProductEmbeddings, ColdStartLists;  final user views ─► Segments
//! ```
//!
//! [`train_from`] reads the log from an [`EventSource`] in two passes (a summary pass that
//! also counts co-occurrences and cold-start popularity, then the replay), so the log
//! itself never has to be in memory; [`train`] is `train_from` over a slice.

use std::time::Instant;

use compact_str::CompactString;
use linfa::prelude::*;
use ndarray::{Array1, Array2};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256Plus;
use recstream_ingest::Event;
use rustc_hash::{FxHashMap, FxHashSet};

use crate::affinity::{AffinityModel, LinearScorer, OnlineRanker};
use crate::artifact::{ModelArtifact, TrainingMeta};
use crate::cold_start::ColdStartCounts;
use crate::embed::CoOccurrence;
use crate::error::{ModelError, Result};
use crate::features::{FeatureSchema, NUM_FEATURES, PairFeatures, UserContext};
use crate::progress::Progress;
use crate::replay::Replay;
use crate::segments::Segments;
use crate::source::EventSource;

use crate::params::Objective;
/// Re-exported where it was defined before the artifact needed it (see [`crate::params`]).
pub use crate::params::TrainParams;

/// Rows for the ranker: raw features, flat row-major, in time order.
#[derive(Debug, Clone, Default)]
pub struct TrainingSet {
    /// Raw features, `len() × NUM_FEATURES`, row-major.
    pub rows: Vec<f64>,
    /// One label per row: `true` for the positive.
    pub labels: Vec<bool>,
    /// The lists: list `g` is rows `starts[g]..starts[g + 1]`, its positive first; the
    /// last entry is the number of rows (empty while there are no lists).
    pub starts: Vec<usize>,
    /// Eligible positives in the log (the user's next, different product).
    pub eligible: u64,
    /// Positives sampled.
    pub sampled: u64,
    /// Sampled positives the candidate sources retrieved.
    pub covered: u64,
    /// Mean candidates per sampled positive.
    pub mean_candidates: f64,
}

impl TrainingSet {
    /// Rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The rows as a linfa dataset.
    pub fn dataset(&self) -> Dataset<f64, bool, ndarray::Ix1> {
        let x = Array2::from_shape_vec((self.len(), NUM_FEATURES), self.rows.clone())
            .expect("rows are whole");
        Dataset::new(x, Array1::from(self.labels.clone()))
    }
}

/// Whether `e` is a "next item" positive for its user: a product event of a user with
/// history, on a product other than the one they touched last.
pub fn is_next_item(replay: &Replay, e: &Event) -> bool {
    match (e.product_id.as_deref(), replay.last_product(&e.user_id)) {
        (Some(p), Some(last)) => p != last,
        _ => false,
    }
}

/// Counts the "next item" positives of a log (the pre-pass of the replay, which samples
/// positives at `max_positives / eligible`). Holds each user's last product.
#[derive(Debug, Default)]
struct EligibleCount {
    last: FxHashMap<CompactString, CompactString>,
    eligible: u64,
}

impl EligibleCount {
    /// Counts `e`; users not seen yet in this log fall back to `replay`'s last product.
    fn apply(&mut self, replay: &Replay, e: &Event) {
        let Some(p) = e.product_id.as_ref() else {
            return;
        };
        match self.last.get_mut(e.user_id.as_str()) {
            Some(l) => {
                if *l != *p {
                    self.eligible += 1;
                    *l = p.clone();
                }
            }
            None => {
                if replay
                    .last_product(&e.user_id)
                    .is_some_and(|l| l != p.as_str())
                {
                    self.eligible += 1;
                }
                self.last.insert(e.user_id.clone(), p.clone());
            }
        }
    }
}

/// The replay pass: samples positives at a fixed rate, builds their rows, applies every
/// event to the replay.
struct Sampler<'p> {
    params: &'p TrainParams,
    schema: FeatureSchema,
    rate: f64,
    rng: Xoshiro256Plus,
    set: TrainingSet,
    cand_total: usize,
    x: PairFeatures,
}

impl<'p> Sampler<'p> {
    fn new(params: &'p TrainParams, eligible: u64) -> Sampler<'p> {
        Sampler {
            params,
            schema: params.schema(),
            rate: (params.max_positives as f64 / eligible.max(1) as f64).min(1.0),
            rng: Xoshiro256Plus::seed_from_u64(params.seed),
            set: TrainingSet {
                eligible,
                ..Default::default()
            },
            cand_total: 0,
            x: [0.0; NUM_FEATURES],
        }
    }

    fn apply(&mut self, replay: &mut Replay, e: &Event) {
        if is_next_item(replay, e) && self.rng.r#gen::<f64>() < self.rate {
            sample_rows(
                replay,
                e,
                self.params,
                &self.schema,
                &mut self.rng,
                &mut self.set,
                &mut self.cand_total,
                &mut self.x,
            );
        }
        replay.apply(e);
    }

    fn finish(mut self, replay: &mut Replay) -> TrainingSet {
        replay.refresh();
        self.set.mean_candidates = self.cand_total as f64 / self.set.sampled.max(1) as f64;
        self.set
    }
}

/// Replays `events` into `replay`, collecting ranker rows along the way.
pub fn build_training_set(
    replay: &mut Replay,
    events: &[Event],
    params: &TrainParams,
    progress: &mut dyn Progress,
) -> Result<TrainingSet> {
    // Pre-pass: how many positives there are, to sample uniformly over time.
    let mut count = EligibleCount::default();
    for e in events {
        count.apply(replay, e);
    }
    let mut sampler = Sampler::new(params, count.eligible);
    drop(count);

    progress.stage("replay", events.len() as u64);
    for (i, e) in events.iter().enumerate() {
        if i % 4096 == 4095 {
            progress.inc(4096);
        }
        sampler.apply(replay, e);
    }
    let set = sampler.finish(replay);
    progress.finish_stage();
    Ok(set)
}

#[allow(clippy::too_many_arguments)]
fn sample_rows(
    replay: &mut Replay,
    e: &Event,
    params: &TrainParams,
    schema: &FeatureSchema,
    rng: &mut Xoshiro256Plus,
    set: &mut TrainingSet,
    cand_total: &mut usize,
    x: &mut PairFeatures,
) {
    let target = e
        .product_id
        .as_deref()
        .expect("next-item events have a product");
    let Some(user) = replay.user(&e.user_id) else {
        return;
    };
    let current = replay.last_product(&e.user_id).map(str::to_string);
    let exclude: Vec<&str> = current.as_deref().into_iter().collect();
    let cands = replay.candidates(&user, &params.candidates, &exclude);
    if (params.candidates.exclude_purchased && user.purchased.iter().any(|p| p == target))
        || (params.candidates.exclude_in_cart && user.cart.iter().any(|l| l.product_id == target))
    {
        // Serving never shows it: nothing to learn about ranking it.
        return;
    }
    set.sampled += 1;
    *cand_total += cands.len();
    let pos = cands.iter().position(|(id, _)| id == target);
    if pos.is_some() {
        set.covered += 1;
    } else if !params.include_uncovered_positives {
        return;
    }
    let idx: Vec<usize> = match params.objective {
        Objective::Pointwise => {
            let mut idx: Vec<usize> = (0..cands.len()).filter(|i| Some(*i) != pos).collect();
            // Sample negatives without replacement (partial Fisher–Yates).
            let k = params.negatives_per_positive.min(idx.len());
            for j in 0..k {
                let r = rng.gen_range(j..idx.len());
                idx.swap(j, r);
            }
            idx.truncate(k);
            idx
        }
        Objective::Listwise => {
            // The list the endpoint ranks: the best `list_depth` by the blend (ties by id,
            // as `Recommender` breaks them); a positive outside it is not ranked there.
            let blend: Vec<f64> = cands.iter().map(|(_, s)| s.heuristic()).collect();
            let mut order: Vec<usize> = (0..cands.len()).collect();
            order.sort_unstable_by(|&a, &b| {
                blend[b]
                    .total_cmp(&blend[a])
                    .then_with(|| cands[a].0.cmp(&cands[b].0))
            });
            order.truncate(params.list_depth);
            if pos.is_some_and(|p| !order.contains(&p)) && !params.include_uncovered_positives {
                return;
            }
            order.retain(|i| Some(*i) != pos);
            order
        }
    };
    if idx.is_empty() {
        return;
    }

    // The user's price reference comes from the candidates they engaged with.
    let known: Vec<_> = cands
        .iter()
        .filter(|(_, s)| s.recent > 0.0)
        .filter_map(|(id, _)| replay.product(id))
        .collect();
    let ctx = UserContext::new(&user, known.iter().map(|p| p.as_ref()), schema);
    let target_view = replay.product_or_empty(target);
    let target_signals = pos.map(|p| cands[p].1).unwrap_or_default();
    ctx.pair(&target_view, &target_signals, x);
    if set.starts.is_empty() {
        set.starts.push(0);
    }
    set.rows.extend_from_slice(x);
    set.labels.push(true);
    for i in idx {
        let (id, s) = &cands[i];
        let view = replay.product_or_empty(id);
        ctx.pair(&view, s, x);
        set.rows.extend_from_slice(x);
        set.labels.push(false);
    }
    set.starts.push(set.labels.len());
}

/// Ranking quality on training rows: AUC (probability a positive outranks a negative).
pub fn auc(scores: &[f64], labels: &[bool]) -> f64 {
    let mut v: Vec<(f64, bool)> = scores.iter().copied().zip(labels.iter().copied()).collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut pos, mut i) = (0.0, 0usize, 0usize);
    while i < v.len() {
        let mut j = i;
        while j < v.len() && v[j].0 == v[i].0 {
            j += 1;
        }
        let avg_rank = (i + j + 1) as f64 / 2.0;
        for x in &v[i..j] {
            if x.1 {
                rank_sum += avg_rank;
                pos += 1;
            }
        }
        i = j;
    }
    let neg = v.len() - pos;
    if pos == 0 || neg == 0 {
        return f64::NAN;
    }
    (rank_sum - (pos * (pos + 1)) as f64 / 2.0) / (pos as f64 * neg as f64)
}

/// Fits both rankers on a training set: the batch model by `params.objective`, and the
/// online (FTRL) ranker — pre-trained on the rows when pointwise, a zero correction on top
/// of the listwise model when listwise (it then learns only from feedback).
pub fn fit_rankers(
    set: &TrainingSet,
    params: &TrainParams,
) -> Result<(AffinityModel, OnlineRanker, f64)> {
    if set.is_empty() {
        return Err(ModelError::NotEnoughData(
            "no training rows: the log has no repeat users with candidates".into(),
        ));
    }
    let t = Instant::now();
    let (model, online) = match params.objective {
        Objective::Pointwise => {
            let ds = set.dataset();
            let model = params.affinity_params().fit(&ds)?;
            let online = params
                .online
                .check_ref()?
                .fit_with(Err(model.schema.clone()), &ds)?;
            (model, online)
        }
        Objective::Listwise => {
            let model = crate::listwise::fit(
                params.schema(),
                &set.rows,
                &set.starts,
                params.l2,
                params.max_iterations,
            )?;
            let online = OnlineRanker::on(&model, params.online.check_ref()?)?;
            (model, online)
        }
    };
    let scores: Vec<f64> = set
        .rows
        .chunks_exact(NUM_FEATURES)
        .map(|x| model.logit(x.try_into().expect("whole rows")))
        .collect();
    let train_auc = auc(&scores, &set.labels);
    tracing::info!(
        rows = set.len(),
        lists = set.starts.len().saturating_sub(1),
        objective = ?params.objective,
        fit_secs = t.elapsed().as_secs_f64(),
        train_auc,
        "rankers fitted"
    );
    Ok((model, online, train_auc))
}

/// Trains everything from an event log sorted by time. `dataset` names the source in the
/// metadata. Returns the artifact and the replay state at the end of the log.
///
/// The same as [`train_from`] on the slice, which it calls.
pub fn train(
    events: &[Event],
    dataset: &str,
    params: &TrainParams,
    progress: &mut dyn Progress,
) -> Result<(ModelArtifact, Replay)> {
    params.validate()?;
    if events.windows(2).any(|w| w[0].ts > w[1].ts) {
        return Err(ModelError::InvalidParams(
            "events must be sorted by time".into(),
        ));
    }
    train_from(&mut { events }, dataset, params, progress)
}

/// Checks that chunks come in time order and summarises the log for the metadata.
#[derive(Debug, Default)]
struct LogSummary {
    events: u64,
    first_ts: Option<i64>,
    last_ts: i64,
    products: FxHashSet<CompactString>,
}

impl LogSummary {
    /// Counts `chunk`; `Err(ModelError::Unsorted)` when it goes back in time.
    fn check(&mut self, chunk: &[Event], pass: &str) -> Result<()> {
        for e in chunk {
            if self.first_ts.is_some() && e.ts.0 < self.last_ts {
                return Err(ModelError::Unsorted(format!(
                    "{pass} pass: event {} at {} comes after an event at {}",
                    e.event_id, e.ts.0, self.last_ts
                )));
            }
            if self.first_ts.is_none() {
                self.first_ts = Some(e.ts.0);
            }
            self.last_ts = e.ts.0;
        }
        self.events += chunk.len() as u64;
        Ok(())
    }

    fn add_products(&mut self, chunk: &[Event]) {
        for p in chunk.iter().filter_map(|e| e.product_id.as_ref()) {
            if !self.products.contains(p) {
                self.products.insert(p.clone());
            }
        }
    }
}

/// The events of a source that a shopper did: catalog entries (`product` events) carried
/// on the same stream are dropped (copying a chunk only when it holds one), so that the
/// back office that sends them is never a user and a product entry never a visit.
struct ShopperActivity<'a>(&'a mut dyn EventSource);

impl EventSource for ShopperActivity<'_> {
    fn for_each_chunk(&mut self, f: &mut dyn FnMut(&[Event]) -> Result<()>) -> Result<()> {
        let catalog = |e: &Event| e.event_type == recstream_ingest::EventType::Product;
        self.0.for_each_chunk(&mut |chunk| {
            if !chunk.iter().any(catalog) {
                return f(chunk);
            }
            let kept: Vec<Event> = chunk.iter().filter(|e| !catalog(e)).cloned().collect();
            if kept.is_empty() { Ok(()) } else { f(&kept) }
        })
    }
}

/// Trains everything from an event source read in time order, holding the models' state
/// (users, products, co-occurrence counts, training rows) but never the whole log: what
/// `recstream train` runs on the archive ([`crate::ArchiveSource`]).
///
/// ```text
///  pass 1 (summary): count, first/last time, products, eligible positives,
///                    cold-start counts, co-occurrence ─► cold-start lists, embeddings
///  pass 2 (replay):  Replay + sampled training rows at max_positives / eligible
///  rows ─► rankers; final user views ─► segments
/// ```
///
/// Sampling needs the number of eligible positives before the replay starts, hence two
/// passes; the per-user state of pass 1 is dropped before pass 2. The artifact equals
/// [`train`]'s on the same events (timings and `trained_at` aside). When the source
/// changes between the passes (an archive still being written) the second pass counts
/// what it replays; a log out of time order is `Err(ModelError::Unsorted)`.
pub fn train_from(
    source: &mut dyn EventSource,
    dataset: &str,
    params: &TrainParams,
    progress: &mut dyn Progress,
) -> Result<(ModelArtifact, Replay)> {
    params.validate()?;
    let source = &mut ShopperActivity(source);
    let started = Instant::now();
    let mut replay = Replay::new(params.features.clone());

    // Pass 1: everything that needs the log once, in time order, before the replay.
    let mut summary = LogSummary::default();
    let mut eligible = EligibleCount::default();
    let mut cold = ColdStartCounts::new(
        params.cold_start_half_life_secs * 1000.0,
        params.cold_start_first_events,
    );
    let mut co = if params.skip_embeddings {
        None
    } else {
        match params.embeddings.validate() {
            Ok(()) => Some(CoOccurrence::new(&params.embeddings)),
            Err(e) => {
                tracing::warn!(error = %e, "embeddings failed; similar products fall back to co-visitation");
                None
            }
        }
    };
    let mut co_secs = 0.0;
    progress.stage("read", 0);
    source.for_each_chunk(&mut |chunk| {
        summary.check(chunk, "first")?;
        summary.add_products(chunk);
        for e in chunk {
            eligible.apply(&replay, e);
            cold.apply(e);
        }
        if let Some(co) = co.as_mut() {
            let t = Instant::now();
            co.apply_all(chunk);
            co_secs += t.elapsed().as_secs_f64();
        }
        progress.inc(chunk.len() as u64);
        Ok(())
    })?;
    progress.finish_stage();
    let eligible = {
        let n = eligible.eligible;
        drop(eligible);
        n
    };
    let cold_start = cold.lists(params.cold_start_n, params.cold_start_min_users);
    drop(cold);
    let pass1_secs = started.elapsed().as_secs_f64() - co_secs;

    let t = Instant::now();
    let embeddings = co.and_then(|co| match co.fit(progress) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "embeddings failed; similar products fall back to co-visitation");
            None
        }
    });
    let embed_secs = co_secs + t.elapsed().as_secs_f64();

    // Pass 2: the replay.
    let t = Instant::now();
    let mut sampler = Sampler::new(params, eligible);
    let mut replayed = LogSummary::default();
    progress.stage("replay", summary.events);
    source.for_each_chunk(&mut |chunk| {
        replayed.check(chunk, "replay")?;
        for e in chunk {
            sampler.apply(&mut replay, e);
        }
        progress.inc(chunk.len() as u64);
        Ok(())
    })?;
    let set = sampler.finish(&mut replay);
    progress.finish_stage();
    if replayed.events != summary.events {
        tracing::warn!(
            first = summary.events,
            replay = replayed.events,
            "the event source changed between the two passes"
        );
    }
    let replay_secs = pass1_secs + t.elapsed().as_secs_f64();

    progress.stage("fit", 0);
    let t = Instant::now();
    let (affinity, online, train_auc) = fit_rankers(&set, params)?;
    let fit_secs = t.elapsed().as_secs_f64();
    progress.finish_stage();

    let t = Instant::now();
    let segments = if params.skip_segments {
        None
    } else {
        progress.stage("segments", 0);
        let users: Vec<_> = replay
            .user_ids()
            .into_iter()
            .filter_map(|u| replay.user(u))
            .collect();
        let s = Segments::fit(&users, &params.segments)
            .ok()
            .map(std::sync::Arc::new);
        progress.finish_stage();
        s
    };
    let segment_secs = t.elapsed().as_secs_f64();

    let mut metrics = std::collections::BTreeMap::new();
    metrics.insert("train_auc".to_string(), round(train_auc));
    metrics.insert(
        "candidate_recall".to_string(),
        round(set.covered as f64 / set.sampled.max(1) as f64),
    );
    metrics.insert("mean_candidates".to_string(), round(set.mean_candidates));
    metrics.insert("replay_seconds".to_string(), round(replay_secs));
    metrics.insert("fit_seconds".to_string(), round(fit_secs));
    metrics.insert("embedding_seconds".to_string(), round(embed_secs));
    metrics.insert("segment_seconds".to_string(), round(segment_secs));
    let meta = TrainingMeta {
        version: String::new(),
        dataset: dataset.to_string(),
        events: summary.events,
        users: replay.user_ids().len() as u64,
        products: summary.products.len() as u64,
        eligible_positives: set.eligible,
        positives: set.sampled,
        rows: set.len() as u64,
        first_event_ts: summary.first_ts.unwrap_or(0),
        last_event_ts: if summary.first_ts.is_some() {
            summary.last_ts
        } else {
            0
        },
        trained_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        train_seconds: round(started.elapsed().as_secs_f64()),
        metrics,
        params: params.clone(),
    };
    Ok((
        ModelArtifact {
            meta,
            affinity,
            online,
            cold_start,
            embeddings,
            segments,
        },
        replay,
    ))
}

fn round(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_of_perfect_and_reversed_rankings() {
        assert_eq!(auc(&[0.1, 0.2, 0.9], &[false, false, true]), 1.0);
        assert_eq!(auc(&[0.9, 0.2, 0.1], &[true, false, false]), 1.0);
        assert_eq!(auc(&[0.1, 0.9], &[true, false]), 0.0);
        assert_eq!(auc(&[0.5, 0.5], &[true, false]), 0.5);
    }
}
