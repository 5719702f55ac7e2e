//! Offline evaluation: temporal split, next-item prediction.
//!
//! ```text
//!  train events ─► train (replay + fit) ─► replay state at the split
//!  test events, in time order:  for each next-item target (the user's next, different product)
//!        methods rank with the features as they are just before the target:
//!          popularity  static top of the training period
//!          covisit     item-kNN on the co-visitation graph of the user's last 5 items
//!                      (Σ w(seed, c) / (1 + i))
//!          heuristic   the current fixed-weight blend of the candidate sources
//!          model       logistic regression over the candidates
//!          model_ftrl  FTRL over the candidates, updated online after every target
//!        every list but popularity's is backfilled with popularity (never short)
//!        tasks: any    every target
//!               discovery  targets new to the user; known items removed from every list
//!        then the event is applied (features stay live, as in production)
//!  metrics: HR@K, NDCG@K, MRR@K, catalog coverage@K for K in {10, 20}
//! ```
//!
//! Every method applies the serving filters (the current item, in cart, purchased); targets
//! those filters hide (buying what is in the cart) are no recommendation opportunity and are
//! skipped for every method alike.

use std::collections::BTreeMap;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256Plus;
use recstream_ingest::Event;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

use crate::affinity::LinearScorer;
use crate::error::{ModelError, Result};
use crate::features::{NUM_FEATURES, PairFeatures, UserContext};
use crate::metrics::SetMetrics;
use crate::progress::Progress;
use crate::replay::Replay;
use crate::train::{TrainParams, is_next_item, train};

/// How many of `test_events` are next-item targets: a product event of a user whose
/// previous product (in the test events so far, else in `replay`) was a different one.
/// Both evaluators sample their targets against this count.
pub fn next_item_targets(replay: &Replay, test_events: &[Event]) -> usize {
    let mut last: FxHashMap<&str, &str> = FxHashMap::default();
    let mut n = 0usize;
    for e in test_events {
        if let Some(p) = e.product_id.as_deref() {
            let prev = last
                .get(e.user_id.as_str())
                .copied()
                .or_else(|| replay.last_product(&e.user_id));
            if prev.is_some_and(|l| l != p) {
                n += 1;
            }
            last.insert(e.user_id.as_str(), p);
        }
    }
    n
}

/// One line of an evaluation: a method's metrics on a task at a cut-off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricRow {
    /// The recommender evaluated: `popularity`, `covisit`, `heuristic`, `model` or
    /// `model_ftrl`.
    pub method: String,
    /// Which targets: `any` next item, or `discovery` (items the user had not seen).
    pub task: String,
    /// The cut-off.
    pub k: usize,
    /// Hit rate at `k`.
    pub hr: f64,
    /// NDCG at `k`.
    pub ndcg: f64,
    /// MRR at `k`.
    pub mrr: f64,
    /// Distinct items recommended over the catalog size.
    pub coverage: f64,
    /// Targets evaluated.
    pub targets: u64,
}

/// An offline evaluation: a model trained on the first part of the log, tested on the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Name of the dataset evaluated.
    pub dataset: String,
    /// Events in the training part.
    pub train_events: usize,
    /// Events in the test part.
    pub test_events: usize,
    /// Distinct products of the training period (the coverage denominator).
    pub catalog: usize,
    /// Wall-clock duration of training, seconds.
    pub train_seconds: f64,
    /// Wall-clock duration of the evaluation, seconds.
    pub eval_seconds: f64,
    /// Training metrics of the model evaluated.
    pub train_metrics: BTreeMap<String, f64>,
    /// One row per method, task and cut-off.
    pub rows: Vec<MetricRow>,
}

impl EvalReport {
    /// The row of `method` on `task` at `k`, if evaluated.
    pub fn get(&self, method: &str, task: &str, k: usize) -> Option<&MetricRow> {
        self.rows
            .iter()
            .find(|r| r.method == method && r.task == task && r.k == k)
    }

    /// Relative NDCG@k lift of `method` over `baseline` (0.1 = +10 %).
    pub fn ndcg_lift(&self, method: &str, baseline: &str, task: &str, k: usize) -> Option<f64> {
        let (m, b) = (self.get(method, task, k)?, self.get(baseline, task, k)?);
        (b.ndcg > 0.0).then(|| m.ndcg / b.ndcg - 1.0)
    }

    /// A Markdown section: a heading, the table, and the lift over co-visitation.
    pub fn markdown(&self) -> String {
        let r = self;
        let mut s = format!(
            "### {}\n\n{} train / {} test events, catalog {} products; trained in {:.2} s, evaluated in {:.2} s.\n\n",
            r.dataset, r.train_events, r.test_events, r.catalog, r.train_seconds, r.eval_seconds
        );
        s.push_str("| method | task | K | HR | NDCG | MRR | coverage | targets |\n");
        s.push_str("|---|---|---:|---:|---:|---:|---:|---:|\n");
        for m in &r.rows {
            s.push_str(&format!(
                "| {} | {} | {} | {:.4} | {:.4} | {:.4} | {:.4} | {} |\n",
                m.method, m.task, m.k, m.hr, m.ndcg, m.mrr, m.coverage, m.targets
            ));
        }
        s.push('\n');
        for task in ["any", "discovery"] {
            if let Some(l) = r.ndcg_lift("model", "covisit", task, 20) {
                s.push_str(&format!(
                    "Model vs co-visitation, NDCG@20 ({task}): {:+.1} %.  \n",
                    l * 100.0
                ));
            }
        }
        s.push('\n');
        s
    }

    /// A fixed-width text table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "dataset {}: {} train / {} test events, catalog {}, trained in {:.2}s, evaluated in {:.2}s\n",
            self.dataset,
            self.train_events,
            self.test_events,
            self.catalog,
            self.train_seconds,
            self.eval_seconds
        );
        s.push_str(&format!(
            "{:<11} {:<10} {:>3} {:>8} {:>8} {:>8} {:>9} {:>8}\n",
            "method", "task", "K", "HR", "NDCG", "MRR", "coverage", "targets"
        ));
        for r in &self.rows {
            s.push_str(&format!(
                "{:<11} {:<10} {:>3} {:>8.4} {:>8.4} {:>8.4} {:>9.4} {:>8}\n",
                r.method, r.task, r.k, r.hr, r.ndcg, r.mrr, r.coverage, r.targets
            ));
        }
        for task in ["any", "discovery"] {
            if let Some(l) = self.ndcg_lift("model", "covisit", task, 20) {
                s.push_str(&format!(
                    "model vs covisit, NDCG@20 ({task}): {:+.1}%\n",
                    l * 100.0
                ));
            }
        }
        s
    }
}

/// What an offline evaluation is told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalParams {
    /// The training run of the model evaluated (embeddings and segments off by default).
    pub train: TrainParams,
    /// Cut-offs to report (default 10 and 20).
    pub ks: Vec<usize>,
    /// Targets evaluated at most (sampled uniformly, fixed seed).
    pub max_targets: usize,
    /// Share of events (by time) for training when no split is given.
    pub train_fraction: f64,
}

impl Default for EvalParams {
    fn default() -> Self {
        EvalParams {
            train: TrainParams {
                // Offline evaluation needs only the rankers.
                skip_embeddings: true,
                skip_segments: true,
                ..TrainParams::default()
            },
            ks: vec![10, 20],
            max_targets: 20_000,
            train_fraction: 0.8,
        }
    }
}

/// Sorts by time (stable) and splits at `fraction` of the events.
pub fn temporal_split(mut events: Vec<Event>, fraction: f64) -> (Vec<Event>, Vec<Event>) {
    events.sort_by_key(|e| e.ts);
    let cut = ((events.len() as f64) * fraction.clamp(0.0, 1.0)).round() as usize;
    let test = events.split_off(cut.min(events.len()));
    (events, test)
}

const METHODS: [&str; 5] = ["popularity", "covisit", "heuristic", "model", "model_ftrl"];
const TASKS: [&str; 2] = ["any", "discovery"];

/// Trains on `train` and evaluates next-item prediction on `test` (both sorted by time,
/// `test` after `train`).
pub fn evaluate(
    dataset: &str,
    train_events: &[Event],
    test_events: &[Event],
    params: &EvalParams,
    progress: &mut dyn Progress,
) -> Result<EvalReport> {
    if params.ks.is_empty() || params.ks.iter().any(|k| *k == 0 || *k > 1000) {
        return Err(ModelError::InvalidParams(
            "eval ks must be in 1..=1000".into(),
        ));
    }
    let max_k = *params.ks.iter().max().expect("non-empty");
    let t = Instant::now();
    let (artifact, mut replay) = train(train_events, dataset, &params.train, progress)?;
    let train_seconds = t.elapsed().as_secs_f64();
    let model = &artifact.affinity;
    let mut online = artifact.online.clone();
    let cp = &params.train.candidates;

    let mut counts: FxHashMap<&str, u64> = FxHashMap::default();
    for e in train_events {
        if let Some(p) = e.product_id.as_deref() {
            *counts.entry(p).or_default() += 1;
        }
    }
    let catalog = counts.len();
    let mut popular: Vec<(String, u64)> = counts.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    popular.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    popular.truncate(max_k + 300);

    // Sample targets if there are too many.
    let eligible = next_item_targets(&replay, test_events);
    let rate = (params.max_targets as f64 / eligible.max(1) as f64).min(1.0);
    let mut rng = Xoshiro256Plus::seed_from_u64(params.train.seed ^ 0x5eed);

    let mut acc: BTreeMap<(usize, usize, usize), SetMetrics> = BTreeMap::new();
    for m in 0..METHODS.len() {
        for t in 0..TASKS.len() {
            for &k in &params.ks {
                acc.insert((m, t, k), SetMetrics::new(k));
            }
        }
    }
    let started = Instant::now();
    progress.stage("evaluate", test_events.len() as u64);
    let mut x: PairFeatures = [0.0; NUM_FEATURES];
    let mut rows: Vec<f64> = Vec::new();
    let mut labels: Vec<bool> = Vec::new();
    for (i, e) in test_events.iter().enumerate() {
        if i % 1024 == 1023 {
            progress.inc(1024);
        }
        if !is_next_item(&replay, e) || rng.r#gen::<f64>() >= rate {
            replay.apply(e);
            continue;
        }
        let target = e
            .product_id
            .as_deref()
            .expect("next-item events have a product");
        let Some(user) = replay.user(&e.user_id) else {
            replay.apply(e);
            continue;
        };
        let hidden = (cp.exclude_purchased && user.purchased.iter().any(|p| p == target))
            || (cp.exclude_in_cart && user.cart.iter().any(|l| l.product_id == target));
        if hidden {
            replay.apply(e);
            continue;
        }
        let current = replay.last_product(&e.user_id).map(str::to_string);
        let mut excluded: FxHashSet<&str> = current.as_deref().into_iter().collect();
        if cp.exclude_purchased {
            excluded.extend(user.purchased.iter().map(String::as_str));
        }
        if cp.exclude_in_cart {
            excluded.extend(user.cart.iter().map(|l| l.product_id.as_str()));
        }
        let exclude_list: Vec<&str> = current.as_deref().into_iter().collect();
        let cands = replay.candidates(&user, cp, &exclude_list);
        let views: Vec<_> = cands
            .iter()
            .map(|(id, _)| replay.product_or_empty(id))
            .collect();
        let known_views: Vec<_> = cands
            .iter()
            .zip(&views)
            .filter(|((_, s), _)| s.recent > 0.0)
            .map(|(_, v)| v.as_ref())
            .collect();
        let ctx = UserContext::new(&user, known_views, &model.schema);
        let discovery = !ctx.knows(target);

        // Scores per method over the candidates.
        let mut lr = Vec::with_capacity(cands.len());
        let mut ftrl = Vec::with_capacity(cands.len());
        let mut heur = Vec::with_capacity(cands.len());
        for ((_, s), v) in cands.iter().zip(&views) {
            ctx.pair(v, s, &mut x);
            lr.push(model.logit(&x));
            ftrl.push(online.logit(&x));
            heur.push(s.heuristic());
        }
        let rank = |scores: &[f64]| -> Vec<&str> {
            let mut idx: Vec<usize> = (0..cands.len()).collect();
            idx.sort_by(|a, b| {
                scores[*b]
                    .total_cmp(&scores[*a])
                    .then_with(|| cands[*a].0.cmp(&cands[*b].0))
            });
            idx.into_iter().map(|i| cands[i].0.as_str()).collect()
        };
        let pop_list: Vec<&str> = popular.iter().map(|(p, _)| p.as_str()).collect();
        let covisit_list = {
            let mut sc: FxHashMap<String, f64> = FxHashMap::default();
            for (i, r) in user.recent.iter().take(cp.seed_items).enumerate() {
                if let Some(pf) = replay.product(&r.product_id) {
                    for (nb, w) in &pf.covisit {
                        *sc.entry(nb.clone()).or_default() += *w as f64 / (1.0 + i as f64);
                    }
                }
            }
            let mut v: Vec<(String, f64)> = sc.into_iter().collect();
            recstream_features::view::sort_desc(&mut v);
            v
        };
        let covisit: Vec<&str> = covisit_list.iter().map(|(p, _)| p.as_str()).collect();
        // Every method that ranks a candidate set is backfilled with popularity, as the
        // recommender fills a short list from the cold-start list: a list is never short
        // just because the candidate sources ran dry.
        let mut lists: [Vec<&str>; 5] = [Vec::new(), covisit, rank(&heur), rank(&lr), rank(&ftrl)];
        for l in &mut lists[1..] {
            l.extend(pop_list.iter().copied());
        }
        lists[0] = pop_list;

        for (m, list) in lists.iter().enumerate() {
            let mut seen: FxHashSet<&str> = FxHashSet::default();
            let any: Vec<&str> = list
                .iter()
                .copied()
                .filter(|p| !excluded.contains(p) && seen.insert(p))
                .take(max_k)
                .collect();
            for &k in &params.ks {
                acc.get_mut(&(m, 0, k))
                    .expect("present")
                    .add_one(&any, target);
            }
            if discovery {
                let mut seen: FxHashSet<&str> = FxHashSet::default();
                let new: Vec<&str> = list
                    .iter()
                    .copied()
                    .filter(|p| !excluded.contains(p) && !ctx.knows(p) && seen.insert(p))
                    .take(max_k)
                    .collect();
                for &k in &params.ks {
                    acc.get_mut(&(m, 1, k))
                        .expect("present")
                        .add_one(&new, target);
                }
            }
        }

        // Online learning: the target engaged, a sample of the other candidates did not.
        rows.clear();
        labels.clear();
        if let Some(pos) = cands.iter().position(|(id, _)| id == target) {
            ctx.pair(&views[pos], &cands[pos].1, &mut x);
            rows.extend_from_slice(&x);
            labels.push(true);
            for _ in 0..params.train.negatives_per_positive.min(cands.len() - 1) {
                let j = rng.gen_range(0..cands.len());
                if j != pos {
                    ctx.pair(&views[j], &cands[j].1, &mut x);
                    rows.extend_from_slice(&x);
                    labels.push(false);
                }
            }
            let view = ndarray::ArrayView2::from_shape((labels.len(), NUM_FEATURES), &rows)
                .expect("whole rows");
            online.update_batch(view, &labels)?;
        }
        replay.apply(e);
    }
    progress.finish_stage();

    let mut rows_out = Vec::new();
    for ((m, t, k), r) in &acc {
        rows_out.push(MetricRow {
            method: METHODS[*m].to_string(),
            task: TASKS[*t].to_string(),
            k: *k,
            hr: round(r.hit_rate()),
            ndcg: round(r.ndcg()),
            mrr: round(r.mrr()),
            coverage: round(r.coverage(catalog)),
            targets: r.n,
        });
    }
    rows_out.sort_by(|a, b| {
        (
            TASKS.iter().position(|t| *t == a.task),
            a.k,
            METHODS.iter().position(|m| *m == a.method),
        )
            .cmp(&(
                TASKS.iter().position(|t| *t == b.task),
                b.k,
                METHODS.iter().position(|m| *m == b.method),
            ))
    });
    Ok(EvalReport {
        dataset: dataset.to_string(),
        train_events: train_events.len(),
        test_events: test_events.len(),
        catalog,
        train_seconds: round(train_seconds),
        eval_seconds: round(started.elapsed().as_secs_f64()),
        train_metrics: artifact.meta.metrics.clone(),
        rows: rows_out,
    })
}

fn round(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_on_a_hand_made_example() {
        let mut m = SetMetrics::new(3);
        // Hit at rank 1, hit at rank 3, a miss (target at rank 4, beyond K), a miss.
        m.add_one(&["a", "b", "c"], "a");
        m.add_one(&["b", "d", "a"], "a");
        m.add_one(&["b", "c", "d", "a"], "a");
        m.add_one::<&str>(&[], "a");
        assert_eq!(m.n, 4);
        assert!((m.hit_rate() - 0.5).abs() < 1e-12);
        let ndcg = (1.0 + 1.0 / 4f64.log2()) / 4.0; // 1/log2(2) + 1/log2(4)
        assert!((m.ndcg() - ndcg).abs() < 1e-12);
        assert!((m.mrr() - (1.0 + 1.0 / 3.0) / 4.0).abs() < 1e-12);
        // Recommended: a, b, c, d (a beyond K in list 3 is not counted: c, d are).
        assert!((m.coverage(8) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn split_is_temporal() {
        use recstream_ingest::{EventType, Timestamp};
        let evs: Vec<Event> = (0..10)
            .rev()
            .map(|i| Event::new(&format!("e{i}"), Timestamp(i), "u", EventType::View))
            .collect();
        let (a, b) = temporal_split(evs, 0.8);
        assert_eq!(a.len(), 8);
        assert!(a.iter().all(|e| e.ts.0 < 8) && b.iter().all(|e| e.ts.0 >= 8));
    }
}
