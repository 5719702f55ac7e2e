//! Cold-start lists: the top products overall and per demographic segment, for users with
//! no history. Computed after each training from the training events.
//!
//! ```text
//!  events ─► engagement weight (view 1, cart 3, purchase 5), decayed to the last event
//!        ├─► overall top-N                        key "overall"
//!        └─► per Profile::segment_key() top-N     key "25-34|f|eu", …
//! ```

use std::collections::BTreeMap;

use recstream_features::Decayed;
use recstream_ingest::Event;
use rustc_hash::FxHashMap;
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
        let mut seen_events: FxHashMap<&str, usize> = FxHashMap::default();
        let mut overall: FxHashMap<&str, Decayed> = FxHashMap::default();
        let mut per: FxHashMap<String, FxHashMap<&str, Decayed>> = FxHashMap::default();
        let mut seg_users: FxHashMap<String, rustc_hash::FxHashSet<&str>> = FxHashMap::default();
        let mut user_seg: FxHashMap<&str, String> = FxHashMap::default();
        let mut end = i64::MIN;
        for e in events {
            end = end.max(e.ts.0);
            if let Some(k) = e.profile.as_ref().and_then(|p| p.segment_key()) {
                user_seg.insert(e.user_id.as_str(), k.to_string());
            }
            let (Some(p), w) = (e.product_id.as_deref(), engagement_weight(&e.event_type)) else {
                continue;
            };
            if w <= 0.0 {
                continue;
            }
            if first_events > 0 {
                let k = seen_events.entry(e.user_id.as_str()).or_default();
                *k += 1;
                if *k > first_events {
                    continue;
                }
            }
            overall.entry(p).or_default().add(w, e.ts.0, half_life_ms);
            if let Some(seg) = user_seg.get(e.user_id.as_str()) {
                per.entry(seg.clone())
                    .or_default()
                    .entry(p)
                    .or_default()
                    .add(w, e.ts.0, half_life_ms);
                seg_users
                    .entry(seg.clone())
                    .or_default()
                    .insert(e.user_id.as_str());
            }
        }
        let top = |m: &FxHashMap<&str, Decayed>| {
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
        let segments = per
            .iter()
            .filter(|(k, _)| seg_users.get(*k).map_or(0, |u| u.len()) >= min_users)
            .map(|(k, m)| (k.clone(), top(m)))
            .collect();
        ColdStartLists {
            overall: top(&overall),
            segments,
        }
    }
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
