//! Leave-one-dataset-out choice of the served path's parameters (`recstream eval --tune`).
//!
//! ```text
//!  grid (a small, explicit product of settings, `grid`) × datasets ─► evaluate (both protocols)
//!        score(point, dataset) = mean over the rows with ≥ min_targets targets of
//!                                served NDCG@20 / best baseline NDCG@20
//!  fold h (each dataset once): choose the point with the best mean score on the others,
//!        report its score on h (never looked at while choosing)
//!  shipped defaults: of the points the folds chose, the one with the best mean held-out score
//! ```
//!
//! The grid is small and explicit ([`grid`]): the per-category cap of the list (the
//! diversification trade-off), the cold-start list (half-life, new visitors' events only)
//! the candidate budgets (seeds, co-visited neighbours per seed, best sellers per
//! category), the ranker's objective and how co-visitation weighs the order of a session.
//!
//! A dataset without a row of `min_targets` targets (the 20-session OTTO fixture) has no
//! score: it never decides a fold, and its held-out line shows its rows for information.

use std::time::Instant;

use recstream_ingest::Event;
use recstream_model::Objective;
use serde::{Deserialize, Serialize};

use crate::{EvalParams, Report, Result, Summary, evaluate};

/// One setting of the grid: a name (`cap=4 cold=7d/all cands=base`) and the parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct GridPoint {
    /// Short, unique, human-readable.
    pub name: String,
    /// The full evaluation parameters of this point.
    pub params: EvalParams,
}

/// The candidate budgets of one grid setting: seeds, neighbours per seed, best sellers per category.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgets {
    /// `scoring.seed_items`.
    pub seed_items: usize,
    /// `scoring.neighbours_per_seed`.
    pub neighbours_per_seed: usize,
    /// `scoring.per_category`.
    pub per_category: usize,
    /// `scoring.two_hop`.
    pub two_hop: usize,
    /// `scoring.two_hop_take`.
    pub two_hop_take: usize,
}

/// The candidate budgets of the former defaults.
pub const BASE: Budgets = Budgets {
    seed_items: 5,
    neighbours_per_seed: 20,
    per_category: 10,
    two_hop: 0,
    two_hop_take: 50,
};
/// A wider pool: more seeds, every kept co-visited neighbour, more best sellers.
pub const WIDE: Budgets = Budgets {
    seed_items: 10,
    neighbours_per_seed: 50,
    per_category: 30,
    two_hop: 0,
    two_hop_take: 50,
};
/// The wider pool and a second hop of co-visitation from the most recent item (the
/// lists of its 10 strongest neighbours).
pub const HOP: Budgets = Budgets {
    two_hop: 10,
    ..WIDE
};
/// … the lists of its 25 strongest neighbours.
pub const HOP25: Budgets = Budgets {
    two_hop: 25,
    ..WIDE
};
/// … the first 20 items of the lists of its 10 strongest neighbours.
pub const HOP_20: Budgets = Budgets {
    two_hop_take: 20,
    ..HOP
};
/// … the first 20 items of the lists of its 25 strongest neighbours.
pub const HOP25_20: Budgets = Budgets {
    two_hop_take: 20,
    ..HOP25
};

/// How co-visitation weighs the order of a session's items (`features.covisit_*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Order {
    /// Short name in the point's name.
    pub name: &'static str,
    /// `features.covisit_distance_decay`.
    pub distance_decay: f32,
    /// `features.covisit_backward`.
    pub backward: f32,
}

impl Order {
    const fn new(name: &'static str, distance_decay: f32, backward: f32) -> Order {
        Order {
            name,
            distance_decay,
            backward,
        }
    }
}

/// Plain co-occurrence counts within the window (the former defaults).
pub const PLAIN: Order = Order::new("plain", 0.0, 1.0);
/// Pairs weighed by 1 / distance, both directions alike.
pub const DIST: Order = Order::new("dist", 1.0, 1.0);
/// 1 / distance, what came before at half weight (the shipped default).
pub const SEQ: Order = Order::new("seq", 1.0, 0.5);
/// 1 / distance, only what followed (sequential rules).
pub const NEXT: Order = Order::new("next", 1.0, 0.0);

/// One explicit point: per-category cap of the list, cold-start half-life (days), how
/// many of each user's first product events the cold-start lists count (0 = all), the
/// candidate budgets (named, with the second hop of co-visitation), the ranker's training objective and co-visitation's order.
pub type Setting = (usize, f64, usize, (&'static str, Budgets), Objective, Order);

const POINT: Objective = Objective::Pointwise;
const LIST: Objective = Objective::Listwise;

/// The grid, first the former defaults. Small on purpose (each point is a full
/// evaluation of every dataset): the cap (4, 10, none), the cold-start half-life (7 or 90
/// days) and new visitors' events only, the budgets, the ranker's objective (pointwise
/// logistic regression or the listwise softmax, `recstream_model::listwise`), the
/// order-awareness of co-visitation and its second hop.
pub const SETTINGS: [Setting; 18] = [
    (4, 7.0, 0, ("base", BASE), POINT, PLAIN),
    (4, 90.0, 0, ("wide", WIDE), POINT, PLAIN),
    (10, 90.0, 0, ("wide", WIDE), POINT, PLAIN),
    (100, 90.0, 0, ("wide", WIDE), POINT, PLAIN),
    (100, 90.0, 10, ("wide", WIDE), POINT, PLAIN),
    (100, 7.0, 0, ("base", BASE), POINT, PLAIN),
    (100, 90.0, 0, ("wide", WIDE), LIST, PLAIN),
    (100, 90.0, 10, ("wide", WIDE), LIST, PLAIN),
    (100, 90.0, 10, ("wide", WIDE), POINT, DIST),
    (100, 90.0, 10, ("wide", WIDE), POINT, SEQ),
    (100, 90.0, 10, ("wide", WIDE), POINT, NEXT),
    (10, 90.0, 10, ("wide", WIDE), POINT, SEQ),
    (100, 90.0, 10, ("wide", WIDE), LIST, SEQ),
    (100, 90.0, 10, ("hop", HOP), POINT, SEQ),
    (100, 90.0, 10, ("hop25", HOP25), POINT, SEQ),
    (100, 90.0, 10, ("hop", HOP), LIST, SEQ),
    (100, 90.0, 10, ("hop/20", HOP_20), POINT, SEQ),
    (100, 90.0, 10, ("hop25/20", HOP25_20), POINT, SEQ),
];

/// The grid over `base`: [`SETTINGS`], in order.
pub fn grid(base: &EvalParams) -> Vec<GridPoint> {
    SETTINGS
        .iter()
        .map(|&(cap, days, first, (bname, b), objective, order)| {
            let mut p = base.clone();
            p.scoring.max_per_category = cap;
            p.train.cold_start_half_life_secs = days * 86_400.0;
            p.train.cold_start_first_events = first;
            p.scoring.seed_items = b.seed_items;
            p.scoring.neighbours_per_seed = b.neighbours_per_seed;
            p.scoring.per_category = b.per_category;
            p.scoring.two_hop = b.two_hop;
            p.scoring.two_hop_take = b.two_hop_take;
            p.train.objective = objective;
            p.train.features.covisit_distance_decay = order.distance_decay;
            p.train.features.covisit_backward = order.backward;
            let cold = if first == 0 {
                "all".to_string()
            } else {
                format!("first{first}")
            };
            GridPoint {
                name: format!(
                    "cap={cap} cold={days}d/{cold} cands={bname} rank={} covisit={}",
                    match objective {
                        Objective::Pointwise => "pointwise",
                        Objective::Listwise => "listwise",
                    },
                    order.name
                ),
                params: p,
            }
        })
        .collect()
}

/// A dataset to tune on: its name and its next-event split (sorted by time).
pub struct TuneSet {
    /// The dataset's name.
    pub name: String,
    /// Training part of the next-event split.
    pub train: Vec<Event>,
    /// Test part.
    pub test: Vec<Event>,
}

/// The score of one point on one dataset and the rows it averages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Mean served / best ratio over the rows with enough targets (None: no such row).
    pub score: Option<f64>,
    /// Every summary row of the dataset (served vs best baseline, NDCG@20).
    pub rows: Vec<Summary>,
}

/// One held-out fold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fold {
    /// The held-out dataset.
    pub held_out: String,
    /// The point chosen on the other datasets.
    pub chosen: String,
    /// Its mean score on the other datasets (what chose it).
    pub train_score: f64,
    /// Its score on the held-out dataset.
    pub held_out_score: Option<f64>,
    /// The held-out dataset's rows under the chosen point.
    pub rows: Vec<Summary>,
}

/// The result of a tuning run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TuneReport {
    /// Grid point names, in grid order.
    pub points: Vec<String>,
    /// Dataset names.
    pub datasets: Vec<String>,
    /// `cells[point][dataset]`.
    pub cells: Vec<Vec<Cell>>,
    /// One fold per dataset.
    pub folds: Vec<Fold>,
    /// The point to ship: of the folds' choices, the best mean held-out score.
    pub shipped: String,
    /// Rows of at least this many targets decide.
    pub min_targets: u64,
    /// Wall time, seconds.
    pub seconds: f64,
}

fn mean(xs: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (s, n) = xs
        .into_iter()
        .fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| s / n as f64)
}

/// The score of a report: mean served / best NDCG@20 over rows with `min_targets` targets.
pub fn score(report: &Report, min_targets: u64) -> Cell {
    let rows = report.summary(20);
    let score = mean(
        rows.iter()
            .filter(|r| r.targets >= min_targets)
            .filter_map(|r| r.ratio),
    )
    .map(crate::round);
    Cell { score, rows }
}

/// Chooses per fold and the shipped point from a score table `cells[point][dataset]`.
pub fn choose(points: &[String], datasets: &[String], cells: &[Vec<Cell>]) -> (Vec<Fold>, String) {
    let mut folds = Vec::new();
    for (h, held_out) in datasets.iter().enumerate() {
        let mut best: Option<(usize, f64)> = None;
        for (g, row) in cells.iter().enumerate() {
            let Some(m) = mean(
                row.iter()
                    .enumerate()
                    .filter(|(d, _)| *d != h)
                    .filter_map(|(_, c)| c.score),
            ) else {
                continue;
            };
            // Ties keep the earlier point (grid order).
            if best.is_none_or(|(_, b)| m > b) {
                best = Some((g, m));
            }
        }
        let (g, m) = best.unwrap_or((0, f64::NAN));
        folds.push(Fold {
            held_out: held_out.clone(),
            chosen: points.get(g).cloned().unwrap_or_default(),
            train_score: crate::round(m),
            held_out_score: cells.get(g).and_then(|r| r[h].score),
            rows: cells.get(g).map(|r| r[h].rows.clone()).unwrap_or_default(),
        });
    }
    // Of the points the folds chose, the best mean held-out score over every fold.
    let mut shipped: Option<(String, f64)> = None;
    for f in &folds {
        let Some(g) = points.iter().position(|p| *p == f.chosen) else {
            continue;
        };
        let m = mean(cells[g].iter().filter_map(|c| c.score)).unwrap_or(f64::NAN);
        if shipped.as_ref().is_none_or(|(_, b)| m > *b) {
            shipped = Some((f.chosen.clone(), m));
        }
    }
    (folds, shipped.map(|s| s.0).unwrap_or_default())
}

/// Evaluates every grid point on every dataset and chooses by leave-one-dataset-out.
pub fn tune(
    sets: &[TuneSet],
    grid: &[GridPoint],
    min_targets: u64,
    mut progress: impl FnMut(&str, &str, Option<f64>),
) -> Result<TuneReport> {
    let started = Instant::now();
    let mut cells = Vec::with_capacity(grid.len());
    for g in grid {
        let mut row = Vec::with_capacity(sets.len());
        for s in sets {
            let report = evaluate(&s.name, &s.train, &s.test, &g.params)?;
            let c = score(&report, min_targets);
            progress(&g.name, &s.name, c.score);
            row.push(c);
        }
        cells.push(row);
    }
    let points: Vec<String> = grid.iter().map(|g| g.name.clone()).collect();
    let datasets: Vec<String> = sets.iter().map(|s| s.name.clone()).collect();
    let (folds, shipped) = choose(&points, &datasets, &cells);
    Ok(TuneReport {
        points,
        datasets,
        cells,
        folds,
        shipped,
        min_targets,
        seconds: crate::round(started.elapsed().as_secs_f64()),
    })
}

fn fmt_score(s: Option<f64>) -> String {
    s.map_or("—".to_string(), |x| format!("{x:.3}"))
}

impl TuneReport {
    /// The fold table, the grid's scores per dataset and the shipped point, as Markdown.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "Score of a point on a dataset: mean of served / best-baseline NDCG@20 over the rows with at least {} targets (— = no such row). {} points × {} datasets in {:.0} s.\n\n",
            self.min_targets,
            self.points.len(),
            self.datasets.len(),
            self.seconds
        );
        s.push_str("| held out | chosen on the other three | their mean score | held-out score | held-out rows (protocol task: served / best) |\n|---|---|---:|---:|---|\n");
        for f in &self.folds {
            let rows: Vec<String> = f
                .rows
                .iter()
                .map(|r| {
                    format!(
                        "{} {}: {} ({} targets)",
                        r.protocol.name(),
                        r.task,
                        r.ratio.map_or("—".into(), |x| format!("{x:.2}×")),
                        r.targets
                    )
                })
                .collect();
            s.push_str(&format!(
                "| {} | `{}` | {:.3} | {} | {} |\n",
                f.held_out,
                f.chosen,
                f.train_score,
                fmt_score(f.held_out_score),
                rows.join("; ")
            ));
        }
        s.push_str(&format!("\nShipped defaults: `{}`.\n\n", self.shipped));
        s.push_str("| point |");
        for d in &self.datasets {
            s.push_str(&format!(" {d} |"));
        }
        s.push_str("\n|---|");
        for _ in &self.datasets {
            s.push_str("---:|");
        }
        s.push('\n');
        for (p, row) in self.points.iter().zip(&self.cells) {
            s.push_str(&format!("| `{p}` |"));
            for c in row {
                s.push_str(&format!(" {} |", fmt_score(c.score)));
            }
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Protocol;

    fn cell(score: Option<f64>) -> Cell {
        Cell {
            score,
            rows: vec![Summary {
                dataset: "d".into(),
                protocol: Protocol::NextEvent,
                task: "any".into(),
                targets: 600,
                served: 0.1,
                best_baseline: "covisit".into(),
                best: 0.1,
                ratio: score,
                ratio_ci95: None,
            }],
        }
    }

    #[test]
    fn each_fold_chooses_on_the_other_datasets_only() {
        let points = vec!["p0".to_string(), "p1".to_string()];
        let datasets = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        // p1 wins on a and b, p0 on c; c has a huge p0 score that must not decide c's fold.
        let cells = vec![
            vec![cell(Some(1.0)), cell(Some(1.0)), cell(Some(9.0))],
            vec![cell(Some(1.2)), cell(Some(1.2)), cell(Some(0.5))],
        ];
        let (folds, shipped) = choose(&points, &datasets, &cells);
        assert_eq!(folds[2].chosen, "p1", "c held out: chosen on a and b");
        assert_eq!(folds[2].held_out_score, Some(0.5));
        assert_eq!(folds[0].chosen, "p0", "a held out: b and c favour p0");
        assert_eq!(folds[0].held_out_score, Some(1.0));
        // p0: mean(1, 1, 9) = 3.67 beats p1: mean(1.2, 1.2, 0.5) = 0.97.
        assert_eq!(shipped, "p0");
    }

    #[test]
    fn a_dataset_without_a_deciding_row_never_decides() {
        let points = vec!["p0".to_string(), "p1".to_string()];
        let datasets = vec!["a".to_string(), "tiny".to_string()];
        let cells = vec![
            vec![cell(Some(1.0)), cell(None)],
            vec![cell(Some(0.9)), cell(None)],
        ];
        let (folds, _) = choose(&points, &datasets, &cells);
        assert_eq!(folds[1].chosen, "p0");
        assert_eq!(folds[1].held_out_score, None);
        assert!(folds[0].train_score.is_nan(), "nothing to choose on");
    }

    #[test]
    fn the_grid_names_are_unique_and_every_point_is_valid() {
        let g = grid(&EvalParams::default());
        assert_eq!(g.len(), SETTINGS.len());
        let mut names: Vec<&str> = g.iter().map(|p| p.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), g.len());
        assert!(g.iter().all(|p| p.params.validate().is_ok()));
    }
}
