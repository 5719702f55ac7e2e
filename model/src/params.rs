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

/// Everything a training run can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainParams {
    /// Must equal the feature pipeline's settings (half-lives, list bounds).
    pub features: FeatureConfig,
    pub candidates: CandidateParams,
    /// Ignored candidates sampled per positive.
    pub negatives_per_positive: usize,
    /// Positives used at most (sampled uniformly over time); bounds memory and time.
    pub max_positives: usize,
    /// Also learn from positives the candidate sources did not retrieve.
    pub include_uncovered_positives: bool,
    pub seed: u64,
    pub l2: f64,
    pub max_iterations: u64,
    pub online: OnlineParams,
    pub embeddings: EmbeddingParams,
    /// Skip the embeddings (they cost items² memory).
    pub skip_embeddings: bool,
    pub segments: SegmentParams,
    pub skip_segments: bool,
    pub cold_start_n: usize,
    /// Half-life of the cold-start popularity, seconds.
    pub cold_start_half_life_secs: f64,
    /// Demographic segments with fewer users get no cold-start list of their own.
    pub cold_start_min_users: usize,
}

impl Default for TrainParams {
    fn default() -> Self {
        TrainParams {
            features: FeatureConfig::default(),
            candidates: CandidateParams::default(),
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
            cold_start_half_life_secs: 7.0 * 24.0 * 3600.0,
            cold_start_min_users: 20,
        }
    }
}

impl TrainParams {
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

    pub fn affinity_params(&self) -> AffinityParams {
        AffinityParams::new()
            .l2(self.l2)
            .max_iterations(self.max_iterations)
            .half_lives(
                self.features.user_half_life_ms(),
                self.features.trending_half_life_ms(),
            )
    }

    pub fn schema(&self) -> FeatureSchema {
        FeatureSchema::new(
            self.features.user_half_life_ms(),
            self.features.trending_half_life_ms(),
        )
    }
}
