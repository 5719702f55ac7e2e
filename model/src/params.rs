//! Training parameters: what a training run is told, kept with the artifact it made.
//! Its own module so that [`crate::artifact`] and [`crate::train`] do not import each other.

use linfa::prelude::*;
use recstream_features::FeatureConfig;
use serde::{Deserialize, Serialize};

use crate::affinity::{AffinityParams, OnlineParams};
use crate::candidates::CandidateParams;
use crate::embed::EmbeddingParams;
use crate::error::{ModelError, Result};
use crate::features::FeatureSchema;
use crate::segments::SegmentParams;

/// The training objective of the ranker (both give the same linear scorer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// Logistic regression on each positive and `negatives_per_positive` sampled
    /// candidates (linfa-logistic).
    #[default]
    Pointwise,
    /// Softmax cross-entropy of each positive within its served list ([`crate::listwise`]).
    Listwise,
}

/// Everything a training run can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainParams {
    /// Must equal the feature pipeline's settings (half-lives, list bounds).
    pub features: FeatureConfig,
    /// Candidate budgets and filters (must equal scoring's).
    pub candidates: CandidateParams,
    /// What the ranker is trained on: `listwise` (each positive's whole served list) or
    /// `pointwise` (logistic regression on sampled negatives).
    pub objective: Objective,
    /// `listwise`: the list of a positive is its top `list_depth` candidates by the blend,
    /// what the endpoint ranks (`scoring.rerank_depth`).
    pub list_depth: usize,
    /// `pointwise`: ignored candidates sampled per positive.
    pub negatives_per_positive: usize,
    /// Positives used at most (sampled uniformly over time); bounds memory and time.
    pub max_positives: usize,
    /// Also learn from positives the candidate sources did not retrieve.
    pub include_uncovered_positives: bool,
    /// Seed of every sampling step, so a run is reproducible.
    pub seed: u64,
    /// L2 penalty of the batch logistic regression.
    pub l2: f64,
    /// Most optimiser iterations of the batch model.
    pub max_iterations: u64,
    /// Hyper-parameters of the online (FTRL) ranker.
    pub online: OnlineParams,
    /// Hyper-parameters of the product embeddings.
    pub embeddings: EmbeddingParams,
    /// Skip the embeddings (they cost items² memory).
    pub skip_embeddings: bool,
    /// User segmentation parameters.
    pub segments: SegmentParams,
    /// Skip the segmentation.
    pub skip_segments: bool,
    /// Length of each cold-start list.
    pub cold_start_n: usize,
    /// Half-life of the cold-start popularity, seconds (default 90 days; with
    /// `cold_start_first_events` = 10 chosen by leave-one-dataset-out, EVAL.md).
    pub cold_start_half_life_secs: f64,
    /// Demographic segments with fewer users get no cold-start list of their own.
    pub cold_start_min_users: usize,
    /// Cold-start lists count only each user's first this many product events (0 = all):
    /// what new visitors engage with (default 10).
    pub cold_start_first_events: usize,
}

impl Default for TrainParams {
    fn default() -> Self {
        TrainParams {
            features: FeatureConfig::default(),
            candidates: CandidateParams::default(),
            objective: Objective::Pointwise,
            list_depth: 100,
            negatives_per_positive: 10,
            max_positives: 10_000,
            include_uncovered_positives: false,
            seed: 42,
            l2: 1.0,
            max_iterations: 30,
            online: OnlineParams::default(),
            embeddings: EmbeddingParams::default(),
            skip_embeddings: false,
            segments: SegmentParams::default(),
            skip_segments: false,
            cold_start_n: 100,
            cold_start_half_life_secs: 90.0 * 24.0 * 3600.0,
            cold_start_min_users: 20,
            cold_start_first_events: 10,
        }
    }
}

impl TrainParams {
    /// Checks every section; `Err(ModelError::InvalidParams)` names the bad setting.
    pub fn validate(&self) -> Result<()> {
        self.features
            .validate()
            .map_err(ModelError::InvalidParams)?;
        self.candidates
            .validate()
            .map_err(ModelError::InvalidParams)?;
        if self.negatives_per_positive == 0 || self.negatives_per_positive > 1000 {
            return Err(ModelError::InvalidParams(
                "negatives_per_positive must be in 1..=1000".into(),
            ));
        }
        if self.list_depth < 2 || self.list_depth > 1000 {
            return Err(ModelError::InvalidParams(
                "list_depth must be in 2..=1000".into(),
            ));
        }
        if self.max_positives == 0 {
            return Err(ModelError::InvalidParams(
                "max_positives must be at least 1".into(),
            ));
        }
        if !(self.cold_start_half_life_secs.is_finite() && self.cold_start_half_life_secs > 0.0) {
            return Err(ModelError::InvalidParams(
                "cold_start_half_life_secs must be positive".into(),
            ));
        }
        self.embeddings.validate()?;
        self.segments.validate()?;
        self.affinity_params().check_ref()?;
        self.online.check_ref()?;
        Ok(())
    }

    /// The batch model's hyper-parameters from these settings.
    pub fn affinity_params(&self) -> AffinityParams {
        AffinityParams::new()
            .l2(self.l2)
            .max_iterations(self.max_iterations)
            .half_lives(
                self.features.user_half_life_ms(),
                self.features.trending_half_life_ms(),
            )
    }

    /// The feature schema (identity standardisation) for these half-lives.
    pub fn schema(&self) -> FeatureSchema {
        FeatureSchema::new(
            self.features.user_half_life_ms(),
            self.features.trending_half_life_ms(),
        )
    }
}
