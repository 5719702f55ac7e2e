//! The content-affinity model: the probability that a user engages with a candidate.
//!
//! ```text
//!  PairFeatures (raw) ─► standardise (FeatureSchema) ─► logistic regression (linfa-logistic, batch)
//!                                                     └► FTRL-proximal (linfa-ftrl, FitWith, online)
//!  serving: one dot product per candidate with the weights folded back to raw features
//! ```
//!
//! Both follow linfa's shape: `*Params` checked into `*ValidParams` ([`ParamGuard`]), [`Fit`] /
//! [`FitWith`], and [`PredictInplace`] returning probabilities.

use linfa::dataset::AsSingleTargets;
use linfa::prelude::*;
use linfa_ftrl::Ftrl;
use linfa_logistic::LogisticRegression;
use ndarray::{Array1, Array2, ArrayBase, ArrayView1, ArrayView2, Data, Ix2, ShapeBuilder};
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256Plus;
use recstream_features::{ProductFeatures, UserFeatures};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::features::{CandidateSignals, FeatureSchema, NUM_FEATURES, PairFeatures, UserContext};

#[inline]
fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z.clamp(-35.0, 35.0)).exp())
}

/// A linear scorer over raw pair features: `bias + Σ wᵢ·xᵢ`.
pub trait LinearScorer {
    /// The schema the weights are over (names, half-lives, standardisation).
    fn schema(&self) -> &FeatureSchema;
    /// Weights over raw (unstandardised) features.
    fn raw_weights(&self) -> &[f64; NUM_FEATURES];
    /// Intercept over raw (unstandardised) features.
    fn raw_bias(&self) -> f64;

    /// The logit of one pair.
    #[inline]
    fn logit(&self, x: &PairFeatures) -> f64 {
        let w = self.raw_weights();
        let mut z = self.raw_bias();
        for j in 0..NUM_FEATURES {
            z += w[j] * x[j];
        }
        z
    }

    /// Scores candidates for one user into `out` (cleared first): probabilities in `[0, 1]`.
    /// One small allocation per call (the user's lookups), none per candidate.
    fn score_into(
        &self,
        user: &UserFeatures,
        candidates: &[(&ProductFeatures, CandidateSignals)],
        out: &mut Vec<f64>,
    ) {
        self.score_with_rows(user, candidates, out, None);
    }

    /// [`LinearScorer::score_into`]; with `rows`, also keeps each candidate's raw feature
    /// row there (cleared first): what an online learner must learn from when the list is
    /// engaged with, without building the features a second time.
    fn score_with_rows(
        &self,
        user: &UserFeatures,
        candidates: &[(&ProductFeatures, CandidateSignals)],
        out: &mut Vec<f64>,
        mut rows: Option<&mut Vec<PairFeatures>>,
    ) {
        out.clear();
        out.reserve(candidates.len());
        if let Some(r) = rows.as_mut() {
            r.clear();
            r.reserve(candidates.len());
        }
        let ctx = UserContext::new(user, candidates.iter().map(|(p, _)| *p), self.schema());
        let mut x = [0.0; NUM_FEATURES];
        for (p, s) in candidates {
            ctx.pair(p, s, &mut x);
            out.push(sigmoid(self.logit(&x)));
            if let Some(r) = rows.as_mut() {
                r.push(x);
            }
        }
    }
}

/// Folds standardisation into the weights: `w·(x-μ)/σ + b = (w/σ)·x + (b - Σ w μ/σ)`.
fn fold(schema: &FeatureSchema, w: &[f64], b: f64) -> ([f64; NUM_FEATURES], f64) {
    let mut raw = [0.0; NUM_FEATURES];
    let mut bias = b;
    for j in 0..NUM_FEATURES {
        raw[j] = w[j] / schema.scale[j];
        bias -= w[j] * schema.mean[j] / schema.scale[j];
    }
    (raw, bias)
}

fn check_rows<D: Data<Elem = f64>>(x: &ArrayBase<D, Ix2>) -> Result<()> {
    if x.ncols() != NUM_FEATURES {
        return Err(ModelError::InvalidParams(format!(
            "expected {NUM_FEATURES} feature columns, got {}",
            x.ncols()
        )));
    }
    if x.iter().any(|v| !v.is_finite()) {
        return Err(ModelError::InvalidParams(
            "feature values must be finite".into(),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Batch: logistic regression

/// Checked hyper-parameters of the batch model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AffinityValidParams {
    /// L2 penalty of the logistic regression.
    pub l2: f64,
    /// Most iterations of the optimiser (L-BFGS) before it stops.
    pub max_iterations: u64,
    /// The optimiser stops once the gradient norm is below this.
    pub gradient_tolerance: f64,
    /// Half-lives the feature views were built with (recorded in the schema).
    pub user_half_life_ms: f64,
    /// Half-life of product popularity the views were built with.
    pub trending_half_life_ms: f64,
}

/// Unchecked hyper-parameters of the batch model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AffinityParams(AffinityValidParams);

impl Default for AffinityParams {
    fn default() -> Self {
        let f = recstream_features::FeatureConfig::default();
        AffinityParams(AffinityValidParams {
            l2: 1.0,
            max_iterations: 100,
            gradient_tolerance: 1e-5,
            user_half_life_ms: f.user_half_life_ms(),
            trending_half_life_ms: f.trending_half_life_ms(),
        })
    }
}

impl AffinityParams {
    /// The defaults (see [`Default`]).
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the L2 penalty (positive, finite).
    pub fn l2(mut self, l2: f64) -> Self {
        self.0.l2 = l2;
        self
    }
    /// Sets the most optimiser iterations (at least 1).
    pub fn max_iterations(mut self, n: u64) -> Self {
        self.0.max_iterations = n;
        self
    }
    /// Sets the gradient tolerance (greater than 0).
    pub fn gradient_tolerance(mut self, t: f64) -> Self {
        self.0.gradient_tolerance = t;
        self
    }
    /// Sets the half-lives the feature views were built with, in ms.
    pub fn half_lives(mut self, user_ms: f64, trending_ms: f64) -> Self {
        self.0.user_half_life_ms = user_ms;
        self.0.trending_half_life_ms = trending_ms;
        self
    }
}

impl ParamGuard for AffinityParams {
    type Checked = AffinityValidParams;
    type Error = ModelError;

    fn check_ref(&self) -> Result<&AffinityValidParams> {
        let p = &self.0;
        if !(p.l2.is_finite() && p.l2 > 0.0) {
            return Err(ModelError::InvalidParams(
                "l2 must be positive and finite".into(),
            ));
        }
        if p.max_iterations == 0 {
            return Err(ModelError::InvalidParams(
                "max_iterations must be at least 1".into(),
            ));
        }
        if !(p.gradient_tolerance.is_finite() && p.gradient_tolerance > 0.0) {
            return Err(ModelError::InvalidParams(
                "gradient_tolerance must be positive".into(),
            ));
        }
        for (name, h) in [
            ("user_half_life_ms", p.user_half_life_ms),
            ("trending_half_life_ms", p.trending_half_life_ms),
        ] {
            if !(h.is_finite() && h > 0.0) {
                return Err(ModelError::InvalidParams(format!(
                    "{name} must be positive"
                )));
            }
        }
        Ok(p)
    }

    fn check(self) -> Result<AffinityValidParams> {
        self.check_ref()?;
        Ok(self.0)
    }
}

/// The fitted batch model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AffinityModel {
    /// The feature schema, with the standardisation learnt on the training rows.
    pub schema: FeatureSchema,
    /// Weights over standardised features, and the intercept, as fitted.
    pub weights: Vec<f64>,
    /// Intercept over standardised features, as fitted.
    pub intercept: f64,
    #[serde(skip)]
    folded: Option<Folded>,
}

#[derive(Debug, Clone, PartialEq)]
struct Folded {
    w: [f64; NUM_FEATURES],
    b: f64,
}

impl AffinityModel {
    pub(crate) fn from_parts(
        schema: FeatureSchema,
        weights: Vec<f64>,
        intercept: f64,
    ) -> AffinityModel {
        let (w, b) = fold(&schema, &weights, intercept);
        AffinityModel {
            schema,
            weights,
            intercept,
            folded: Some(Folded { w, b }),
        }
    }

    /// Re-derives the serving weights after deserialisation and checks compatibility.
    pub fn prepare(mut self) -> Result<AffinityModel> {
        self.schema
            .check_compatible()
            .map_err(ModelError::Incompatible)?;
        if self.weights.len() != NUM_FEATURES || self.weights.iter().any(|w| !w.is_finite()) {
            return Err(ModelError::Incompatible(
                "weights have the wrong length".into(),
            ));
        }
        let (w, b) = fold(&self.schema, &self.weights, self.intercept);
        self.folded = Some(Folded { w, b });
        Ok(self)
    }

    /// Weight per feature name (standardised space), largest magnitude first.
    pub fn explain(&self) -> Vec<(String, f64)> {
        let mut v: Vec<(String, f64)> = self
            .schema
            .names
            .iter()
            .cloned()
            .zip(self.weights.iter().copied())
            .collect();
        v.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
        v
    }

    fn folded(&self) -> &Folded {
        self.folded
            .as_ref()
            .expect("AffinityModel::prepare must run after deserialisation")
    }
}

impl LinearScorer for AffinityModel {
    fn schema(&self) -> &FeatureSchema {
        &self.schema
    }
    fn raw_weights(&self) -> &[f64; NUM_FEATURES] {
        &self.folded().w
    }
    fn raw_bias(&self) -> f64 {
        self.folded().b
    }
}

impl<D, T> Fit<ArrayBase<D, Ix2>, T, ModelError> for AffinityValidParams
where
    D: Data<Elem = f64>,
    T: AsSingleTargets<Elem = bool>,
{
    type Object = AffinityModel;

    /// Fits on raw pair features (rows) and engagement labels.
    fn fit(&self, dataset: &DatasetBase<ArrayBase<D, Ix2>, T>) -> Result<AffinityModel> {
        let x = dataset.records();
        check_rows(x)?;
        let y = dataset.as_single_targets();
        let positives = y.iter().filter(|v| **v).count();
        if positives == 0 || positives == y.len() {
            return Err(ModelError::NotEnoughData(
                "training rows need both engaged and ignored candidates".into(),
            ));
        }
        let mut schema = FeatureSchema::new(self.user_half_life_ms, self.trending_half_life_ms);
        let flat: Vec<f64> = x.iter().copied().collect();
        schema.fit_scaling(&flat);
        let mut flat = flat;
        for row in flat.chunks_exact_mut(NUM_FEATURES) {
            schema.standardise(row);
        }
        // Column-major: linfa-logistic's gradient (`xᵀ·r`) walks columns, ~3x faster so.
        let rows =
            Array2::from_shape_vec((x.nrows(), NUM_FEATURES), flat).expect("shape checked above");
        let mut z = Array2::<f64>::zeros((x.nrows(), NUM_FEATURES).f());
        z.assign(&rows);
        drop(rows);
        let labels: Array1<bool> = y.iter().copied().collect();
        let lr = LogisticRegression::<f64>::default()
            .alpha(self.l2)
            .max_iterations(self.max_iterations)
            .gradient_tolerance(self.gradient_tolerance)
            .fit(&Dataset::new(z, labels))?;
        // linfa-logistic calls the majority class "positive": orient the model so that it
        // gives the probability of engagement.
        let sign = if lr.labels().pos.class { 1.0 } else { -1.0 };
        Ok(AffinityModel::from_parts(
            schema,
            lr.params().iter().map(|w| sign * w).collect(),
            sign * lr.intercept(),
        ))
    }
}

impl<D: Data<Elem = f64>> PredictInplace<ArrayBase<D, Ix2>, Array1<f64>> for AffinityModel {
    /// Engagement probabilities of raw pair-feature rows.
    fn predict_inplace(&self, x: &ArrayBase<D, Ix2>, y: &mut Array1<f64>) {
        predict_rows(self, x, y)
    }

    fn default_target(&self, x: &ArrayBase<D, Ix2>) -> Array1<f64> {
        Array1::zeros(x.nrows())
    }
}

fn predict_rows<M: LinearScorer, D: Data<Elem = f64>>(
    m: &M,
    x: &ArrayBase<D, Ix2>,
    y: &mut Array1<f64>,
) {
    assert_eq!(x.nrows(), y.len(), "one output per row");
    assert_eq!(x.ncols(), NUM_FEATURES, "rows must have every feature");
    let mut row = [0.0; NUM_FEATURES];
    for (i, r) in x.rows().into_iter().enumerate() {
        for (j, v) in r.iter().enumerate() {
            row[j] = *v;
        }
        y[i] = sigmoid(m.logit(&row));
    }
}

// ---------------------------------------------------------------------------------------
// Online: FTRL-proximal

/// Checked hyper-parameters of the online model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnlineValidParams {
    /// FTRL learning rate.
    pub alpha: f64,
    /// FTRL smoothing of the per-coordinate learning rate.
    pub beta: f64,
    /// L1 and L2 strengths (linfa-ftrl keeps them in `[0, 1]`).
    pub l1: f64,
    /// L2 strength (see `l1`).
    pub l2: f64,
    /// Rows per `fit_with` step when pre-training from the batch rows.
    pub batch_size: usize,
    /// Passes over the batch rows.
    pub epochs: usize,
    /// Seed of the row shuffle in pre-training.
    pub seed: u64,
}

/// Unchecked hyper-parameters of the online model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnlineParams(OnlineValidParams);

impl Default for OnlineParams {
    fn default() -> Self {
        OnlineParams(OnlineValidParams {
            alpha: 0.1,
            beta: 1.0,
            // With l1 = 1 the random initial state of linfa-ftrl (z in [0, 1)) gives all-zero
            // weights: the model starts neutral. Accumulated gradients dwarf it quickly.
            l1: 1.0,
            l2: 1.0,
            batch_size: 32,
            epochs: 2,
            seed: 42,
        })
    }
}

impl OnlineParams {
    /// The defaults (see [`Default`]).
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the learning rate (greater than 0).
    pub fn alpha(mut self, a: f64) -> Self {
        self.0.alpha = a;
        self
    }
    /// Sets the learning-rate smoothing (at least 0).
    pub fn beta(mut self, b: f64) -> Self {
        self.0.beta = b;
        self
    }
    /// Sets the L1 strength, in `[0, 1]`.
    pub fn l1(mut self, l1: f64) -> Self {
        self.0.l1 = l1;
        self
    }
    /// Sets the L2 strength, in `[0, 1]`.
    pub fn l2(mut self, l2: f64) -> Self {
        self.0.l2 = l2;
        self
    }
    /// Sets the rows per pre-training step (at least 1).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.0.batch_size = n;
        self
    }
    /// Sets the passes over the batch rows.
    pub fn epochs(mut self, n: usize) -> Self {
        self.0.epochs = n;
        self
    }
    /// Sets the shuffle seed.
    pub fn seed(mut self, s: u64) -> Self {
        self.0.seed = s;
        self
    }
}

impl ParamGuard for OnlineParams {
    type Checked = OnlineValidParams;
    type Error = ModelError;

    fn check_ref(&self) -> Result<&OnlineValidParams> {
        let p = &self.0;
        if !(p.alpha.is_finite() && p.alpha > 0.0 && p.beta.is_finite() && p.beta >= 0.0) {
            return Err(ModelError::InvalidParams(
                "ftrl alpha must be positive and beta non-negative".into(),
            ));
        }
        if !(0.0..=1.0).contains(&p.l1) || !(0.0..=1.0).contains(&p.l2) {
            return Err(ModelError::InvalidParams(
                "ftrl l1 and l2 must be in [0, 1]".into(),
            ));
        }
        if p.batch_size == 0 {
            return Err(ModelError::InvalidParams(
                "ftrl batch_size must be at least 1".into(),
            ));
        }
        Ok(p)
    }

    fn check(self) -> Result<OnlineValidParams> {
        self.check_ref()?;
        Ok(self.0)
    }
}

impl OnlineValidParams {
    fn ftrl_params(&self) -> linfa_ftrl::FtrlParams<f64, Xoshiro256Plus> {
        Ftrl::params_with_rng(Xoshiro256Plus::seed_from_u64(self.seed))
            .alpha(self.alpha)
            .beta(self.beta)
            .l1_ratio(self.l1)
            .l2_ratio(self.l2)
    }
}

/// The online ranker: FTRL over standardised features plus a bias column, learning from
/// the live stream with `update` between batch retrainings.
///
/// Either FTRL is the whole model (pre-trained on the pointwise rows), or it learns a
/// correction on top of a fixed base ([`OnlineRanker::on`], the listwise model): the logit
/// is `base·x̃ + ftrl·x̃`, FTRL's gradient is taken at that logit (linfa-ftrl's `update`
/// with the combined probabilities), and the correction starts at zero.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OnlineRanker {
    /// The feature schema the ranker scores over (the batch model's, at pre-training).
    pub schema: FeatureSchema,
    /// The checked hyper-parameters it was built with.
    pub params: OnlineValidParams,
    ftrl: Ftrl<f64>,
    /// The fixed part of the logit over standardised features (`NUM_FEATURES` weights,
    /// then the intercept), when FTRL learns a correction to a batch model.
    #[serde(default)]
    base: Option<Vec<f64>>,
    /// Updates applied (rows), batch pre-training included.
    pub updates: u64,
    #[serde(skip)]
    folded: Option<Folded>,
}

impl OnlineRanker {
    /// An online ranker that starts exactly at `base` (its scores equal the base model's)
    /// and learns a correction from feedback.
    pub fn on(base: &AffinityModel, params: &OnlineValidParams) -> Result<OnlineRanker> {
        let fp = params.ftrl_params().check().map_err(ModelError::Ftrl)?;
        let ftrl = Ftrl::new(fp, NUM_FEATURES + 1);
        // linfa-ftrl starts from a random state: the base absorbs whatever weights that
        // gives, so the sum starts at the base model.
        let w0 = ftrl.get_weights();
        let mut b: Vec<f64> = base.weights.iter().zip(&w0).map(|(b, w)| b - w).collect();
        b.push(base.intercept - w0[NUM_FEATURES]);
        let mut r = OnlineRanker {
            schema: base.schema.clone(),
            params: params.clone(),
            ftrl,
            base: Some(b),
            updates: 0,
            folded: None,
        };
        r.refold();
        Ok(r)
    }

    /// Weights over standardised features and the bias column: FTRL's, plus the base's.
    fn weights(&self) -> Array1<f64> {
        let mut w = self.ftrl.get_weights();
        if let Some(b) = &self.base {
            w += &ArrayView1::from(b.as_slice());
        }
        w
    }

    fn refold(&mut self) {
        let w = self.weights();
        let (b, rest) = (w[NUM_FEATURES], w.as_slice().expect("contiguous"));
        let (w, b) = fold(&self.schema, &rest[..NUM_FEATURES], b);
        self.folded = Some(Folded { w, b });
    }

    /// One FTRL step on design rows (standardised, bias column last): its gradient at the
    /// whole model's probabilities.
    fn step(
        &mut self,
        fp: &linfa_ftrl::FtrlParams<f64, Xoshiro256Plus>,
        z: Array2<f64>,
        labels: &[bool],
    ) -> Result<()> {
        let ds = Dataset::new(z, Array1::from(labels.to_vec()));
        if self.base.is_none() {
            self.ftrl = fp.fit_with(Some(self.ftrl.clone()), &ds)?;
        } else {
            let logits = ds.records().dot(&self.weights());
            let probs = logits.mapv(|l| linfa::dataset::Pr::new(sigmoid(l) as f32));
            self.ftrl.update(&ds, probs.view());
        }
        Ok(())
    }

    /// Re-derives the serving weights after deserialisation and checks compatibility.
    pub fn prepare(mut self) -> Result<OnlineRanker> {
        self.schema
            .check_compatible()
            .map_err(ModelError::Incompatible)?;
        if self.ftrl.z().len() != NUM_FEATURES + 1
            || self
                .base
                .as_ref()
                .is_some_and(|b| b.len() != NUM_FEATURES + 1 || b.iter().any(|v| !v.is_finite()))
        {
            return Err(ModelError::Incompatible(
                "ftrl state has the wrong length".into(),
            ));
        }
        self.refold();
        Ok(self)
    }

    fn design(&self, rows: ArrayView2<'_, f64>) -> Array2<f64> {
        let mut z = Array2::<f64>::ones((rows.nrows(), NUM_FEATURES + 1));
        for (i, r) in rows.rows().into_iter().enumerate() {
            for j in 0..NUM_FEATURES {
                z[[i, j]] = (r[j] - self.schema.mean[j]) / self.schema.scale[j];
            }
        }
        z
    }

    /// One online step on raw pair features.
    pub fn update(&mut self, x: &PairFeatures, engaged: bool) -> Result<()> {
        let rows = ArrayView2::from_shape((1, NUM_FEATURES), x.as_slice()).expect("one row");
        self.update_batch(rows, &[engaged])
    }

    /// One step on several raw rows given as arrays.
    pub fn update_rows(&mut self, rows: &[PairFeatures], engaged: &[bool]) -> Result<()> {
        let flat: Vec<f64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        let view = ArrayView2::from_shape((rows.len(), NUM_FEATURES), &flat)
            .map_err(|e| ModelError::InvalidParams(e.to_string()))?;
        self.update_batch(view, engaged)
    }

    /// One step on several raw rows (e.g. every impression of one recommendation list).
    pub fn update_batch(&mut self, rows: ArrayView2<'_, f64>, engaged: &[bool]) -> Result<()> {
        if rows.nrows() != engaged.len() || rows.ncols() != NUM_FEATURES {
            return Err(ModelError::InvalidParams(
                "rows and labels do not match".into(),
            ));
        }
        if rows.iter().any(|v| !v.is_finite()) {
            return Err(ModelError::InvalidParams(
                "feature values must be finite".into(),
            ));
        }
        let z = self.design(rows);
        self.step(&self.params.ftrl_params(), z, engaged)?;
        self.updates += engaged.len() as u64;
        self.refold();
        Ok(())
    }
}

impl LinearScorer for OnlineRanker {
    fn schema(&self) -> &FeatureSchema {
        &self.schema
    }
    fn raw_weights(&self) -> &[f64; NUM_FEATURES] {
        &self
            .folded
            .as_ref()
            .expect("OnlineRanker::prepare must run after deserialisation")
            .w
    }
    fn raw_bias(&self) -> f64 {
        self.folded.as_ref().expect("prepared").b
    }
}

/// Pre-training from batch rows: `(schema, rows, labels)` in time order.
impl<'a, D, T> FitWith<'a, ArrayBase<D, Ix2>, T, ModelError> for OnlineValidParams
where
    D: Data<Elem = f64>,
    T: AsSingleTargets<Elem = bool>,
{
    /// An existing ranker to keep training, or the schema to start a new one with.
    type ObjectIn = Result<OnlineRanker, FeatureSchema>;
    type ObjectOut = OnlineRanker;

    fn fit_with(
        &self,
        model: Self::ObjectIn,
        dataset: &'a DatasetBase<ArrayBase<D, Ix2>, T>,
    ) -> Result<OnlineRanker> {
        let x = dataset.records();
        check_rows(x)?;
        let y = dataset.as_single_targets();
        let mut ranker = match model {
            Ok(r) => r,
            Err(schema) => {
                schema
                    .check_compatible()
                    .map_err(ModelError::Incompatible)?;
                let fp = self.ftrl_params().check().map_err(ModelError::Ftrl)?;
                let mut r = OnlineRanker {
                    schema,
                    params: self.clone(),
                    ftrl: Ftrl::new(fp, NUM_FEATURES + 1),
                    base: None,
                    updates: 0,
                    folded: None,
                };
                r.refold();
                r
            }
        };
        let labels: Vec<bool> = y.iter().copied().collect();
        let fp = self.ftrl_params();
        for _ in 0..self.epochs.max(1) {
            let mut start = 0;
            while start < x.nrows() {
                let end = (start + self.batch_size).min(x.nrows());
                let rows = x.slice_axis(ndarray::Axis(0), ndarray::Slice::from(start..end));
                let z = ranker.design(rows);
                ranker.step(&fp, z, &labels[start..end])?;
                ranker.updates += (end - start) as u64;
                start = end;
            }
        }
        ranker.refold();
        Ok(ranker)
    }
}

impl<D: Data<Elem = f64>> PredictInplace<ArrayBase<D, Ix2>, Array1<f64>> for OnlineRanker {
    fn predict_inplace(&self, x: &ArrayBase<D, Ix2>, y: &mut Array1<f64>) {
        predict_rows(self, x, y)
    }

    fn default_target(&self, x: &ArrayBase<D, Ix2>) -> Array1<f64> {
        Array1::zeros(x.nrows())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    fn toy(n: usize) -> (Array2<f64>, Array1<bool>) {
        let mut rng = Xoshiro256Plus::seed_from_u64(7);
        let mut x = Array2::zeros((n, NUM_FEATURES));
        let mut y = Array1::from_elem(n, false);
        for i in 0..n {
            for j in 0..NUM_FEATURES {
                x[[i, j]] = rng.r#gen::<f64>();
            }
            // Engagement driven by covisit (col 0) and seen (col 8).
            let z = 4.0 * x[[i, 0]] + 2.0 * x[[i, 8]] - 3.0 + rng.r#gen::<f64>() - 0.5;
            y[i] = z > 0.0;
        }
        (x, y)
    }

    #[test]
    fn logistic_learns_the_driving_features() {
        let (x, y) = toy(2000);
        let ds = Dataset::new(x.clone(), y.clone());
        let m = AffinityParams::new().fit(&ds).unwrap();
        let top: Vec<String> = m.explain().into_iter().take(2).map(|(n, _)| n).collect();
        assert!(top.contains(&"sig_covisit".to_string()), "{top:?}");
        assert!(top.contains(&"seen".to_string()), "{top:?}");
        let p = m.predict(&x);
        let acc = p.iter().zip(&y).filter(|(p, y)| (**p > 0.5) == **y).count() as f64 / 2000.0;
        assert!(acc > 0.85, "accuracy {acc}");
    }

    #[test]
    fn ftrl_learns_and_updates_online() {
        let (x, y) = toy(4000);
        let ds = Dataset::new(x.clone(), y.clone());
        let mut schema = FeatureSchema::new(1.0, 1.0);
        schema.fit_scaling(x.as_slice().unwrap());
        let r = OnlineParams::new()
            .check()
            .unwrap()
            .fit_with(Err(schema), &ds)
            .unwrap();
        let p = r.predict(&x);
        let acc = p.iter().zip(&y).filter(|(p, y)| (**p > 0.5) == **y).count() as f64 / 4000.0;
        assert!(acc > 0.8, "accuracy {acc}");
        let mut r2 = r.clone();
        let row: PairFeatures = std::array::from_fn(|j| x[[0, j]]);
        let before = r2.logit(&row);
        for _ in 0..50 {
            r2.update(&row, true).unwrap();
        }
        assert!(r2.logit(&row) > before);
        // Round trip through JSON keeps predictions.
        let back: OnlineRanker = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        let back = back.prepare().unwrap();
        assert!((back.logit(&row) - r.logit(&row)).abs() < 1e-9);
    }

    #[test]
    fn ftrl_on_a_base_model_starts_there_and_learns_a_correction() {
        let (x, y) = toy(2000);
        let base = AffinityParams::new()
            .fit(&Dataset::new(x.clone(), y.clone()))
            .unwrap();
        // l1 < 1: linfa-ftrl's random start gives non-zero weights, which the base absorbs.
        let params = OnlineParams::new().l1(0.1).check().unwrap();
        let r = OnlineRanker::on(&base, &params).unwrap();
        let row: PairFeatures = std::array::from_fn(|j| x[[0, j]]);
        assert!((r.logit(&row) - base.logit(&row)).abs() < 1e-9);

        // Feedback that contradicts the base moves the scores, in the right direction.
        let mut r2 = r.clone();
        for _ in 0..50 {
            r2.update(&row, false).unwrap();
        }
        assert!(r2.logit(&row) < base.logit(&row) - 0.1);
        // The correction is what is stored: a round trip keeps base and correction.
        let back: OnlineRanker =
            serde_json::from_str(&serde_json::to_string(&r2).unwrap()).unwrap();
        let back = back.prepare().unwrap();
        assert!((back.logit(&row) - r2.logit(&row)).abs() < 1e-9);
    }
}
