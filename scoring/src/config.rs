//! Scoring settings: candidate budgets, blend weights, filters.

use serde::{Deserialize, Serialize};

/// The `[scoring]` section: list lengths, candidate budgets, blend weights, filters and
/// online learning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScoringConfig {
    /// Default and maximum list length.
    pub default_n: usize,
    /// Largest `n` a request may ask for (at most 1000; default 100).
    pub max_n: usize,
    /// Recent items that seed co-visitation candidates (default 10; these budgets were
    /// chosen by leave-one-dataset-out, EVAL.md).
    pub seed_items: usize,
    /// Co-visited neighbours taken per seed (default 50, every neighbour the features keep).
    pub neighbours_per_seed: usize,
    /// Top categories of the user that contribute their best sellers.
    pub top_categories: usize,
    /// Best sellers taken from each of those categories (default 30).
    pub per_category: usize,
    /// Products taken from the trending list (default 30).
    pub trending: usize,
    /// The most recent item's strongest co-visited neighbours whose own lists are
    /// followed: a second hop of co-visitation (default 25, chosen by leave-one-dataset-out;
    /// 0 = off).
    pub two_hop: usize,
    /// Items taken from each of those neighbours' lists (default 50, every item the
    /// features keep; leave-one-dataset-out).
    pub two_hop_take: usize,
    /// Blend weights of the candidate sources.
    pub w_recent: f64,
    /// Weight of co-visitation with the user's recent items (default 1.0).
    pub w_covisit: f64,
    /// Weight of the user's top categories (default 0.4).
    pub w_category: f64,
    /// Weight of trending (default 0.15).
    pub w_trending: f64,
    /// Re-show items the user recently looked at (strong e-commerce signal).
    pub include_recent: bool,
    /// Leave out products the user already bought (default true).
    pub exclude_purchased: bool,
    /// Leave out products in the user's cart (default true).
    pub exclude_in_cart: bool,
    /// At most this many items of one category in a list (diversity). Default 100, no cap
    /// on a list of at most `max_n` = 100: chosen by leave-one-dataset-out (EVAL.md), where
    /// a cap of 4 cost 14–44 % of NDCG@20; lower it where a shop wants variety at that price.
    pub max_per_category: usize,
    /// The best candidates by the blend that the ranker (model) re-scores.
    pub rerank_depth: usize,
    /// Keep learning (FTRL) from feedback on served lists between retrainings, and rank
    /// with that live model.
    pub online_learning: bool,
    /// How often the online learner reads the feedback the shard processors joined to
    /// served lists, ms (default 1000). Served lists wait for feedback in the processor
    /// (`processor.feedback_max_lists`, `feedback_ttl_ms`).
    pub feedback_poll_ms: u64,
    /// Serve only what the shop's catalog can sell, when a catalog is wired in (default
    /// true). `false` is for measuring the filter's cost (`benches/http_load.sh`): every
    /// candidate is then served whether it can be bought or not.
    pub catalog_filter: bool,
}

impl Default for ScoringConfig {
    fn default() -> Self {
        ScoringConfig {
            default_n: 10,
            max_n: 100,
            seed_items: 10,
            neighbours_per_seed: 50,
            top_categories: 3,
            per_category: 30,
            trending: 30,
            two_hop: 25,
            two_hop_take: 50,
            w_recent: 0.6,
            w_covisit: 1.0,
            w_category: 0.4,
            w_trending: 0.15,
            include_recent: true,
            exclude_purchased: true,
            exclude_in_cart: true,
            max_per_category: 100,
            rerank_depth: 100,
            online_learning: true,
            feedback_poll_ms: 1000,
            catalog_filter: true,
        }
    }
}

impl ScoringConfig {
    /// The candidate budgets and filters of this configuration, as training must use them
    /// (the ranker is trained on the candidate sets the endpoint builds).
    pub fn candidate_params(&self) -> recstream_model::CandidateParams {
        recstream_model::CandidateParams {
            seed_items: self.seed_items,
            neighbours_per_seed: self.neighbours_per_seed,
            top_categories: self.top_categories,
            per_category: self.per_category,
            trending: self.trending,
            two_hop: self.two_hop,
            two_hop_take: self.two_hop_take,
            include_recent: self.include_recent,
            exclude_purchased: self.exclude_purchased,
            exclude_in_cart: self.exclude_in_cart,
        }
    }

    /// Checks list lengths, weights (non-negative), rerank depth, diversity and feedback
    /// bounds; `Err` names the bad setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.default_n == 0 || self.default_n > self.max_n || self.max_n > 1000 {
            return Err("scoring: need 0 < default_n <= max_n <= 1000".into());
        }
        for (name, w) in [
            ("w_recent", self.w_recent),
            ("w_covisit", self.w_covisit),
            ("w_category", self.w_category),
            ("w_trending", self.w_trending),
        ] {
            if !(w.is_finite() && w >= 0.0) {
                return Err(format!("scoring.{name} must be a non-negative number"));
            }
        }
        if !(10..=600_000).contains(&self.feedback_poll_ms) {
            return Err("scoring.feedback_poll_ms must be in 10..=600000".into());
        }
        if self.rerank_depth == 0 || self.rerank_depth > 1000 {
            return Err("scoring.rerank_depth must be in 1..=1000".into());
        }
        if self.two_hop > 100 {
            return Err("scoring.two_hop must be at most 100 (neighbours followed)".into());
        }
        if self.two_hop_take > 1000 {
            return Err("scoring.two_hop_take must be at most 1000".into());
        }
        if self.max_per_category == 0 {
            return Err("scoring.max_per_category must be at least 1".into());
        }
        Ok(())
    }
}
