//! recstream-eval: recommendation quality measured on what is served.
//!
//! ```text
//!  event log (by time) ─► split ─► train (recstream_model::train: replay + fit, as `train`)
//!        │                           │ artifact (rankers, cold-start lists)  │ Replay (Aggregator)
//!        │                           ▼                                       ▼
//!        │        Recommender::with_model  ◄── InProcessCache ◄─ cold-start lists    LiveStore
//!        │                 │ the endpoint's call, the endpoint's ScoringConfig
//!        ▼                 ▼
//!   protocol next_event:  each next item in a session, features live (replayed up to it)
//!   protocol next_period: features frozen at a time cut, truth = items touched after it
//!        ▼
//!   served list  vs  popularity · history · covisit · category · ease   (crate::baselines)
//!   tasks any / discovery (items new to the user; known items removed from every list)
//!   HR, Recall, NDCG, MRR @10 @20, coverage, share personalised vs cold start
//! ```
//!
//! The served list is never re-implemented here: `served` is the answer of
//! [`recstream_scoring::Recommender::recommend`] over a feature store that reads the
//! pipeline's own aggregation.

pub mod baselines;
pub mod ease;
pub mod error;
pub mod store;
pub mod tune;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256Plus;
use recstream_features::FeatureConfig;
use recstream_ingest::Event;
use recstream_model::train::is_next_item;
use recstream_model::{ModelArtifact, ModelHandle, NoProgress, TrainParams, train};
use recstream_scoring::{
    ColdStartCache, ColdStartList, InProcessCache, Recommender, Request, ScoringConfig, Strategy,
};
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

pub use baselines::Baselines;
pub use ease::Ease;
pub use error::{EvalError, Result};
pub use recstream_model::SetMetrics;
pub use store::LiveStore;

/// The methods, in report order: the served list first.
pub const METHODS: [&str; 6] = [
    "served",
    "popularity",
    "history",
    "covisit",
    "category",
    "ease",
];
/// The baselines, each scored next to the served list.
pub const BASELINES: [&str; 5] = ["popularity", "history", "covisit", "category", "ease"];
/// The cut-off of the summary, and of the per-target scores its confidence interval
/// resamples.
pub const SUMMARY_K: usize = 20;
/// Resamples of the summary's bootstrap.
const BOOTSTRAP: usize = 1000;

/// `any`: every next item counts; `discovery`: only items new to the user, and items the user touched before are removed from every method's list.
pub const TASKS: [&str; 2] = ["any", "discovery"];

/// How targets are cut from a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// The next item in the session, features replayed live up to it.
    NextEvent,
    /// Every item a user touches after a time cut, features frozen at the cut.
    NextPeriod,
}

impl Protocol {
    /// The protocol as reports name it (`next_event`, `next_period`).
    pub fn name(self) -> &'static str {
        match self {
            Protocol::NextEvent => "next_event",
            Protocol::NextPeriod => "next_period",
        }
    }
}

/// What an evaluation run does: training, the served configuration, cut-offs, splits and baseline settings (`recstream eval --params FILE.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalParams {
    /// Training, as `recstream train` does it (embeddings and segments are skipped: the
    /// recommendations endpoint does not read them).
    pub train: TrainParams,
    /// The endpoint's scoring configuration (`[scoring]` of the config file).
    pub scoring: ScoringConfig,
    /// Cut-offs K of every metric (each at most `scoring.max_n`).
    pub ks: Vec<usize>,
    /// Targets evaluated at most per protocol (sampled uniformly, fixed seed).
    pub max_targets: usize,
    /// next_event: share of events (by time) for training when no split is given.
    pub train_fraction: f64,
    /// next_period: the cut is at this share of the log's time span.
    pub period_fraction: f64,
    /// next_period: below this many users with history on both sides of the time cut, the
    /// cut is taken at `period_fraction` of the events instead.
    pub min_period_users: usize,
    /// next_event: the request names the current item as `context` (a product page).
    pub context_current_item: bool,
    /// Baselines: history half-life (hours), co-visitation seeds, top categories.
    pub history_half_life_hours: f64,
    /// Co-visitation baseline: how many of the user's most recent items seed it.
    pub covisit_seeds: usize,
    /// Co-visitation baseline: earlier items of the session each item pairs with (its own
    /// setting: tuning the served path's `features.covisit_window` never moves the baseline).
    pub covisit_window: usize,
    /// Co-visitation baseline: neighbours kept per item.
    pub covisit_neighbours: usize,
    /// Category baseline: how many of the user's top categories give best sellers.
    pub category_top: usize,
    /// EASE: items kept (most interacted) and L2 weight.
    pub ease_items: usize,
    /// EASE's L2 weight λ.
    pub ease_lambda: f64,
}

impl Default for EvalParams {
    fn default() -> Self {
        EvalParams {
            train: TrainParams {
                skip_embeddings: true,
                skip_segments: true,
                ..TrainParams::default()
            },
            scoring: ScoringConfig::default(),
            ks: vec![10, 20],
            max_targets: 20_000,
            train_fraction: 0.8,
            period_fraction: 0.8,
            min_period_users: 100,
            context_current_item: true,
            history_half_life_hours: 24.0,
            covisit_seeds: 20,
            covisit_window: 5,
            covisit_neighbours: 50,
            category_top: 3,
            ease_items: 1000,
            ease_lambda: 200.0,
        }
    }
}

impl EvalParams {
    /// Checks cut-offs, fractions and sizes; the scoring configuration is checked as the endpoint checks it.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(EvalError::InvalidParams(m.into()));
        if self.ks.is_empty() || self.ks.contains(&0) {
            return bad("ks must be positive");
        }
        if self.ks.iter().any(|k| *k > self.scoring.max_n) {
            return bad("ks must not exceed scoring.max_n");
        }
        if self.max_targets == 0 {
            return bad("max_targets must be positive");
        }
        for f in [self.train_fraction, self.period_fraction] {
            if !(f > 0.0 && f < 1.0) {
                return bad("train_fraction and period_fraction must be in (0, 1)");
            }
        }
        if !(self.history_half_life_hours.is_finite() && self.history_half_life_hours > 0.0) {
            return bad("history_half_life_hours must be positive");
        }
        if self.covisit_seeds == 0 || self.category_top == 0 {
            return bad("covisit_seeds and category_top must be positive");
        }
        if !(1..=50).contains(&self.covisit_window)
            || !(1..=1000).contains(&self.covisit_neighbours)
        {
            return bad("covisit_window must be in 1..=50 and covisit_neighbours in 1..=1000");
        }
        if self.ease_items == 0
            || self.ease_items > 5000
            || !(self.ease_lambda.is_finite() && self.ease_lambda > 0.0)
        {
            return bad("ease_items must be in 1..=5000 and ease_lambda positive");
        }
        self.scoring.validate().map_err(EvalError::InvalidParams)?;
        self.train.validate()?;
        Ok(())
    }

    fn max_k(&self) -> usize {
        *self.ks.iter().max().unwrap_or(&20)
    }
}

/// One method's metrics at one cut-off for one protocol × task (averaged over targets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The protocol.
    pub protocol: Protocol,
    /// `any` or `discovery`.
    pub task: String,
    /// `served` or a baseline of [`BASELINES`].
    pub method: String,
    /// The cut-off K.
    pub k: usize,
    /// Hit rate@K: share of targets with at least one relevant item in the top K.
    pub hr: f64,
    /// Recall@K: relevant items found / relevant items, averaged.
    pub recall: f64,
    /// NDCG@K with binary gain.
    pub ndcg: f64,
    /// MRR@K: 1 / rank of the first hit (0 without one).
    pub mrr: f64,
    /// Distinct items recommended in the top K / items of the training part.
    pub coverage: f64,
    /// Targets scored (next events, or users with activity after the cut).
    pub targets: u64,
}

/// How the served path answered one protocol × task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Served {
    /// The protocol.
    pub protocol: Protocol,
    /// `any` or `discovery`.
    pub task: String,
    /// Targets asked.
    pub targets: u64,
    /// Answered with `strategy = personalized`.
    pub personalized: u64,
    /// Answered from the cold-start lists.
    pub cold_start: u64,
    /// Recall of the first 100 candidates (the pool by the blend, what the ranker
    /// re-scores; the cold-start list for a user without history), after the serving
    /// filters and, in `discovery`, without the user's known items.
    pub candidate_recall_100: f64,
    /// Recall of the whole candidate pool (every source, before the rerank cut).
    pub candidate_recall_all: f64,
    /// Mean size of the candidate pool.
    pub mean_candidates: f64,
}

/// How one protocol split the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProtocolInfo {
    /// The protocol.
    pub protocol: Protocol,
    /// Events before the cut (replayed into the features, trained on).
    pub train_events: usize,
    /// Events after the cut (the targets come from these).
    pub test_events: usize,
    /// Distinct products of the training part (the coverage denominator).
    pub catalog: usize,
    /// How the split was made.
    pub split: String,
    /// Wall time of the protocol, seconds.
    pub seconds: f64,
    /// Mean wall time of one `Recommender::recommend` call (the endpoint's), microseconds,
    /// in this build's profile.
    pub recommend_us_mean: f64,
    /// Its 99th percentile, microseconds.
    pub recommend_us_p99: f64,
}

/// NDCG@[`SUMMARY_K`] of every method (in [`METHODS`] order) for each target of one
/// protocol × task: what the summary's confidence interval resamples.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetScores {
    /// The protocol.
    pub protocol: Protocol,
    /// `any` or `discovery`.
    pub task: String,
    /// One entry per target, one score per method.
    pub ndcg: Vec<[f32; METHODS.len()]>,
}

/// An evaluation of one dataset: splits, how the served path answered, every metric row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The dataset's name (`rees46`, `events`, …).
    pub dataset: String,
    /// One entry per protocol run.
    pub protocols: Vec<ProtocolInfo>,
    /// Personalised vs cold-start answers per protocol × task.
    pub served: Vec<Served>,
    /// Every method × protocol × task × K.
    pub rows: Vec<Row>,
    /// Per-target NDCG@[`SUMMARY_K`] (not serialised: a reread report has no confidence
    /// intervals).
    #[serde(skip)]
    pub per_target: Vec<TargetScores>,
}

/// One line of the summary: the served list against the best baseline at NDCG@20.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The dataset's name.
    pub dataset: String,
    /// The protocol.
    pub protocol: Protocol,
    /// `any` or `discovery`.
    pub task: String,
    /// Targets scored.
    pub targets: u64,
    /// NDCG@20 of the served list.
    pub served: f64,
    /// The baseline with the highest NDCG@20.
    pub best_baseline: String,
    /// Its NDCG@20.
    pub best: f64,
    /// served / best (None when the best baseline scores 0).
    pub ratio: Option<f64>,
    /// 95 % interval of `ratio` by a paired bootstrap over the targets (the same targets
    /// drawn for both methods, 1,000 resamples, fixed seed); at NDCG@[`SUMMARY_K`] only.
    #[serde(default)]
    pub ratio_ci95: Option<(f64, f64)>,
}

impl Report {
    /// The row of `method` at cut-off `k` for `protocol` × `task`, if it was scored.
    pub fn get(&self, protocol: Protocol, task: &str, method: &str, k: usize) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.protocol == protocol && r.task == task && r.method == method && r.k == k)
    }

    /// Served vs best baseline at NDCG@k, per protocol × task.
    pub fn summary(&self, k: usize) -> Vec<Summary> {
        let mut out = Vec::new();
        for p in [Protocol::NextEvent, Protocol::NextPeriod] {
            for task in TASKS {
                let Some(served) = self.get(p, task, "served", k) else {
                    continue;
                };
                let best = BASELINES
                    .iter()
                    .filter_map(|m| self.get(p, task, m, k))
                    .max_by(|a, b| a.ndcg.total_cmp(&b.ndcg));
                let Some(best) = best else { continue };
                let ratio_ci95 = if k == SUMMARY_K {
                    let m = METHODS.iter().position(|m| *m == best.method);
                    self.per_target
                        .iter()
                        .find(|t| t.protocol == p && t.task == task)
                        .zip(m)
                        .and_then(|(t, m)| ratio_ci95(&t.ndcg, m))
                } else {
                    None
                };
                out.push(Summary {
                    dataset: self.dataset.clone(),
                    protocol: p,
                    task: task.to_string(),
                    targets: served.targets,
                    served: served.ndcg,
                    best_baseline: best.method.clone(),
                    best: best.ndcg,
                    ratio: (best.ndcg > 0.0).then(|| round(served.ndcg / best.ndcg)),
                    ratio_ci95,
                });
            }
        }
        out
    }

    /// The full tables of this dataset, as Markdown.
    pub fn markdown(&self) -> String {
        let mut s = format!("### {}\n\n", self.dataset);
        for p in &self.protocols {
            s.push_str(&format!(
                "- {}: {} train / {} test events, catalog {}, {}; {:.1} s; `recommend` {:.0} µs mean, {:.0} µs p99\n",
                p.protocol.name(),
                p.train_events,
                p.test_events,
                p.catalog,
                p.split,
                p.seconds,
                p.recommend_us_mean,
                p.recommend_us_p99
            ));
        }
        for v in &self.served {
            s.push_str(&format!(
                "- served {} {}: {} targets, {} personalised, {} cold start; candidate recall@100 {:.4}, of the whole pool {:.4} (mean {:.0} candidates)\n",
                v.protocol.name(),
                v.task,
                v.targets,
                v.personalized,
                v.cold_start,
                v.candidate_recall_100,
                v.candidate_recall_all,
                v.mean_candidates
            ));
        }
        s.push_str(
            "\n| protocol | task | method | K | HR | Recall | NDCG | MRR | coverage | targets |\n",
        );
        s.push_str("|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
        for r in &self.rows {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {} |\n",
                r.protocol.name(),
                r.task,
                r.method,
                r.k,
                r.hr,
                r.recall,
                r.ndcg,
                r.mrr,
                r.coverage,
                r.targets
            ));
        }
        s.push('\n');
        s
    }
}

/// The summary table of several reports, as Markdown.
pub fn summary_markdown(reports: &[Report], k: usize) -> String {
    let mut s = format!(
        "| dataset | protocol | task | targets | served NDCG@{k} | best baseline | its NDCG@{k} | served / best | 95 % interval |\n|---|---|---|---:|---:|---|---:|---:|---:|\n"
    );
    for r in reports {
        for l in r.summary(k) {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {:.4} | {} | {:.4} | {} | {} |\n",
                l.dataset,
                l.protocol.name(),
                l.task,
                l.targets,
                l.served,
                l.best_baseline,
                l.best,
                l.ratio.map_or("—".to_string(), |x| format!("{x:.3}×")),
                l.ratio_ci95
                    .map_or("—".to_string(), |(lo, hi)| format!("{lo:.3}–{hi:.3}"))
            ));
        }
    }
    s
}

/// The 2.5 % and 97.5 % quantiles of mean(served) / mean(method `best`) over
/// [`BOOTSTRAP`] resamples of the targets (paired: one draw gives both methods' scores).
/// None for fewer than two targets or when most resamples leave the baseline at 0.
fn ratio_ci95(scores: &[[f32; METHODS.len()]], best: usize) -> Option<(f64, f64)> {
    let n = scores.len();
    if n < 2 {
        return None;
    }
    let mut rng = Xoshiro256Plus::seed_from_u64(0xb007);
    let mut ratios = Vec::with_capacity(BOOTSTRAP);
    for _ in 0..BOOTSTRAP {
        let (mut served, mut base) = (0.0, 0.0);
        for _ in 0..n {
            let t = &scores[rng.gen_range(0..n)];
            served += f64::from(t[0]);
            base += f64::from(t[best]);
        }
        if base > 0.0 {
            ratios.push(served / base);
        }
    }
    if ratios.len() < BOOTSTRAP / 2 {
        return None;
    }
    ratios.sort_unstable_by(f64::total_cmp);
    let q = |p: f64| ratios[((ratios.len() - 1) as f64 * p).round() as usize];
    Some((round(q(0.025)), round(q(0.975))))
}

fn round(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

/// The served path over a trained model and a live replay, as the endpoint builds it.
struct ServedPath {
    store: Arc<LiveStore>,
    recommender: Recommender,
    /// Wall time of every `recommend` call, nanoseconds.
    times: std::sync::Mutex<Vec<u64>>,
}

impl ServedPath {
    fn new(
        artifact: ModelArtifact,
        replay: recstream_model::Replay,
        cfg: &ScoringConfig,
    ) -> Result<ServedPath> {
        let store = Arc::new(LiveStore::new(replay));
        let cold = Arc::new(InProcessCache::new());
        // As the runtime publishes a loaded model's lists (`publish_cold_start`).
        for (key, items) in artifact.cold_start.lists() {
            let list = ColdStartList {
                items: items.to_vec(),
                source: artifact.meta.version.clone(),
            };
            futures::executor::block_on(cold.put(key, &list))?;
        }
        let handle = Arc::new(ModelHandle::new());
        handle.set(Arc::new(artifact));
        let recommender = Recommender::new(store.clone(), cold, cfg.clone()).with_model(handle);
        recommender.sync_model();
        Ok(ServedPath {
            store,
            recommender,
            times: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// The candidate pool the endpoint would rank for this request (best by the blend
    /// first); empty for a cold-start answer.
    fn candidates(&self, user: &str, context: Vec<String>) -> Result<Vec<String>> {
        let req = Request {
            user_id: user.to_string(),
            n: None,
            context,
        };
        Ok(futures::executor::block_on(
            self.recommender.candidates(&req),
        )?)
    }

    /// Mean and 99th percentile of the `recommend` calls so far, microseconds.
    fn latency_us(&self) -> (f64, f64) {
        let mut t = self.times.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if t.is_empty() {
            return (0.0, 0.0);
        }
        t.sort_unstable();
        let mean = t.iter().sum::<u64>() as f64 / t.len() as f64 / 1e3;
        let p99 = t[((t.len() as f64 * 0.99).ceil() as usize).clamp(1, t.len()) - 1] as f64 / 1e3;
        (round(mean), round(p99))
    }

    /// The endpoint's answer: product ids best first, and whether it was personalised.
    fn recommend(&self, user: &str, n: usize, context: Vec<String>) -> Result<(Vec<String>, bool)> {
        self.ask(user, n, context, true)
    }

    /// The candidate pool of this request for the recall measurement: the blend's pool
    /// when the answer is personalised, else the list served at `n` (cold start).
    fn pool(&self, user: &str, n: usize, context: Vec<String>) -> Result<Vec<String>> {
        let pool = self.candidates(user, context.clone())?;
        if !pool.is_empty() {
            return Ok(pool);
        }
        Ok(self.ask(user, n, context, false)?.0)
    }

    /// [`ServedPath::recommend`]; `timed` adds the call to the latency sample.
    fn ask(
        &self,
        user: &str,
        n: usize,
        context: Vec<String>,
        timed: bool,
    ) -> Result<(Vec<String>, bool)> {
        let req = Request {
            user_id: user.to_string(),
            n: Some(n),
            context,
        };
        let t = Instant::now();
        let r = futures::executor::block_on(self.recommender.recommend(&req))?;
        if timed {
            self.times
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(t.elapsed().as_nanos() as u64);
        }
        Ok((
            r.items.into_iter().map(|i| i.product_id).collect(),
            r.strategy == Strategy::Personalized,
        ))
    }
}

/// What one protocol run gives: how it split the log, how the served path answered, the
/// metric rows and the per-target scores.
type ProtocolRun = (ProtocolInfo, Vec<Served>, Vec<Row>, Vec<TargetScores>);

/// Accumulators of one protocol: (task, method, k) → metrics, and the served strategies.
struct Acc {
    metrics: BTreeMap<(usize, usize, usize), SetMetrics>,
    served: [(u64, u64); 2],
    /// Per task: Σ recall of the first 100 candidates, Σ recall of the pool, Σ pool size, targets.
    cand: [(f64, f64, f64, u64); 2],
    ks: Vec<usize>,
    max_k: usize,
    /// Per task: every target's NDCG@[`SUMMARY_K`] per method.
    per_target: [Vec<[f32; METHODS.len()]>; 2],
}

impl Acc {
    fn new(ks: &[usize]) -> Acc {
        let mut metrics = BTreeMap::new();
        for t in 0..TASKS.len() {
            for m in 0..METHODS.len() {
                for &k in ks {
                    metrics.insert((t, m, k), SetMetrics::new(k));
                }
            }
        }
        Acc {
            metrics,
            served: [(0, 0); 2],
            cand: [(0.0, 0.0, 0.0, 0); 2],
            ks: ks.to_vec(),
            max_k: ks.iter().copied().max().unwrap_or(20),
            per_target: [Vec::new(), Vec::new()],
        }
    }

    /// Scores the lists of every method (index = METHODS) for one task. `excluded` are the
    /// serving filters, applied to every method; `known` (discovery) is removed from every
    /// list.
    fn add(
        &mut self,
        task: usize,
        lists: &[Vec<&str>; 6],
        excluded: &FxHashSet<&str>,
        known: Option<&dyn Fn(&str) -> bool>,
        relevant: &FxHashSet<&str>,
    ) {
        let mut scores = [0.0f32; METHODS.len()];
        for (m, list) in lists.iter().enumerate() {
            let mut seen: FxHashSet<&str> = FxHashSet::default();
            let top: Vec<&str> = list
                .iter()
                .copied()
                .filter(|p| !excluded.contains(p) && known.is_none_or(|k| !k(p)) && seen.insert(p))
                .take(self.max_k)
                .collect();
            for &k in &self.ks {
                let ndcg = self
                    .metrics
                    .get_mut(&(task, m, k))
                    .expect("present")
                    .add(&top, relevant);
                if k == SUMMARY_K {
                    scores[m] = ndcg as f32;
                }
            }
        }
        if !relevant.is_empty() && self.ks.contains(&SUMMARY_K) {
            self.per_target[task].push(scores);
        }
    }

    /// Every target's NDCG@[`SUMMARY_K`] per task.
    fn per_target(&mut self, protocol: Protocol) -> Vec<TargetScores> {
        (0..TASKS.len())
            .map(|t| TargetScores {
                protocol,
                task: TASKS[t].to_string(),
                ndcg: std::mem::take(&mut self.per_target[t]),
            })
            .collect()
    }

    /// Recall of the candidate pool `pool` (best first) for one task: the first 100 and all
    /// of it, after the serving filters and (discovery) without known items.
    fn add_candidates(
        &mut self,
        task: usize,
        pool: &[String],
        excluded: &FxHashSet<&str>,
        known: Option<&dyn Fn(&str) -> bool>,
        relevant: &FxHashSet<&str>,
    ) {
        let kept: Vec<&str> = pool
            .iter()
            .map(String::as_str)
            .filter(|p| !excluded.contains(p) && known.is_none_or(|k| !k(p)))
            .collect();
        let n = relevant.len().max(1) as f64;
        let hits = |l: &[&str]| l.iter().filter(|p| relevant.contains(*p)).count() as f64 / n;
        let c = &mut self.cand[task];
        c.0 += hits(&kept[..kept.len().min(100)]);
        c.1 += hits(&kept);
        c.2 += kept.len() as f64;
        c.3 += 1;
    }

    fn rows(&self, protocol: Protocol, catalog: usize) -> Vec<Row> {
        let mut rows: Vec<Row> = self
            .metrics
            .iter()
            .map(|((t, m, k), r)| Row {
                protocol,
                task: TASKS[*t].to_string(),
                method: METHODS[*m].to_string(),
                k: *k,
                hr: round(r.hit_rate()),
                recall: round(r.recall()),
                ndcg: round(r.ndcg()),
                mrr: round(r.mrr()),
                coverage: round(r.coverage(catalog)),
                targets: r.n,
            })
            .collect();
        rows.sort_by_key(|r| {
            (
                TASKS.iter().position(|t| *t == r.task),
                r.k,
                METHODS.iter().position(|m| *m == r.method),
            )
        });
        rows
    }

    fn served(&self, protocol: Protocol) -> Vec<Served> {
        (0..TASKS.len())
            .map(|t| Served {
                protocol,
                task: TASKS[t].to_string(),
                targets: self.served[t].0 + self.served[t].1,
                personalized: self.served[t].0,
                cold_start: self.served[t].1,
                candidate_recall_100: round(self.cand[t].0 / self.cand[t].3.max(1) as f64),
                candidate_recall_all: round(self.cand[t].1 / self.cand[t].3.max(1) as f64),
                mean_candidates: round(self.cand[t].2 / self.cand[t].3.max(1) as f64),
            })
            .collect()
    }
}

fn catalog(events: &[Event]) -> usize {
    events
        .iter()
        .filter_map(|e| e.product_id.as_deref())
        .collect::<FxHashSet<_>>()
        .len()
}

/// Users' distinct items, for EASE.
fn user_items(events: &[Event]) -> Vec<Vec<String>> {
    let mut by_user: FxHashMap<&str, Vec<String>> = FxHashMap::default();
    let mut seen: FxHashSet<(&str, &str)> = FxHashSet::default();
    for e in events {
        if let Some(p) = e.product_id.as_deref()
            && seen.insert((e.user_id.as_str(), p))
        {
            by_user
                .entry(e.user_id.as_str())
                .or_default()
                .push(p.to_string());
        }
    }
    let mut v: Vec<(&str, Vec<String>)> = by_user.into_iter().collect();
    v.sort_unstable_by(|a, b| a.0.cmp(b.0));
    v.into_iter().map(|(_, i)| i).collect()
}

/// Everything a protocol scores, fitted on `train_events`: the served path (trained model,
/// its cold-start lists, the endpoint's scoring), the simple baselines and EASE.
fn fit_methods(
    train_events: &[Event],
    params: &EvalParams,
) -> Result<(ServedPath, Baselines, Ease)> {
    // The ranker learns on the candidate sets (and lists) the endpoint builds.
    let tp = TrainParams {
        candidates: params.scoring.candidate_params(),
        list_depth: params.scoring.rerank_depth.max(2),
        ..params.train.clone()
    };
    let (artifact, replay) = train(train_events, "eval", &tp, &mut NoProgress)?;
    let served = ServedPath::new(artifact, replay, &params.scoring)?;
    let covisitation = FeatureConfig {
        covisit_window: params.covisit_window,
        covisit_neighbours: params.covisit_neighbours,
        ..params.train.features.clone()
    };
    let base = Baselines::new(
        train_events,
        params.history_half_life_hours,
        2000,
        &covisitation,
    );
    let items = user_items(train_events);
    let ease = Ease::fit(
        items.iter().map(Vec::as_slice),
        params.ease_items,
        params.ease_lambda,
    )?;
    Ok((served, base, ease))
}

fn check_sorted(events: &[Event]) -> Result<()> {
    if events.windows(2).any(|w| w[0].ts > w[1].ts) {
        return Err(EvalError::InvalidParams(
            "events must be sorted by time".into(),
        ));
    }
    Ok(())
}

/// Protocol (a): the next item in the session, features replayed live through `test`.
pub fn next_event(
    train_events: &[Event],
    test_events: &[Event],
    params: &EvalParams,
) -> Result<ProtocolRun> {
    params.validate()?;
    check_sorted(train_events)?;
    check_sorted(test_events)?;
    let started = Instant::now();
    let (served, mut base, ease) = fit_methods(train_events, params)?;
    let cfg = &params.scoring;
    let max_k = params.max_k();

    let eligible = recstream_model::eval::next_item_targets(&served.store.replay(), test_events);
    let rate = (params.max_targets as f64 / eligible.max(1) as f64).min(1.0);
    let mut rng = Xoshiro256Plus::seed_from_u64(params.train.seed ^ 0xe7a1);
    let mut acc = Acc::new(&params.ks);

    for e in test_events {
        let take = is_next_item(&served.store.replay(), e) && rng.r#gen::<f64>() < rate;
        if take {
            target_next_event(e, &served, &base, &ease, params, cfg, max_k, &mut acc)?;
        }
        served.store.apply(e);
        base.apply(e);
    }
    let catalog = catalog(train_events);
    let latency = served.latency_us();
    let info = ProtocolInfo {
        protocol: Protocol::NextEvent,
        train_events: train_events.len(),
        test_events: test_events.len(),
        catalog,
        split: format!("{} targets sampled at rate {:.3}", eligible, rate),
        seconds: round(started.elapsed().as_secs_f64()),
        recommend_us_mean: latency.0,
        recommend_us_p99: latency.1,
    };
    Ok((
        info,
        acc.served(Protocol::NextEvent),
        acc.rows(Protocol::NextEvent, catalog),
        acc.per_target(Protocol::NextEvent),
    ))
}

#[allow(clippy::too_many_arguments)]
fn target_next_event(
    e: &Event,
    served: &ServedPath,
    base: &Baselines,
    ease: &Ease,
    params: &EvalParams,
    cfg: &ScoringConfig,
    max_k: usize,
    acc: &mut Acc,
) -> Result<()> {
    let target = e
        .product_id
        .as_deref()
        .expect("next-item events have a product");
    let uid = e.user_id.as_str();
    let (user, current) = {
        let r = served.store.replay();
        (
            r.user(uid).unwrap_or_default(),
            r.last_product(uid).map(str::to_string),
        )
    };
    // Targets the serving filters hide (buying what is in the cart) are no opportunity.
    if (cfg.exclude_purchased && user.purchased.iter().any(|p| p == target))
        || (cfg.exclude_in_cart && user.cart.iter().any(|l| l.product_id == target))
    {
        return Ok(());
    }
    let mut excluded: FxHashSet<&str> = current.as_deref().into_iter().collect();
    if cfg.exclude_purchased {
        excluded.extend(user.purchased.iter().map(String::as_str));
    }
    if cfg.exclude_in_cart {
        excluded.extend(user.cart.iter().map(|l| l.product_id.as_str()));
    }
    let context: Vec<String> = if params.context_current_item {
        current.iter().cloned().collect()
    } else {
        Vec::new()
    };
    let now = e.ts.0;
    let discovery = !base.knows(uid, target);
    let (any_list, personal) = served.recommend(uid, max_k, context.clone())?;
    let recent = base.recent(uid);
    let seeds: Vec<&str> = recent.iter().copied().take(params.covisit_seeds).collect();
    let cov = base.covisit(&seeds);
    let ease_list = ease.recommend(recent.iter().copied(), 2000);
    let mut lists: [Vec<&str>; 6] = [
        any_list.iter().map(String::as_str).collect(),
        base.popularity(),
        base.history(uid, now),
        cov.iter().map(String::as_str).collect(),
        base.category(uid, now, params.category_top),
        ease_list,
    ];
    let relevant: FxHashSet<&str> = [target].into_iter().collect();
    acc.add(0, &lists, &excluded, None, &relevant);
    acc.served[0].0 += personal as u64;
    acc.served[0].1 += !personal as u64;
    let pool = served.pool(uid, cfg.max_n, context.clone())?;
    acc.add_candidates(0, &pool, &excluded, None, &relevant);
    if discovery {
        let (wide, personal) = served.recommend(uid, cfg.max_n, context)?;
        lists[0] = wide.iter().map(String::as_str).collect();
        let known = |p: &str| base.knows(uid, p);
        acc.add(1, &lists, &excluded, Some(&known), &relevant);
        acc.add_candidates(1, &pool, &excluded, Some(&known), &relevant);
        acc.served[1].0 += personal as u64;
        acc.served[1].1 += !personal as u64;
    }
    Ok(())
}

/// Where protocol (b) cuts `events` (sorted by time): at `period_fraction` of the time
/// span, or of the events when the time cut leaves fewer than `min_period_users` users
/// with history on both sides. Returns the index of the first test event and a description.
pub fn period_cut(events: &[Event], params: &EvalParams) -> (usize, String) {
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return (0, "empty log".into());
    };
    let t = first.ts.0 + ((last.ts.0 - first.ts.0) as f64 * params.period_fraction) as i64;
    let by_time = events.partition_point(|e| e.ts.0 < t);
    let both = |cut: usize| {
        let before: FxHashSet<&str> = events[..cut]
            .iter()
            .filter(|e| e.product_id.is_some())
            .map(|e| e.user_id.as_str())
            .collect();
        events[cut..]
            .iter()
            .filter(|e| e.product_id.is_some() && before.contains(e.user_id.as_str()))
            .map(|e| e.user_id.as_str())
            .collect::<FxHashSet<_>>()
            .len()
    };
    let n = both(by_time);
    if n >= params.min_period_users {
        return (
            by_time,
            format!(
                "time cut at {:.0} % of the span, {n} users on both sides",
                params.period_fraction * 100.0
            ),
        );
    }
    let by_count = ((events.len() as f64) * params.period_fraction) as usize;
    let m = both(by_count);
    (
        by_count,
        format!(
            "event-count cut at {:.0} % (the time cut left {n} users on both sides; this one {m})",
            params.period_fraction * 100.0
        ),
    )
}

/// Protocol (b): features frozen at the cut; for every user active after it, the truth
/// is the set of items they touch after the cut.
pub fn next_period(events: &[Event], params: &EvalParams) -> Result<ProtocolRun> {
    params.validate()?;
    check_sorted(events)?;
    let started = Instant::now();
    let (cut, split) = period_cut(events, params);
    let (train_events, test_events) = events.split_at(cut);
    let (served, base, ease) = fit_methods(train_events, params)?;
    let cfg = &params.scoring;
    let max_k = params.max_k();
    let now = train_events.last().map_or(0, |e| e.ts.0);

    // Truth per user, users in order of first appearance after the cut.
    let mut truth: Vec<(&str, Vec<&str>)> = Vec::new();
    let mut at: FxHashMap<&str, usize> = FxHashMap::default();
    for e in test_events {
        if let Some(p) = e.product_id.as_deref() {
            let i = *at.entry(e.user_id.as_str()).or_insert_with(|| {
                truth.push((e.user_id.as_str(), Vec::new()));
                truth.len() - 1
            });
            if !truth[i].1.contains(&p) {
                truth[i].1.push(p);
            }
        }
    }
    let rate = (params.max_targets as f64 / truth.len().max(1) as f64).min(1.0);
    let mut rng = Xoshiro256Plus::seed_from_u64(params.train.seed ^ 0x9e71);
    let mut acc = Acc::new(&params.ks);
    for (uid, items) in &truth {
        if rng.r#gen::<f64>() >= rate {
            continue;
        }
        let user = served.store.replay().user(uid).unwrap_or_default();
        let mut excluded: FxHashSet<&str> = FxHashSet::default();
        if cfg.exclude_purchased {
            excluded.extend(user.purchased.iter().map(String::as_str));
        }
        if cfg.exclude_in_cart {
            excluded.extend(user.cart.iter().map(|l| l.product_id.as_str()));
        }
        let (list, personal) = served.recommend(uid, max_k, Vec::new())?;
        let recent = base.recent(uid);
        let seeds: Vec<&str> = recent.iter().copied().take(params.covisit_seeds).collect();
        let cov = base.covisit(&seeds);
        let mut lists: [Vec<&str>; 6] = [
            list.iter().map(String::as_str).collect(),
            base.popularity(),
            base.history(uid, now),
            cov.iter().map(String::as_str).collect(),
            base.category(uid, now, params.category_top),
            ease.recommend(recent.iter().copied(), 2000),
        ];
        let relevant: FxHashSet<&str> = items.iter().copied().collect();
        acc.add(0, &lists, &excluded, None, &relevant);
        acc.served[0].0 += personal as u64;
        acc.served[0].1 += !personal as u64;
        let pool = served.pool(uid, cfg.max_n, Vec::new())?;
        acc.add_candidates(0, &pool, &excluded, None, &relevant);
        let new: FxHashSet<&str> = items
            .iter()
            .copied()
            .filter(|p| !base.knows(uid, p))
            .collect();
        if !new.is_empty() {
            let (wide, personal) = served.recommend(uid, cfg.max_n, Vec::new())?;
            lists[0] = wide.iter().map(String::as_str).collect();
            let known = |p: &str| base.knows(uid, p);
            acc.add(1, &lists, &excluded, Some(&known), &new);
            acc.add_candidates(1, &pool, &excluded, Some(&known), &new);
            acc.served[1].0 += personal as u64;
            acc.served[1].1 += !personal as u64;
        }
    }
    let catalog = catalog(train_events);
    let latency = served.latency_us();
    let info = ProtocolInfo {
        protocol: Protocol::NextPeriod,
        train_events: train_events.len(),
        test_events: test_events.len(),
        catalog,
        split: format!(
            "{split}; {} users after the cut, sampled at rate {rate:.3}",
            truth.len()
        ),
        seconds: round(started.elapsed().as_secs_f64()),
        recommend_us_mean: latency.0,
        recommend_us_p99: latency.1,
    };
    Ok((
        info,
        acc.served(Protocol::NextPeriod),
        acc.rows(Protocol::NextPeriod, catalog),
        acc.per_target(Protocol::NextPeriod),
    ))
}

/// Both protocols on one dataset. `train` / `test` is the next-event split (sorted by
/// time); the next-period protocol cuts their concatenation itself.
pub fn evaluate(
    dataset: &str,
    train_events: &[Event],
    test_events: &[Event],
    params: &EvalParams,
) -> Result<Report> {
    let (a_info, a_served, a_rows, a_scores) = next_event(train_events, test_events, params)?;
    let mut all: Vec<Event> = train_events.iter().chain(test_events).cloned().collect();
    all.sort_by_key(|e| e.ts);
    let (b_info, b_served, b_rows, b_scores) = next_period(&all, params)?;
    Ok(Report {
        dataset: dataset.to_string(),
        protocols: vec![a_info, b_info],
        served: a_served.into_iter().chain(b_served).collect(),
        rows: a_rows.into_iter().chain(b_rows).collect(),
        per_target: a_scores.into_iter().chain(b_scores).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(pairs: &[(f32, f32)]) -> Vec<[f32; METHODS.len()]> {
        pairs
            .iter()
            .map(|&(served, base)| {
                let mut s = [0.0; METHODS.len()];
                s[0] = served;
                s[3] = base;
                s
            })
            .collect()
    }

    #[test]
    fn the_bootstrap_interval_is_exact_when_every_target_agrees() {
        // Served scores twice the baseline on every target: every resample says 2.
        let s = scores(&[(0.2, 0.1), (0.6, 0.3), (1.0, 0.5), (0.4, 0.2)]);
        assert_eq!(ratio_ci95(&s, 3), Some((2.0, 2.0)));
        assert_eq!(ratio_ci95(&s[..1], 3), None, "one target is no sample");
        assert_eq!(ratio_ci95(&scores(&[(1.0, 0.0), (1.0, 0.0)]), 3), None);
    }

    #[test]
    fn the_bootstrap_interval_holds_the_ratio_and_narrows_with_more_targets() {
        // Hits (1) and misses (0): served hits 11 of 20, the baseline 10 of 20.
        let pairs: Vec<(f32, f32)> = (0..20)
            .map(|i| (f32::from(u8::from(i < 11)), f32::from(u8::from(i % 2 == 0))))
            .collect();
        let small = ratio_ci95(&scores(&pairs), 3).unwrap();
        assert!(small.0 < 1.1 && 1.1 < small.1, "{small:?}");
        let many: Vec<(f32, f32)> = pairs.iter().copied().cycle().take(2000).collect();
        let large = ratio_ci95(&scores(&many), 3).unwrap();
        assert!(large.0 < 1.1 && 1.1 < large.1, "{large:?}");
        assert!(
            large.1 - large.0 < (small.1 - small.0) / 3.0,
            "{small:?} vs {large:?}"
        );
    }
}
