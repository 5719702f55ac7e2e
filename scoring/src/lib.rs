//! recstream-scoring: from features to a ranked, filtered, diverse list.
//!
//! ```text
//!  FeatureStore (user, products, top lists) ─┐
//!  ColdStartCache (segment → top-N) ─────────┼─► Recommender::recommend ─► Recommendations
//!  request (user, n, context) ───────────────┘        │ served features
//!  feedback/ (the processors' join of served lists and clicks) ─► feedback::FeedbackFeed
//!        ─► feedback::OnlineLearner ─► FTRL ranks the next
//!  Availability (the shop's catalog) ─► only sellable products are served
//! ```

pub mod availability;
pub mod cold_start;
pub mod config;
pub mod error;
pub mod feedback;
pub mod metrics;
pub mod rank;
pub mod recommend;
#[cfg(test)]
mod test_support;

pub use availability::{Availability, ProductState};
pub use cold_start::{ColdStartCache, ColdStartList, InProcessCache};
pub use config::ScoringConfig;
pub use error::ScoringError;
pub use feedback::{FeedbackFeed, Learned, OnlineLearner};
pub use rank::{HeuristicRanker, HotRanker, ModelRanker, Ranker};
pub use recommend::{Item, Reason, Recommendations, Recommender, Request, Strategy};
