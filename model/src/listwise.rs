//! The listwise ranker: the same linear scorer, trained on the lists it will rank.
//!
//! ```text
//!  each sampled positive: the list the endpoint would rank then (its top `list_depth`
//!  candidates by the blend), positive first
//!        loss(w) = mean over lists of  −log softmax(w·x̃)[positive]  +  (λ / 2G)·‖w‖²
//!        (ListNet's top-one probability, Cao et al. 2007; the sampled-softmax loss of
//!        two-tower retrieval, here over the exact served pool)
//!  L-BFGS (argmin, More–Thuente line search)  ─►  w   (standardised features, no bias:
//!                                                      a softmax is shift-invariant)
//!  Platt scaling on the same lists: p = σ(a·(w·x̃) + b), a > 0  ─►  AffinityModel
//! ```
//!
//! A pointwise logistic regression on a positive and ten sampled negatives learns
//! "engaged or not" over the whole pool; what the served list is judged by is the order
//! of the ~100 candidates that reach the ranker, which this objective optimises directly
//! (the negative log of the positive's softmax bounds its rank from above). Platt scaling
//! keeps the scores engagement probabilities, so the response's `score`, the FTRL
//! correction learnt from feedback ([`crate::OnlineRanker`]) and the logistic regression
//! all speak the same unit. Ranking is unchanged by it (`a > 0`).

use argmin::core::{CostFunction, Executor, Gradient, State};
use argmin::solver::linesearch::MoreThuenteLineSearch;
use argmin::solver::quasinewton::LBFGS;
use ndarray::Array1;

use crate::affinity::AffinityModel;
use crate::error::{ModelError, Result};
use crate::features::{FeatureSchema, NUM_FEATURES};

fn dot(x: &[f64], w: &[f64]) -> f64 {
    x.iter().zip(w).map(|(a, b)| a * b).sum()
}

/// Lists of standardised rows: list `g` is `rows[starts[g]..starts[g + 1]]` (in rows),
/// its first row the positive.
#[derive(Clone, Copy)]
struct Lists<'a> {
    rows: &'a [f64],
    starts: &'a [usize],
    /// `λ / G`: the L2 penalty per list.
    l2: f64,
}

impl Lists<'_> {
    fn len(&self) -> usize {
        self.starts.len() - 1
    }

    fn list(&self, g: usize) -> &[f64] {
        &self.rows[self.starts[g] * NUM_FEATURES..self.starts[g + 1] * NUM_FEATURES]
    }

    /// Mean softmax cross-entropy of the positives plus the penalty, and (into `grad`
    /// when given) its gradient.
    fn loss(&self, w: &[f64], mut grad: Option<&mut [f64]>) -> f64 {
        if let Some(g) = grad.as_deref_mut() {
            g.fill(0.0);
        }
        let mut total = 0.0;
        let mut scores = Vec::new();
        for g in 0..self.len() {
            let list = self.list(g);
            scores.clear();
            scores.extend(list.chunks_exact(NUM_FEATURES).map(|x| dot(x, w)));
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
            let lse = max + sum.ln();
            total += lse - scores[0];
            if let Some(gr) = grad.as_deref_mut() {
                for (i, x) in list.chunks_exact(NUM_FEATURES).enumerate() {
                    let p = (scores[i] - lse).exp() - if i == 0 { 1.0 } else { 0.0 };
                    for (gj, xj) in gr.iter_mut().zip(x) {
                        *gj += p * xj;
                    }
                }
            }
        }
        let n = self.len().max(1) as f64;
        let sq: f64 = w.iter().map(|v| v * v).sum();
        if let Some(gr) = grad {
            for (gj, wj) in gr.iter_mut().zip(w) {
                *gj = *gj / n + self.l2 * wj;
            }
        }
        total / n + 0.5 * self.l2 * sq
    }
}

impl CostFunction for Lists<'_> {
    type Param = Array1<f64>;
    type Output = f64;

    fn cost(&self, w: &Array1<f64>) -> std::result::Result<f64, argmin::core::Error> {
        Ok(self.loss(w.as_slice().expect("contiguous"), None))
    }
}

impl Gradient for Lists<'_> {
    type Param = Array1<f64>;
    type Gradient = Array1<f64>;

    fn gradient(&self, w: &Array1<f64>) -> std::result::Result<Array1<f64>, argmin::core::Error> {
        let mut g = Array1::zeros(NUM_FEATURES);
        self.loss(
            w.as_slice().expect("contiguous"),
            Some(g.as_slice_mut().expect("contiguous")),
        );
        Ok(g)
    }
}

/// Fits the listwise ranker.
///
/// `rows` are raw feature rows (flat, row-major), `starts` the first row of each list and
/// then the number of rows (so list `g` is `starts[g]..starts[g + 1]`), the positive
/// first in every list. Lists of one row teach nothing and are skipped. `l2` is the
/// penalty on the summed loss (as the logistic regression's), `max_iterations` bounds
/// L-BFGS.
pub fn fit(
    mut schema: FeatureSchema,
    rows: &[f64],
    starts: &[usize],
    l2: f64,
    max_iterations: u64,
) -> Result<AffinityModel> {
    if !rows.len().is_multiple_of(NUM_FEATURES)
        || starts.last().copied() != Some(rows.len() / NUM_FEATURES)
        || starts.windows(2).any(|w| w[0] > w[1])
    {
        return Err(ModelError::InvalidParams(
            "listwise rows and list starts do not match".into(),
        ));
    }
    if rows.iter().any(|v| !v.is_finite()) {
        return Err(ModelError::InvalidParams(
            "feature values must be finite".into(),
        ));
    }
    // Only lists with something to rank the positive against.
    let mut kept = Vec::with_capacity(rows.len());
    let mut kept_starts = vec![0];
    for w in starts.windows(2) {
        if w[1] - w[0] >= 2 {
            kept.extend_from_slice(&rows[w[0] * NUM_FEATURES..w[1] * NUM_FEATURES]);
            kept_starts.push(kept.len() / NUM_FEATURES);
        }
    }
    if kept_starts.len() < 2 {
        return Err(ModelError::NotEnoughData(
            "no list with a positive and another candidate".into(),
        ));
    }
    schema.fit_scaling(&kept);
    for row in kept.chunks_exact_mut(NUM_FEATURES) {
        schema.standardise(row);
    }
    let lists = Lists {
        rows: &kept,
        starts: &kept_starts,
        l2: l2 / (kept_starts.len() - 1) as f64,
    };
    let w = lbfgs(lists, max_iterations)?;
    let (a, b) = platt(&lists, &w);
    let weights: Vec<f64> = w.iter().map(|v| a * v).collect();
    Ok(AffinityModel::from_parts(schema, weights, b))
}

fn lbfgs(lists: Lists<'_>, max_iterations: u64) -> Result<Vec<f64>> {
    let solver = LBFGS::new(MoreThuenteLineSearch::new(), 10)
        .with_tolerance_grad(1e-6)
        .map_err(|e| ModelError::InvalidParams(e.to_string()))?
        .with_tolerance_cost(1e-9)
        .map_err(|e| ModelError::InvalidParams(e.to_string()))?;
    let res = Executor::new(lists, solver)
        .configure(|s| {
            s.param(Array1::zeros(NUM_FEATURES))
                .max_iters(max_iterations)
        })
        .run()
        .map_err(|e| ModelError::InvalidParams(format!("listwise fit: {e}")))?;
    let state = res.state();
    let w = state
        .get_best_param()
        .or_else(|| state.get_param())
        .cloned()
        .unwrap_or_else(|| Array1::zeros(NUM_FEATURES));
    if w.iter().any(|v| !v.is_finite()) {
        return Err(ModelError::NotEnoughData(
            "the listwise fit diverged".into(),
        ));
    }
    Ok(w.to_vec())
}

/// Platt scaling: `a`, `b` of `σ(a·s + b)` by Newton's method with step halving on the
/// log loss of every row (positive = first of its list); `a = 1`, `b` = the positives'
/// log-odds when the fit would not keep the order (`a ≤ 0`).
fn platt(lists: &Lists<'_>, w: &[f64]) -> (f64, f64) {
    let mut s = Vec::with_capacity(lists.rows.len() / NUM_FEATURES);
    let mut y = Vec::with_capacity(s.capacity());
    for g in 0..lists.len() {
        for (i, x) in lists.list(g).chunks_exact(NUM_FEATURES).enumerate() {
            s.push(dot(x, w));
            y.push(i == 0);
        }
    }
    let loss = |a: f64, b: f64| -> f64 {
        s.iter()
            .zip(&y)
            .map(|(si, yi)| {
                let z = a * si + b;
                // log(1 + e^z) − y·z, stable for large |z|.
                z.max(0.0) + (-z.abs()).exp().ln_1p() - if *yi { z } else { 0.0 }
            })
            .sum()
    };
    let rate = lists.len() as f64 / s.len() as f64;
    let fallback = (1.0, (rate / (1.0 - rate)).ln());
    let (mut a, mut b) = fallback;
    let mut current = loss(a, b);
    for _ in 0..100 {
        let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 1e-9, 0.0, 1e-9);
        for (si, yi) in s.iter().zip(&y) {
            let p = 1.0 / (1.0 + (-(a * si + b)).exp());
            let r = p - if *yi { 1.0 } else { 0.0 };
            let h = p * (1.0 - p);
            ga += r * si;
            gb += r;
            haa += h * si * si;
            hab += h * si;
            hbb += h;
        }
        let det = haa * hbb - hab * hab;
        if !(det.is_finite() && det > 0.0) {
            break;
        }
        let (da, db) = ((hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det);
        let mut t = 1.0;
        let improved = loop {
            let (na, nb) = (a - t * da, b - t * db);
            let l = loss(na, nb);
            if l <= current {
                break Some((na, nb, l));
            }
            t *= 0.5;
            if t < 1e-6 {
                break None;
            }
        };
        let Some((na, nb, l)) = improved else { break };
        let done = (current - l).abs() <= 1e-10 * current.abs().max(1.0);
        (a, b, current) = (na, nb, l);
        if done {
            break;
        }
    }
    if a.is_finite() && b.is_finite() && a > 0.0 {
        (a, b)
    } else {
        fallback
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::affinity::LinearScorer;
    use rand::{Rng, SeedableRng};
    use rand_xoshiro::Xoshiro256Plus;

    /// Lists where the positive is the candidate with the highest `x₀ + 0.5·x₁`, and
    /// feature 2 is noise: the fit must rank by the first two and ignore the third.
    fn lists(n: usize, len: usize, seed: u64) -> (Vec<f64>, Vec<usize>) {
        let mut rng = Xoshiro256Plus::seed_from_u64(seed);
        let (mut rows, mut starts) = (Vec::new(), vec![0]);
        for _ in 0..n {
            let mut list: Vec<[f64; NUM_FEATURES]> = (0..len)
                .map(|_| {
                    let mut x = [0.0; NUM_FEATURES];
                    for v in x.iter_mut().take(3) {
                        *v = rng.r#gen::<f64>();
                    }
                    x
                })
                .collect();
            let best = (0..len)
                .max_by(|&i, &j| {
                    let f = |x: &[f64; NUM_FEATURES]| x[0] + 0.5 * x[1];
                    f(&list[i]).total_cmp(&f(&list[j]))
                })
                .unwrap();
            list.swap(0, best);
            for x in list {
                rows.extend_from_slice(&x);
            }
            starts.push(rows.len() / NUM_FEATURES);
        }
        (rows, starts)
    }

    #[test]
    fn learns_the_order_of_the_lists() {
        let (rows, starts) = lists(400, 20, 1);
        let m = fit(FeatureSchema::new(1.0, 1.0), &rows, &starts, 1.0, 200).unwrap();
        let w = m.raw_weights();
        assert!(w[0] > 0.0 && w[1] > 0.0, "{:?}", &w[..3]);
        assert!(w[0] > 1.5 * w[1], "x0 counts twice x1: {:?}", &w[..3]);
        assert!(w[2].abs() < 0.25 * w[1], "noise: {:?}", &w[..3]);

        // On fresh lists the positive is ranked first most of the time.
        let (rows, starts) = lists(200, 20, 2);
        let mut first = 0;
        for s in starts.windows(2) {
            let scores: Vec<f64> = rows[s[0] * NUM_FEATURES..s[1] * NUM_FEATURES]
                .chunks_exact(NUM_FEATURES)
                .map(|x| m.logit(x.try_into().unwrap()))
                .collect();
            if scores[1..].iter().all(|v| *v < scores[0]) {
                first += 1;
            }
        }
        assert!(first > 120, "positive first in {first} of 200 lists");
    }

    #[test]
    fn scores_are_calibrated_probabilities() {
        let (rows, starts) = lists(400, 20, 3);
        let m = fit(FeatureSchema::new(1.0, 1.0), &rows, &starts, 1.0, 200).unwrap();
        let mean: f64 = rows
            .chunks_exact(NUM_FEATURES)
            .map(|x| 1.0 / (1.0 + (-m.logit(x.try_into().unwrap())).exp()))
            .sum::<f64>()
            / (rows.len() / NUM_FEATURES) as f64;
        // One positive in 20: Platt scaling matches the mean to the rate.
        assert!((mean - 0.05).abs() < 0.005, "mean probability {mean}");
    }

    #[test]
    fn refuses_mismatched_or_empty_lists() {
        let schema = || FeatureSchema::new(1.0, 1.0);
        let row = [0.0; NUM_FEATURES];
        assert!(fit(schema(), &row, &[0, 2], 1.0, 10).is_err());
        assert!(matches!(
            fit(schema(), &row, &[0, 1], 1.0, 10),
            Err(ModelError::NotEnoughData(_))
        ));
        let mut bad = [row, row].concat();
        bad[3] = f64::NAN;
        assert!(fit(schema(), &bad, &[0, 2], 1.0, 10).is_err());
    }
}
