//! The baselines the served list is measured against. They live here, never in the served
//! path, and answer from the event log (and, for co-visitation, the replayed features):
//!
//! ```text
//!  popularity  engagement-weighted counts of the training log
//!  history     the user's own items: Σ event-type weight × 2^(−age / half-life)
//!  covisit     item-kNN on the co-visitation graph of the user's last items (Σ w / (1 + i)):
//!              plain co-occurrence counts within the pipeline's session window, whatever
//!              order-awareness the served path's features use
//!  category    best sellers of the user's top categories (by the user's decayed weight)
//!  ease        EASE item-item regression on the top items (see [`crate::ease`])
//! ```

use compact_str::CompactString;
use recstream_features::{Aggregator, FeatureConfig};
use recstream_ingest::Event;
use recstream_model::replay::engagement_weight;
use rustc_hash::FxHashMap;

/// A time-decayed sum, as of its last update.
#[derive(Debug, Clone, Copy, Default)]
struct Decay {
    value: f64,
    ts: i64,
}

impl Decay {
    fn add(&mut self, w: f64, ts: i64, half_life_ms: f64) {
        self.value = self.at(ts, half_life_ms) + w;
        self.ts = self.ts.max(ts);
    }
    fn at(&self, now: i64, half_life_ms: f64) -> f64 {
        let age = (now - self.ts).max(0) as f64;
        self.value * (-age / half_life_ms).exp2()
    }
}

#[derive(Default)]
struct UserLog {
    items: FxHashMap<CompactString, Decay>,
    categories: FxHashMap<CompactString, Decay>,
    /// Distinct items, most recent last.
    order: Vec<CompactString>,
}

/// Per-user histories and static training-period lists.
pub struct Baselines {
    half_life_ms: f64,
    users: FxHashMap<CompactString, UserLog>,
    popular: Vec<String>,
    category_top: FxHashMap<CompactString, Vec<String>>,
    product_category: FxHashMap<CompactString, CompactString>,
    /// The pipeline's aggregation with plain (symmetric, unweighted) co-visitation.
    covisitation: Aggregator,
}

/// Weight of an event for the history and popularity baselines (the aggregation's own
/// weights: view/click 1, cart 3, purchase 5; other types count as a view).
fn weight(e: &Event) -> f64 {
    let w = engagement_weight(&e.event_type);
    if w > 0.0 { w } else { 1.0 }
}

impl Baselines {
    /// The static lists from the training log; histories and co-visitation start from it
    /// too. Co-visitation counts every pair within `features`' session window once, in
    /// either order (its order-awareness settings are ignored).
    pub fn new(
        train: &[Event],
        half_life_hours: f64,
        list_len: usize,
        features: &FeatureConfig,
    ) -> Baselines {
        let mut counts: FxHashMap<&str, f64> = FxHashMap::default();
        let mut product_category: FxHashMap<CompactString, CompactString> = FxHashMap::default();
        for e in train {
            if let Some(p) = e.product_id.as_deref() {
                *counts.entry(p).or_default() += weight(e);
                if let Some(c) = &e.category {
                    product_category.insert(p.into(), c.clone());
                }
            }
        }
        let mut ranked: Vec<(&str, f64)> = counts.into_iter().collect();
        ranked.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let mut category_top: FxHashMap<CompactString, Vec<String>> = FxHashMap::default();
        for (p, _) in &ranked {
            if let Some(c) = product_category.get(*p) {
                let l = category_top.entry(c.clone()).or_default();
                if l.len() < list_len {
                    l.push(p.to_string());
                }
            }
        }
        let popular = ranked
            .iter()
            .take(list_len)
            .map(|(p, _)| p.to_string())
            .collect();
        let mut b = Baselines {
            half_life_ms: half_life_hours * 3_600_000.0,
            users: FxHashMap::default(),
            popular,
            category_top,
            product_category,
            covisitation: Aggregator::new(FeatureConfig {
                covisit_distance_decay: 0.0,
                covisit_backward: 1.0,
                ..features.clone()
            }),
        };
        for e in train {
            b.apply(e);
        }
        b
    }

    /// Folds one event into the user's history and the co-visitation counts.
    pub fn apply(&mut self, e: &Event) {
        self.covisitation.apply(e);
        let Some(p) = e.product_id.as_ref() else {
            return;
        };
        let h = self.half_life_ms;
        let u = self.users.entry(e.user_id.clone()).or_default();
        let w = weight(e);
        let d = u.items.entry(p.clone()).or_default();
        let new = d.value == 0.0 && d.ts == 0;
        d.add(w, e.ts.0, h);
        if new {
            u.order.push(p.clone());
        } else if let Some(pos) = u.order.iter().rposition(|x| x == p) {
            let x = u.order.remove(pos);
            u.order.push(x);
        }
        let c = e
            .category
            .clone()
            .or_else(|| self.product_category.get(p).cloned());
        if let Some(c) = c {
            u.categories.entry(c).or_default().add(w, e.ts.0, h);
        }
    }

    /// Whether the user touched `product` before.
    pub fn knows(&self, user: &str, product: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.items.contains_key(product))
    }

    /// Whether the user has any event before the cut (else the served path answers cold start).
    pub fn has_history(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// The user's distinct items, most recent first.
    pub fn recent(&self, user: &str) -> Vec<&str> {
        self.users
            .get(user)
            .map(|u| u.order.iter().rev().map(|p| p.as_str()).collect())
            .unwrap_or_default()
    }

    /// Products by interaction count over the training part, most popular first.
    pub fn popularity(&self) -> Vec<&str> {
        self.popular.iter().map(String::as_str).collect()
    }

    /// The user's items by recency × frequency × event-type weight, at time `now`.
    pub fn history(&self, user: &str, now: i64) -> Vec<&str> {
        let Some(u) = self.users.get(user) else {
            return Vec::new();
        };
        let mut v: Vec<(&str, f64)> = u
            .items
            .iter()
            .map(|(p, d)| (p.as_str(), d.at(now, self.half_life_ms)))
            .collect();
        v.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        v.into_iter().map(|(p, _)| p).collect()
    }

    /// Best sellers of the user's `top` categories, interleaved proportionally: the
    /// strongest category's first, then the next category's first, and so on.
    pub fn category(&self, user: &str, now: i64, top: usize) -> Vec<&str> {
        let Some(u) = self.users.get(user) else {
            return Vec::new();
        };
        let mut cats: Vec<(&str, f64)> = u
            .categories
            .iter()
            .map(|(c, d)| (c.as_str(), d.at(now, self.half_life_ms)))
            .collect();
        cats.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let lists: Vec<&Vec<String>> = cats
            .iter()
            .take(top)
            .filter_map(|(c, _)| self.category_top.get(*c))
            .collect();
        let longest = lists.iter().map(|l| l.len()).max().unwrap_or(0);
        let mut out = Vec::new();
        for i in 0..longest {
            for l in &lists {
                if let Some(p) = l.get(i) {
                    out.push(p.as_str());
                }
            }
        }
        out
    }
}

impl Baselines {
    /// Item-kNN on the plain co-visitation lists of `seeds` (the user's last items, most
    /// recent first).
    pub fn covisit(&self, seeds: &[&str]) -> Vec<String> {
        covisit(seeds, |s| self.covisitation.product(s).map(|p| p.covisit))
    }
}

/// Item-kNN on the co-visitation lists of the user's last `seeds` items.
pub fn covisit(
    seeds: &[&str],
    mut neighbours: impl FnMut(&str) -> Option<Vec<(String, f32)>>,
) -> Vec<String> {
    let mut sc: FxHashMap<String, f64> = FxHashMap::default();
    for (i, s) in seeds.iter().enumerate() {
        if let Some(nb) = neighbours(s) {
            for (p, w) in nb {
                *sc.entry(p).or_default() += w as f64 / (1.0 + i as f64);
            }
        }
    }
    let mut v: Vec<(String, f64)> = sc.into_iter().collect();
    v.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.into_iter().map(|(p, _)| p).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use recstream_ingest::{EventType, Timestamp};

    fn ev(user: &str, ty: EventType, p: &str, c: &str, ts: i64) -> Event {
        Event::new("e", Timestamp(ts), user, ty).with_product(p, Some(c))
    }

    #[test]
    fn history_ranks_by_recency_frequency_and_type() {
        let h = 3_600_000;
        let train = vec![
            ev("u", EventType::View, "old", "c1", 0),
            ev("u", EventType::View, "old", "c1", 1),
            ev("u", EventType::View, "viewed", "c1", 10 * h),
            ev("u", EventType::AddToCart, "carted", "c2", 10 * h),
            ev("v", EventType::Purchase, "best", "c2", 0),
            ev("v", EventType::Purchase, "best", "c2", 1),
        ];
        let b = Baselines::new(&train, 1.0, 10, &FeatureConfig::default());
        // Two views 10 half-lives ago lose to one view now; a cart beats a view.
        assert_eq!(b.history("u", 10 * h), vec!["carted", "viewed", "old"]);
        assert_eq!(b.recent("u"), vec!["carted", "viewed", "old"]);
        assert!(b.knows("u", "old") && !b.knows("u", "best"));
        assert_eq!(b.popularity()[0], "best");
        // u's strongest category now is c2 (the cart), whose best seller is `best`.
        assert_eq!(b.category("u", 10 * h, 1), vec!["best", "carted"]);
        assert!(b.history("nobody", 0).is_empty());
    }

    #[test]
    fn the_covisit_baseline_counts_plain_co_occurrence_whatever_the_served_order() {
        // The served features see only what followed (sequential rules, 1 / distance);
        // the baseline still counts every pair in the window once, in either order.
        let sequential = FeatureConfig {
            covisit_distance_decay: 1.0,
            covisit_backward: 0.0,
            ..FeatureConfig::default()
        };
        let train: Vec<Event> = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, p)| ev("u", EventType::View, p, "x", i as i64).with_session("s"))
            .collect();
        let mut b = Baselines::new(&train, 1.0, 10, &sequential);
        // c follows a and b: a plain count of 1 each, both directions.
        assert_eq!(b.covisit(&["c"]), vec!["a", "b"]);
        assert_eq!(b.covisit(&["a"]), vec!["b", "c"]);
        // Live: the next event folds in.
        b.apply(&ev("u", EventType::View, "d", "x", 3).with_session("s"));
        assert_eq!(b.covisit(&["d"]), vec!["a", "b", "c"]);
    }

    #[test]
    fn covisit_sums_neighbours_weighted_by_seed_recency() {
        let nb = |s: &str| match s {
            "a" => Some(vec![("x".to_string(), 1.0), ("y".to_string(), 3.0)]),
            "b" => Some(vec![("x".to_string(), 6.0)]),
            _ => None,
        };
        // x: 1 + 6/2 = 4, y: 3.
        assert_eq!(covisit(&["a", "b", "zz"], nb), vec!["x", "y"]);
    }
}
