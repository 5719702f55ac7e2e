//! recstream-model: batch training with linfa, artifacts, and offline evaluation.
//!
//! ```text
//!  Parquet archive / dataset ─► events (by time) ─► Replay (the features crate's Aggregator)
//!     │                                               │ candidates + pair features per positive
//!     │                                               ▼
//!     │                        AffinityModel (logistic regression) + OnlineRanker (FTRL, FitWith)
//!     ├─► ProductEmbeddings (co-occurrence ─► PCA ─► nearest neighbours) ─► similar products
//!     ├─► ColdStartLists (top-N overall and per demographic segment)
//!     └─► Segments (k-means on user behaviour) ─► profiles, CSV / Parquet export
//!  ─► ModelArtifact ─► models/<version>/… + models/CURRENT (ObjectStore) ─► ModelHandle (hot reload)
//!  eval: temporal split ─► HR / NDCG / MRR / coverage @10, @20 vs popularity and item-kNN
//! ```
//!
//! Serving scores candidates with [`LinearScorer::score_into`]: one dot product per
//! candidate over features built on the stack, from the same views training used.

pub mod affinity;
pub mod artifact;
pub mod candidates;
pub mod cold_start;
pub mod embed;
pub mod error;
pub mod eval;
pub mod features;
pub mod listwise;
pub mod metrics;
pub mod params;
pub mod progress;
pub mod replay;
pub mod segments;
pub mod source;
pub mod train;

pub use affinity::{
    AffinityModel, AffinityParams, AffinityValidParams, LinearScorer, OnlineParams, OnlineRanker,
    OnlineValidParams,
};
pub use artifact::{
    CURRENT_KEY, ModelArtifact, ModelHandle, TrainingMeta, current_version, list_versions,
    load_current,
};
pub use candidates::{CandidateParams, Candidates};
pub use cold_start::{ColdStartCounts, ColdStartLists};
pub use embed::{CoOccurrence, EmbeddingParams, ProductEmbeddings};
pub use error::ModelError;
pub use eval::{EvalParams, EvalReport, MetricRow, evaluate, temporal_split};
pub use features::{
    CandidateSignals, FEATURE_NAMES, FeatureSchema, NUM_FEATURES, PairFeatures, UserContext,
};
pub use metrics::SetMetrics;
pub use params::Objective;
pub use progress::{NoProgress, Progress};
pub use replay::Replay;
pub use segments::{SegmentMember, SegmentParams, SegmentProfile, Segments, read_members_parquet};
pub use source::{ArchiveSource, EventSource};
pub use train::{TrainParams, TrainingSet, build_training_set, fit_rankers, train, train_from};
