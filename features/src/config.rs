//! Aggregation settings: half-lives and the bounds that keep per-key state small.

use serde::{Deserialize, Serialize};

/// The `[features]` section: half-lives of the decayed values and the bounds of
/// per-user and per-product state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeatureConfig {
    /// Half-life of a user's item and category affinities, in seconds.
    pub user_half_life_secs: f64,
    /// Half-life of product popularity (trending), in seconds.
    pub trending_half_life_secs: f64,
    /// Distinct recent items kept per user.
    pub recent_items: usize,
    /// Item affinities kept per user.
    pub item_affinities: usize,
    /// Category affinities kept per user.
    pub categories: usize,
    /// Purchased products remembered per user (for the "already bought" filter).
    pub purchased: usize,
    /// How many earlier items of the same session pair with a new one (co-visitation).
    pub covisit_window: usize,
    /// Co-visited neighbours kept per product.
    pub covisit_neighbours: usize,
    /// Order-awareness of co-visitation, the distance part: a neighbour `d` items apart in
    /// the session (1 = adjacent) counts `d^-covisit_distance_decay`. 0 = every pair in the
    /// window counts 1 (plain co-occurrence counts, the default before 2026-12-04).
    /// The defaults (1 and 0.5) were chosen by leave-one-dataset-out (EVAL.md).
    pub covisit_distance_decay: f32,
    /// Order-awareness of co-visitation, the direction part: a product's list weighs a
    /// neighbour seen *before* it by this factor, one seen after it by 1 ("viewed next").
    /// 1 = symmetric counts; 0 = only what followed (sequential rules).
    pub covisit_backward: f32,
    /// A gap longer than this starts a new session when events carry no session id.
    pub session_gap_secs: i64,
    /// Length of the trending list and of each category's top list.
    pub top_list_len: usize,
    /// Users idle this long (event time, behind the shard's watermark) leave memory at
    /// the next checkpoint; their state stays in the state store and comes back on their
    /// next event. 0 = never by idleness.
    pub evict_idle_secs: u64,
    /// At most this many users per shard stay in memory after a checkpoint (the least
    /// recently active leave first). 0 = no bound.
    pub max_hot_users: usize,
}

fn defaults() -> FeatureConfig {
    FeatureConfig {
        user_half_life_secs: 3.0 * 24.0 * 3600.0,
        trending_half_life_secs: 3600.0,
        recent_items: 30,
        item_affinities: 50,
        categories: 10,
        purchased: 200,
        covisit_window: 5,
        covisit_neighbours: 50,
        covisit_distance_decay: 1.0,
        covisit_backward: 0.5,
        session_gap_secs: 30 * 60,
        top_list_len: 100,
        evict_idle_secs: 24 * 3600,
        max_hot_users: 1_000_000,
    }
}

impl Default for FeatureConfig {
    fn default() -> Self {
        defaults()
    }
}

impl FeatureConfig {
    /// Checks the settings before anything runs.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("user_half_life_secs", self.user_half_life_secs),
            ("trending_half_life_secs", self.trending_half_life_secs),
        ];
        for (name, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!(
                    "features.{name} must be a positive number of seconds"
                ));
            }
        }
        let bounded = [
            ("recent_items", self.recent_items, 1000),
            ("item_affinities", self.item_affinities, 1000),
            ("categories", self.categories, 200),
            ("purchased", self.purchased, 10_000),
            ("covisit_window", self.covisit_window, 50),
            ("covisit_neighbours", self.covisit_neighbours, 1000),
            ("top_list_len", self.top_list_len, 10_000),
        ];
        for (name, v, max) in bounded {
            if v == 0 || v > max {
                return Err(format!("features.{name} must be in 1..={max}, not {v}"));
            }
        }
        if !(0.0..=4.0).contains(&self.covisit_distance_decay) {
            return Err(format!(
                "features.covisit_distance_decay must be in 0..=4, not {}",
                self.covisit_distance_decay
            ));
        }
        if !(0.0..=1.0).contains(&self.covisit_backward) {
            return Err(format!(
                "features.covisit_backward must be in 0..=1, not {}",
                self.covisit_backward
            ));
        }
        if self.evict_idle_secs > 100 * 365 * 24 * 3600 {
            return Err("features.evict_idle_secs must be at most a century (0 = never)".into());
        }
        if self.session_gap_secs <= 0 {
            return Err("features.session_gap_secs must be positive".into());
        }
        Ok(())
    }

    /// `user_half_life_secs` in milliseconds (the unit of event times).
    pub fn user_half_life_ms(&self) -> f64 {
        self.user_half_life_secs * 1000.0
    }

    /// The idle time after which a user leaves memory, in ms (None: never).
    pub fn evict_idle_ms(&self) -> Option<i64> {
        (self.evict_idle_secs > 0).then(|| (self.evict_idle_secs as i64).saturating_mul(1000))
    }

    /// The bound on users in memory per shard (None: unbounded).
    pub fn max_hot_users(&self) -> Option<usize> {
        (self.max_hot_users > 0).then_some(self.max_hot_users)
    }

    /// `trending_half_life_secs` in milliseconds (the unit of event times).
    pub fn trending_half_life_ms(&self) -> f64 {
        self.trending_half_life_secs * 1000.0
    }
}
