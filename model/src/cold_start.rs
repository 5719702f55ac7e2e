//! Cold-start lists: the top products overall and per demographic segment, for users with
//! no history. Computed after each training from the training events.
//!
//! ```text
//!  events ─► engagement weight (view 1, cart 3, purchase 5), decayed to the last event
//!        ├─► overall top-N                        key "overall"
//!        └─► per Profile::segment_key() top-N     key "25-34|f|eu", …
//! ```
//!
//! [`ColdStartCounts`] accumulates a chunk of the log at a time (streamed training);
//! [`ColdStartLists::compute_with`] runs it over a slice.

use std::collections::BTreeMap;

use compact_str::CompactString;
use recstream_features::Decayed;
use recstream_ingest::Event;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

use crate::replay::engagement_weight;

/// The key of the list for users with no known segment (same as the scoring crate's).
pub const OVERALL: &str = "overall";

/// Popularity lists for users without history: one overall and one per demographic
/// segment, scored with a time-decayed popularity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ColdStartLists {
    /// Best first: `(product_id, score)`, scores normalised so the best is 1.
    pub overall: Vec<(String, f64)>,
    /// Per demographic segment key (`age|gender|region`), only segments with enough users.
    pub segments: BTreeMap<String, Vec<(String, f64)>>,
}

impl ColdStartLists {
    /// Every list with its cache key (`overall` first).
    pub fn lists(&self) -> impl Iterator<Item = (&str, &[(String, f64)])> {
        std::iter::once((OVERALL, self.overall.as_slice())).chain(
            self.segments
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_slice())),
        )
    }

    /// The list for a segment key, falling back to the overall list.
    pub fn for_segment(&self, key: Option<&str>) -> &[(String, f64)] {
        key.and_then(|k| self.segments.get(k))
            .map(Vec::as_slice)
            .unwrap_or(&self.overall)
    }

    /// Computes the lists. `half_life_ms` decays older engagement; segments with fewer than
    /// `min_users` distinct users get no list of their own.
    pub fn compute(events: &[Event], n: usize, half_life_ms: f64, min_users: usize) -> Self {
        Self::compute_with(events, n, half_life_ms, min_users, 0)
    }

    /// [`ColdStartLists::compute`], counting only each user's first `first_events` product
    /// events (0 = all): what visitors engage with while they are new, which is what the
    /// lists are for.
    pub fn compute_with(
        events: &[Event],
        n: usize,
        half_life_ms: f64,
        min_users: usize,
        first_events: usize,
    ) -> Self {
        let mut acc = ColdStartCounts::new(half_life_ms, first_events);
        acc.apply_all(events);
        acc.lists(n, min_users)
    }
}

/// What [`ColdStartLists::compute_with`] accumulates, fed a chunk of the log at a time:
/// decayed engagement per product (overall and per segment), each user's segment and
/// product-event count. Holds per-user and per-product state, not the events.
#[derive(Debug, Default)]
pub struct ColdStartCounts {
    half_life_ms: f64,
    first_events: usize,
    seen_events: FxHashMap<CompactString, usize>,
    overall: FxHashMap<CompactString, Decayed>,
    per: FxHashMap<String, FxHashMap<CompactString, Decayed>>,
    seg_users: FxHashMap<String, FxHashSet<CompactString>>,
    user_seg: FxHashMap<CompactString, String>,
    end: Option<i64>,
}

impl ColdStartCounts {
    /// Empty counts (the arguments of [`ColdStartLists::compute_with`]).
    pub fn new(half_life_ms: f64, first_events: usize) -> ColdStartCounts {
        ColdStartCounts {
            half_life_ms,
            first_events,
            ..ColdStartCounts::default()
        }
    }

    /// Counts the next events of the log (in time order).
    pub fn apply_all(&mut self, events: &[Event]) {
        for e in events {
            self.apply(e);
        }
    }

    /// Counts the next event of the log.
    pub fn apply(&mut self, e: &Event) {
        let half_life_ms = self.half_life_ms;
        self.end = Some(self.end.map_or(e.ts.0, |t| t.max(e.ts.0)));
        if let Some(k) = e.profile.as_ref().and_then(|p| p.segment_key()) {
            let k = k.to_string();
            match self.user_seg.get_mut(e.user_id.as_str()) {
                Some(s) => *s = k,
                None => {
                    self.user_seg.insert(e.user_id.clone(), k);
                }
            }
        }
        let (Some(p), w) = (e.product_id.as_ref(), engagement_weight(&e.event_type)) else {
            return;
        };
        if w <= 0.0 {
            return;
        }
        if self.first_events > 0 {
            let k = match self.seen_events.get_mut(e.user_id.as_str()) {
                Some(k) => k,
                None => self.seen_events.entry(e.user_id.clone()).or_default(),
            };
            *k += 1;
            if *k > self.first_events {
                return;
            }
        }
        entry(&mut self.overall, p).add(w, e.ts.0, half_life_ms);
        if let Some(seg) = self.user_seg.get(e.user_id.as_str()) {
            let m = match self.per.get_mut(seg) {
                Some(m) => m,
                None => self.per.entry(seg.clone()).or_default(),
            };
            entry(m, p).add(w, e.ts.0, half_life_ms);
            let users = match self.seg_users.get_mut(seg) {
                Some(u) => u,
                None => self.seg_users.entry(seg.clone()).or_default(),
            };
            if !users.contains(e.user_id.as_str()) {
                users.insert(e.user_id.clone());
            }
        }
    }

    /// The top-`n` lists; segments with fewer than `min_users` distinct users get none.
    pub fn lists(&self, n: usize, min_users: usize) -> ColdStartLists {
        let end = self.end.unwrap_or(i64::MIN);
        let half_life_ms = self.half_life_ms;
        let top = |m: &FxHashMap<CompactString, Decayed>| {
            let mut v: Vec<(String, f64)> = m
                .iter()
                .map(|(k, d)| (k.to_string(), d.value_at(end, half_life_ms)))
                .collect();
            recstream_features::view::sort_desc(&mut v);
            v.truncate(n);
            let max = v.first().map(|x| x.1).unwrap_or(1.0).max(f64::MIN_POSITIVE);
            for x in &mut v {
                x.1 = (x.1 / max * 1e6).round() / 1e6;
            }
            v
        };
        let segments = self
            .per
            .iter()
            .filter(|(k, _)| self.seg_users.get(*k).map_or(0, |u| u.len()) >= min_users)
            .map(|(k, m)| (k.clone(), top(m)))
            .collect();
        ColdStartLists {
            overall: top(&self.overall),
            segments,
        }
    }
}

/// The entry of `key` (product ids are short: the clone is inline, no allocation).
fn entry<'a>(m: &'a mut FxHashMap<CompactString, Decayed>, key: &CompactString) -> &'a mut Decayed {
    m.entry(key.clone()).or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use recstream_ingest::{EventType, Profile, Timestamp};

    #[test]
    fn overall_and_segment_lists() {
        let prof = Profile {
            age_band: Some("25-34".into()),
            gender: Some("F".into()),
            region: None,
        };
        let mut evs = Vec::new();
        for (i, (u, p, ty)) in [
            ("a", "x", EventType::View),
            ("a", "y", EventType::Purchase),
            ("b", "x", EventType::View),
            ("b", "x", EventType::View),
        ]
        .into_iter()
        .enumerate()
        {
            let mut e = Event::new(&format!("e{i}"), Timestamp(1_000 + i as i64), u, ty)
                .with_product(p, None);
            if u == "a" {
                e.profile = Some(prof.clone());
            }
            evs.push(e);
        }
        let c = ColdStartLists::compute(&evs, 10, 1e12, 1);
        assert_eq!(c.overall[0].0, "y");
        assert_eq!(c.overall[1], ("x".to_string(), 0.6));
        assert_eq!(c.segments["25-34|f|*"][0].0, "y");
        assert_eq!(c.for_segment(Some("nope"))[0].0, "y");
        assert_eq!(c.lists().count(), 2);
        // Only each user's first event: a's view of x and b's first view of x.
        let c = ColdStartLists::compute_with(&evs, 10, 1e12, 1, 1);
        assert_eq!(c.overall, vec![("x".to_string(), 1.0)]);
    }
}
