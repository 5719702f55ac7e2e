//! Temporal replay of an event log through the feature pipeline's own [`Aggregator`], so
//! that training and offline evaluation see exactly the views serving sees.
//!
//! ```text
//!  events (by time) ─► Replay::apply ─┬─► Aggregator (users, products, co-visitation)
//!                                     ├─► TopLists (trending, category best sellers; exact,
//!                                     │             refreshed every few hundred events)
//!                                     └─► product view cache (invalidated per event)
//!  Replay::{user, product, trending, category_top} ─► candidates + features
//! ```

use std::collections::VecDeque;
use std::sync::Arc;

use compact_str::CompactString;
use recstream_features::{Aggregator, Decayed, FeatureConfig, ProductFeatures, UserFeatures};
use recstream_ingest::{Event, EventType};
use rustc_hash::{FxHashMap, FxHashSet};

/// Engagement weight of an event type, as the aggregation uses it.
#[inline]
pub fn engagement_weight(t: &EventType) -> f64 {
    match t {
        EventType::View | EventType::Click => 1.0,
        EventType::AddToCart => 3.0,
        EventType::Purchase => 5.0,
        _ => 0.0,
    }
}

/// Trending and per-category best-seller lists, kept exact incrementally: decay is uniform,
/// so the new top is the top of (old top ∪ products changed since).
struct TopLists {
    half_life_ms: f64,
    trending_len: usize,
    category_len: usize,
    ids: FxHashMap<CompactString, u32>,
    names: Vec<CompactString>,
    pop: Vec<Decayed>,
    last_ts: Vec<i64>,
    category: Vec<Option<u32>>,
    cat_ids: FxHashMap<CompactString, u32>,
    cat_names: Vec<CompactString>,
    dirty: FxHashSet<u32>,
    trending_ids: Vec<u32>,
    category_ids: FxHashMap<u32, Vec<u32>>,
    /// Named lists, built on first use after each refresh.
    trending: Vec<(CompactString, f64)>,
    trending_stale: bool,
    category_top: FxHashMap<u32, Vec<(CompactString, f64)>>,
    watermark: i64,
}

impl TopLists {
    fn new(half_life_ms: f64, trending_len: usize, category_len: usize) -> TopLists {
        TopLists {
            half_life_ms,
            trending_len,
            category_len,
            ids: FxHashMap::default(),
            names: Vec::new(),
            pop: Vec::new(),
            last_ts: Vec::new(),
            category: Vec::new(),
            cat_ids: FxHashMap::default(),
            cat_names: Vec::new(),
            dirty: FxHashSet::default(),
            trending_ids: Vec::new(),
            category_ids: FxHashMap::default(),
            trending: Vec::new(),
            trending_stale: false,
            category_top: FxHashMap::default(),
            watermark: 0,
        }
    }

    fn apply(&mut self, e: &Event) {
        let Some(pid) = e.product_id.as_ref() else {
            return;
        };
        let t = e.ts.0;
        self.watermark = self.watermark.max(t);
        let id = match self.ids.get(pid) {
            Some(id) => *id,
            None => {
                let id = self.names.len() as u32;
                self.ids.insert(pid.clone(), id);
                self.names.push(pid.clone());
                self.pop.push(Decayed::default());
                self.last_ts.push(i64::MIN);
                self.category.push(None);
                id
            }
        };
        let i = id as usize;
        let w = engagement_weight(&e.event_type);
        if w > 0.0 {
            self.pop[i].add(w, t, self.half_life_ms);
        }
        if t >= self.last_ts[i] {
            self.last_ts[i] = t;
            if let Some(c) = &e.category {
                let cid = match self.cat_ids.get(c) {
                    Some(c) => *c,
                    None => {
                        let cid = self.cat_names.len() as u32;
                        self.cat_ids.insert(c.clone(), cid);
                        self.cat_names.push(c.clone());
                        cid
                    }
                };
                self.category[i] = Some(cid);
            }
        }
        self.dirty.insert(id);
    }

    fn top(&self, mut cands: Vec<u32>, n: usize) -> Vec<u32> {
        cands.sort_unstable();
        cands.dedup();
        let at = self.watermark;
        let h = self.half_life_ms;
        let mut scored: Vec<(u32, f64)> = cands
            .into_iter()
            .map(|p| (p, self.pop[p as usize].value_at(at, h)))
            .filter(|(_, v)| *v > 0.0)
            .collect();
        scored.sort_unstable_by(|a, b| {
            b.1.total_cmp(&a.1)
                .then_with(|| self.names[a.0 as usize].cmp(&self.names[b.0 as usize]))
        });
        scored.truncate(n);
        scored.into_iter().map(|(p, _)| p).collect()
    }

    fn named(&self, ids: &[u32]) -> Vec<(CompactString, f64)> {
        let at = self.watermark;
        ids.iter()
            .map(|p| {
                (
                    self.names[*p as usize].clone(),
                    self.pop[*p as usize].value_at(at, self.half_life_ms),
                )
            })
            .collect()
    }

    fn refresh(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        let dirty: Vec<u32> = self.dirty.drain().collect();
        let mut trending = self.trending_ids.clone();
        trending.extend(dirty.iter().copied());
        self.trending_ids = self.top(trending, self.trending_len);
        self.trending_stale = true;
        self.category_top.clear();

        let mut changed: FxHashMap<u32, Vec<u32>> = FxHashMap::default();
        for p in &dirty {
            if let Some(c) = self.category[*p as usize] {
                changed.entry(c).or_default().push(*p);
            }
        }
        for (c, mut cands) in changed {
            if let Some(old) = self.category_ids.get(&c) {
                cands.extend(old.iter().copied());
            }
            cands.retain(|p| self.category[*p as usize] == Some(c));
            let top = self.top(cands, self.category_len);
            self.category_ids.insert(c, top);
        }
    }

    fn trending(&mut self) -> &[(CompactString, f64)] {
        if self.trending_stale {
            self.trending = self.named(&self.trending_ids);
            self.trending_stale = false;
        }
        &self.trending
    }

    fn category_top(&mut self, category: &str) -> Option<&[(CompactString, f64)]> {
        let c = *self.cat_ids.get(category)?;
        if !self.category_top.contains_key(&c) {
            let named = self.named(self.category_ids.get(&c)?);
            self.category_top.insert(c, named);
        }
        self.category_top.get(&c).map(Vec::as_slice)
    }
}

/// Replays events through the aggregation and answers the questions candidate generation
/// and feature construction ask, as the feature store would at that point in time.
pub struct Replay {
    agg: Aggregator,
    tops: TopLists,
    cache: FxHashMap<CompactString, Arc<ProductFeatures>>,
    /// Per user, the last distinct products (most recent first): a superset of the session
    /// partners an event can touch, so invalidating them keeps the cache exact.
    last_items: FxHashMap<CompactString, VecDeque<CompactString>>,
    window: usize,
    since_refresh: usize,
    refresh_every: usize,
    last_refresh_ts: i64,
    applied: u64,
}

const REFRESH_EVENT_TIME_MS: i64 = 60_000;

impl Replay {
    /// A replay with the aggregation settings `cfg` (must equal the feature pipeline's).
    pub fn new(cfg: FeatureConfig) -> Replay {
        let window = cfg.covisit_window.max(1);
        let tops = TopLists::new(cfg.trending_half_life_ms(), 100, 30);
        Replay {
            agg: Aggregator::new(cfg),
            tops,
            cache: FxHashMap::default(),
            last_items: FxHashMap::default(),
            window,
            since_refresh: 0,
            refresh_every: 256,
            last_refresh_ts: i64::MIN / 2,
            applied: 0,
        }
    }

    /// The aggregation settings.
    pub fn config(&self) -> &FeatureConfig {
        self.agg.config()
    }

    /// Events applied so far.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Folds one event in.
    pub fn apply(&mut self, e: &Event) {
        if let Some(pid) = &e.product_id {
            self.cache.remove(pid);
            let last = self.last_items.entry(e.user_id.clone()).or_default();
            for p in last.iter() {
                self.cache.remove(p);
            }
            if let Some(pos) = last.iter().position(|p| p == pid) {
                last.remove(pos);
            }
            last.push_front(pid.clone());
            last.truncate(self.window);
        }
        self.agg.apply(e);
        self.tops.apply(e);
        self.applied += 1;
        self.since_refresh += 1;
        // Like the pipeline's periodic flush: every few hundred events, and at least once a
        // minute of event time.
        if self.since_refresh >= self.refresh_every
            || e.ts.0 - self.last_refresh_ts >= REFRESH_EVENT_TIME_MS
        {
            self.last_refresh_ts = e.ts.0;
            self.refresh();
        }
    }

    /// Brings the top lists up to date (done automatically every few hundred events).
    pub fn refresh(&mut self) {
        self.tops.refresh();
        self.since_refresh = 0;
    }

    /// The product the user touched last, if any.
    pub fn last_product(&self, user_id: &str) -> Option<&str> {
        self.last_items
            .get(user_id)
            .and_then(|l| l.front())
            .map(|p| p.as_str())
    }

    /// Whether the user has touched any product yet.
    pub fn has_history(&self, user_id: &str) -> bool {
        self.last_items.contains_key(user_id)
    }

    /// The user's view as of the events replayed so far.
    pub fn user(&self, user_id: &str) -> Option<UserFeatures> {
        self.agg.user(user_id)
    }

    /// A product's view (cached until an event touches it).
    pub fn product(&mut self, product_id: &str) -> Option<Arc<ProductFeatures>> {
        if let Some(p) = self.cache.get(product_id) {
            return Some(p.clone());
        }
        let p = Arc::new(self.agg.product(product_id)?);
        self.cache.insert(product_id.into(), p.clone());
        Some(p)
    }

    /// The product's view, or an empty one for a product never seen.
    pub fn product_or_empty(&mut self, product_id: &str) -> Arc<ProductFeatures> {
        self.product(product_id).unwrap_or_else(|| {
            Arc::new(ProductFeatures {
                product_id: product_id.to_string(),
                ..Default::default()
            })
        })
    }

    /// The trending list as of the events replayed so far, best first.
    pub fn trending(&mut self) -> &[(CompactString, f64)] {
        self.tops.trending()
    }

    /// The category's top list as of the events replayed so far; `None` for a category
    /// not seen.
    pub fn category_top(&mut self, category: &str) -> Option<&[(CompactString, f64)]> {
        self.tops.category_top(category)
    }

    /// Every user seen so far, sorted.
    pub fn user_ids(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.last_items.keys().map(|u| u.as_str()).collect();
        v.sort_unstable();
        v
    }

    /// Latest event time seen.
    pub fn watermark(&self) -> i64 {
        self.agg.watermark()
    }

    /// The candidate set of a user now (see [`crate::candidates::generate`]).
    pub fn candidates(
        &mut self,
        user: &UserFeatures,
        params: &crate::candidates::CandidateParams,
        exclude: &[&str],
    ) -> crate::candidates::Candidates {
        // The views `generate` reads: the seeds', then the most recent item's strongest
        // neighbours' (the second hop).
        let mut views: FxHashMap<&str, Option<Arc<ProductFeatures>>> = FxHashMap::default();
        for r in user.recent.iter().take(params.seed_items) {
            let v = self.product(&r.product_id);
            views.insert(r.product_id.as_str(), v);
        }
        let last = user
            .recent
            .first()
            .and_then(|r| views.get(r.product_id.as_str()).cloned().flatten());
        if let Some(last) = &last {
            for (j, _) in last.covisit.iter().take(params.two_hop) {
                if !views.contains_key(j.as_str()) {
                    let v = self.product(j);
                    views.insert(j.as_str(), v);
                }
            }
        }
        // Name the lists the user's categories need (cached until the next refresh).
        for c in user.categories.iter().take(params.top_categories) {
            let _ = self.tops.category_top(&c.id);
        }
        let _ = self.tops.trending();
        let tops = &self.tops;
        crate::candidates::generate(
            user,
            params,
            |id| views.get(id).cloned().flatten(),
            |c| {
                tops.cat_ids
                    .get(c)
                    .and_then(|id| tops.category_top.get(id))
                    .map(Vec::as_slice)
            },
            &tops.trending,
            exclude,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use recstream_ingest::Timestamp;

    fn ev(i: usize, user: &str, ty: EventType, product: &str, ts: i64) -> Event {
        Event::new(&format!("e{i}"), Timestamp(ts), user, ty)
            .with_product(product, Some("c"))
            .with_session(&format!("{user}-s"))
    }

    #[test]
    fn cached_views_equal_fresh_views() {
        let mut r = Replay::new(FeatureConfig::default());
        let mut fresh = Aggregator::new(FeatureConfig::default());
        let users = ["u1", "u2", "u3"];
        for i in 0..400usize {
            let e = ev(
                i,
                users[i % 3],
                if i % 7 == 0 {
                    EventType::AddToCart
                } else {
                    EventType::View
                },
                &format!("p{}", (i * 7919) % 23),
                1_000_000 + i as i64 * 1000,
            );
            r.apply(&e);
            fresh.apply(&e);
            for p in 0..23 {
                let id = format!("p{p}");
                assert_eq!(
                    r.product(&id).as_deref(),
                    fresh.product(&id).as_ref(),
                    "{id} at {i}"
                );
            }
        }
        r.refresh();
        assert!(!r.trending().is_empty());
        assert!(r.category_top("c").is_some());
        let last = format!("p{}", (399 * 7919) % 23);
        assert_eq!(r.last_product("u1"), Some(last.as_str()));
    }
}
