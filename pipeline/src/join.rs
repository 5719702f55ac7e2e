//! The feedback join: served lists (`recommendation` events) meet the events that name
//! them, inside the shard processor. It owns the per-shard state of lists waiting for
//! feedback; the processor snapshots it with the aggregation state at every checkpoint.
//!
//! ```text
//!  recommendation {recommendation_id, user, items (position, score, features)}
//!        ─► pending lists (at most `feedback_max_lists`, `feedback_ttl_ms` of event time)
//!  click | view | add_to_cart | purchase {recommendation_id, product_id, impressions?}
//!        ─► same user as the list? the engaged item: engaged = true; every other item
//!           shown (the event's `impressions`, or without them the whole list): false;
//!           each item labelled once per list
//!        ─► FeedbackRow … ─► feedback/<shard>/<end>.jsonl at the next checkpoint
//! ```
//!
//! The partition key is the user id, so a list and the events of the user it was served
//! to are on one shard: the join never waits for another shard. Within the shard a click
//! can still overtake its list (the server that took the click put it on the stream
//! before the publisher of the server that served the list did): feedback naming a list
//! not seen yet waits for it (bounded like the lists) and joins when it comes. Feedback
//! on a list served to someone else, or after the time to live, teaches nothing and is
//! counted. Everything is a function of the records and of event
//! time (never the wall clock), so a replay after a crash joins exactly as the first run.

use std::collections::{BTreeMap, VecDeque};

use compact_str::CompactString;
use recstream_ingest::feedback::FeedbackRow;
use recstream_ingest::{Event, EventType};
use serde::{Deserialize, Serialize};

/// Bounds of the join state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinLimits {
    /// Most lists kept waiting for feedback (the oldest go first).
    pub max_lists: usize,
    /// A list takes feedback for this long after it was served (event time, ms).
    pub ttl_ms: u64,
}

/// What one event did to the join (counted per batch by the processor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A served list was kept.
    Served,
    /// The same list was published twice (a producer retry): the first copy is kept.
    Duplicate,
    /// Feedback joined its list and produced labelled rows.
    Joined,
    /// Feedback arrived before its list (another server's collector was faster than the
    /// publisher of the server that served it): kept until the list comes.
    Early,
    /// Feedback named an item the list did not hold or has already labelled.
    Unmatched,
    /// Feedback arrived after the list's time to live.
    Expired,
    /// Feedback named a list served to another user: ignored.
    ForeignUser,
    /// A list, or early feedback, dropped by the bounds (count or time to live).
    Evicted,
}

/// Every outcome, in counter order.
pub const OUTCOMES: [Outcome; 8] = [
    Outcome::Served,
    Outcome::Duplicate,
    Outcome::Joined,
    Outcome::Early,
    Outcome::Unmatched,
    Outcome::Expired,
    Outcome::ForeignUser,
    Outcome::Evicted,
];

impl Outcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Served => "served",
            Outcome::Duplicate => "duplicate",
            Outcome::Joined => "joined",
            Outcome::Early => "early",
            Outcome::Unmatched => "unmatched",
            Outcome::Expired => "expired",
            Outcome::ForeignUser => "foreign_user",
            Outcome::Evicted => "evicted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PendingItem {
    product_id: CompactString,
    position: u32,
    score: f64,
    features: Vec<f32>,
    labelled: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PendingList {
    user_id: CompactString,
    ts: i64,
    model_version: Option<CompactString>,
    items: Vec<PendingItem>,
}

/// One feedback event, as much of it as the join needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Feedback {
    user_id: CompactString,
    product_id: CompactString,
    event_type: CompactString,
    impressions: Vec<CompactString>,
    ts: i64,
}

/// Most early feedback events kept for one list.
const MAX_EARLY_PER_LIST: usize = 16;

/// The lists of one shard waiting for feedback (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FeedbackJoin {
    lists: BTreeMap<CompactString, PendingList>,
    /// Arrival order of the kept lists, for eviction: (served ts, id).
    order: VecDeque<(i64, CompactString)>,
    /// Feedback that came before its list, by list id.
    early: BTreeMap<CompactString, Vec<Feedback>>,
    /// Arrival order of `early`, for eviction: (event ts, list id).
    early_order: VecDeque<(i64, CompactString)>,
    /// Latest event time seen: lists older than it by more than the TTL are dropped.
    watermark: i64,
    /// Outcomes since the last [`FeedbackJoin::take_counts`], in [`OUTCOMES`] order.
    #[serde(skip)]
    counts: [u64; OUTCOMES.len()],
}

impl FeedbackJoin {
    /// Lists waiting for feedback.
    pub fn len(&self) -> usize {
        self.lists.len()
    }

    /// No list is waiting.
    pub fn is_empty(&self) -> bool {
        self.lists.is_empty()
    }

    /// The outcomes since the last call, in [`OUTCOMES`] order.
    pub fn take_counts(&mut self) -> [u64; OUTCOMES.len()] {
        std::mem::take(&mut self.counts)
    }

    /// The state as bytes, for the checkpoint's snapshot.
    pub fn snapshot(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("the join state always serialises")
    }

    /// The state a [`FeedbackJoin::snapshot`] wrote.
    pub fn restore(bytes: &[u8]) -> Result<FeedbackJoin, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    fn count(&mut self, o: Outcome) {
        self.counts[o as usize] += 1;
    }

    /// Folds one validated event in; labelled rows are appended to `out`. Events that are
    /// neither a served list nor feedback naming one change nothing.
    pub fn apply(&mut self, e: &Event, limits: JoinLimits, out: &mut Vec<FeedbackRow>) {
        let Some(rec) = e.recommendation_id.as_ref() else {
            return;
        };
        if e.event_type == EventType::Recommendation {
            self.watermark = self.watermark.max(e.ts.0);
            self.keep(rec, e, limits, out);
            return;
        }
        if !matches!(
            e.event_type,
            EventType::View | EventType::Click | EventType::AddToCart | EventType::Purchase
        ) {
            return;
        }
        let Some(product) = e.product_id.as_ref() else {
            return;
        };
        self.watermark = self.watermark.max(e.ts.0);
        let fb = Feedback {
            user_id: e.user_id.clone(),
            product_id: product.clone(),
            event_type: e.event_type.as_str().into(),
            impressions: e.impressions.clone(),
            ts: e.ts.0,
        };
        match self.lists.get_mut(rec) {
            Some(list) => {
                let o = label(rec, list, &fb, limits, out);
                self.count(o);
            }
            None => self.wait_for_list(rec, fb, limits),
        }
    }

    fn wait_for_list(&mut self, rec: &CompactString, fb: Feedback, limits: JoinLimits) {
        self.evict_early(limits);
        let waiting = self.early.entry(rec.clone()).or_default();
        if waiting.len() >= MAX_EARLY_PER_LIST {
            self.count(Outcome::Evicted);
            return;
        }
        if waiting.is_empty() {
            self.early_order.push_back((fb.ts, rec.clone()));
        }
        waiting.push(fb);
        self.count(Outcome::Early);
    }

    fn evict_early(&mut self, limits: JoinLimits) {
        let oldest = self.watermark.saturating_sub(limits.ttl_ms as i64);
        while let Some((ts, id)) = self.early_order.front() {
            if self.early.len() < limits.max_lists.max(1) && *ts >= oldest {
                break;
            }
            let dropped = self.early.remove(id).map_or(0, |v| v.len());
            self.early_order.pop_front();
            self.counts[Outcome::Evicted as usize] += dropped as u64;
        }
    }

    fn keep(
        &mut self,
        rec: &CompactString,
        e: &Event,
        limits: JoinLimits,
        out: &mut Vec<FeedbackRow>,
    ) {
        if self.lists.contains_key(rec) {
            self.count(Outcome::Duplicate);
            return;
        }
        let oldest = self.watermark.saturating_sub(limits.ttl_ms as i64);
        while let Some((ts, id)) = self.order.front() {
            if self.lists.len() < limits.max_lists.max(1) && *ts >= oldest {
                break;
            }
            self.lists.remove(id);
            self.order.pop_front();
            self.count(Outcome::Evicted);
        }
        self.order.push_back((e.ts.0, rec.clone()));
        let mut list = PendingList {
            user_id: e.user_id.clone(),
            ts: e.ts.0,
            model_version: e.model_version.clone(),
            items: e
                .items
                .iter()
                .map(|i| PendingItem {
                    product_id: i.product_id.clone(),
                    position: i.position,
                    score: i.score,
                    features: i.features.clone(),
                    labelled: false,
                })
                .collect(),
        };
        self.count(Outcome::Served);
        if let Some(waiting) = self.early.remove(rec) {
            self.early_order.retain(|(_, id)| id != rec);
            for fb in waiting {
                let o = label(rec, &mut list, &fb, limits, out);
                self.count(o);
            }
        }
        self.lists.insert(rec.clone(), list);
    }
}

/// Labels the items of `list` by one feedback event: the engaged item `true`, every other
/// item shown with it `false`, each item once.
fn label(
    rec: &CompactString,
    list: &mut PendingList,
    fb: &Feedback,
    limits: JoinLimits,
    out: &mut Vec<FeedbackRow>,
) -> Outcome {
    if list.user_id != fb.user_id {
        return Outcome::ForeignUser;
    }
    if fb.ts.saturating_sub(list.ts) > limits.ttl_ms as i64 {
        return Outcome::Expired;
    }
    if !list
        .items
        .iter()
        .any(|i| i.product_id == fb.product_id && !i.labelled)
    {
        return Outcome::Unmatched;
    }
    for item in list.items.iter_mut().filter(|i| !i.labelled) {
        let engaged = item.product_id == fb.product_id;
        let shown = fb.impressions.is_empty() || fb.impressions.contains(&item.product_id);
        if !(engaged || shown) {
            continue;
        }
        item.labelled = true;
        out.push(FeedbackRow {
            recommendation_id: rec.clone(),
            user_id: list.user_id.clone(),
            product_id: item.product_id.clone(),
            position: item.position,
            score: item.score,
            engaged,
            event_type: fb.event_type.clone(),
            model_version: list.model_version.clone(),
            served_ts: recstream_ingest::Timestamp(list.ts),
            ts: recstream_ingest::Timestamp(fb.ts),
            features: item.features.clone(),
        });
    }
    Outcome::Joined
}

#[cfg(test)]
mod tests {
    use super::*;
    use recstream_ingest::{ServedItem, Timestamp};

    const T0: i64 = 1_700_000_000_000;
    const LIMITS: JoinLimits = JoinLimits {
        max_lists: 3,
        ttl_ms: 60_000,
    };

    fn served(rec: &str, user: &str, at: i64, products: &[&str]) -> Event {
        let items = products
            .iter()
            .enumerate()
            .map(|(i, p)| ServedItem {
                product_id: (*p).into(),
                position: i as u32 + 1,
                score: 1.0 / (i as f64 + 1.0),
                features: vec![i as f32, 1.0],
            })
            .collect();
        Event::recommendation(rec, Timestamp(at), user, "personalized", Some("v1"), items)
    }

    fn engage(ty: EventType, rec: &str, user: &str, at: i64, product: &str) -> Event {
        let mut e =
            Event::new(&format!("e{at}"), Timestamp(at), user, ty).with_product(product, None);
        e.recommendation_id = Some(rec.into());
        e
    }

    /// Applies `e` and returns the outcomes it produced.
    fn step(j: &mut FeedbackJoin, e: &Event, rows: &mut Vec<FeedbackRow>) -> Vec<Outcome> {
        j.apply(e, LIMITS, rows);
        let counts = j.take_counts();
        OUTCOMES
            .iter()
            .zip(counts)
            .flat_map(|(o, n)| std::iter::repeat_n(*o, n as usize))
            .collect()
    }

    fn labels(rows: &[FeedbackRow]) -> Vec<(&str, bool)> {
        rows.iter()
            .map(|r| (r.product_id.as_str(), r.engaged))
            .collect()
    }

    #[test]
    fn a_click_labels_its_item_engaged_and_the_rest_of_the_list_ignored() {
        let mut j = FeedbackJoin::default();
        let mut rows = Vec::new();
        let s = served("r1", "u", T0, &["a", "b", "c"]);
        assert_eq!(step(&mut j, &s, &mut rows), [Outcome::Served]);
        assert!(rows.is_empty());
        let click = engage(EventType::Click, "r1", "u", T0 + 5_000, "b");
        assert_eq!(step(&mut j, &click, &mut rows), [Outcome::Joined]);
        assert_eq!(labels(&rows), [("a", false), ("b", true), ("c", false)]);
        let b = &rows[1];
        assert_eq!(
            (b.position, b.score, b.features.clone()),
            (2, 0.5, vec![1.0, 1.0])
        );
        assert_eq!(b.model_version.as_deref(), Some("v1"));
        assert_eq!((b.served_ts, b.ts), (Timestamp(T0), Timestamp(T0 + 5_000)));
        assert_eq!(b.event_type, "click");
        // Every item is labelled once: a later cart of the same item teaches nothing.
        let cart = engage(EventType::AddToCart, "r1", "u", T0 + 9_000, "b");
        assert_eq!(step(&mut j, &cart, &mut rows), [Outcome::Unmatched]);
        assert_eq!(rows.len(), 3);
    }

    #[test]
    fn impressions_restrict_the_ignored_items_to_what_was_shown() {
        let mut j = FeedbackJoin::default();
        let mut rows = Vec::new();
        step(
            &mut j,
            &served("r", "u", T0, &["a", "b", "c", "d"]),
            &mut rows,
        );
        let mut click = engage(EventType::Click, "r", "u", T0 + 1, "a");
        click.impressions = vec!["a".into(), "b".into()];
        step(&mut j, &click, &mut rows);
        assert_eq!(labels(&rows), [("a", true), ("b", false)]);
        // c was never shown: a purchase of it later is still a positive.
        let later = engage(EventType::Purchase, "r", "u", T0 + 2, "c");
        assert_eq!(step(&mut j, &later, &mut rows), [Outcome::Joined]);
        assert_eq!(labels(&rows[2..]), [("c", true), ("d", false)]);
    }

    #[test]
    fn a_click_that_overtakes_its_list_joins_when_the_list_comes() {
        let mut j = FeedbackJoin::default();
        let mut rows = Vec::new();
        let click = engage(EventType::Click, "r", "u", T0 + 10, "b");
        assert_eq!(step(&mut j, &click, &mut rows), [Outcome::Early]);
        let list = served("r", "u", T0, &["a", "b"]);
        assert_eq!(
            step(&mut j, &list, &mut rows),
            [Outcome::Served, Outcome::Joined]
        );
        assert_eq!(labels(&rows), [("a", false), ("b", true)]);
        // Early feedback on a list that never comes is dropped after the TTL.
        let orphan = engage(EventType::Click, "never", "u", T0 + 20, "x");
        assert_eq!(step(&mut j, &orphan, &mut rows), [Outcome::Early]);
        let much_later = engage(EventType::Click, "other", "u", T0 + 200_000, "x");
        assert_eq!(
            step(&mut j, &much_later, &mut rows),
            [Outcome::Early, Outcome::Evicted]
        );
    }

    #[test]
    fn foreign_expired_and_unrelated_events_teach_nothing() {
        let mut j = FeedbackJoin::default();
        let mut rows = Vec::new();
        step(&mut j, &served("r", "u", T0, &["a", "b"]), &mut rows);
        let cases: [(Event, &[Outcome]); 5] = [
            (
                engage(EventType::Click, "r", "mallory", T0 + 1, "a"),
                &[Outcome::ForeignUser],
            ),
            (
                engage(EventType::Click, "r", "u", T0 + 1, "zzz"),
                &[Outcome::Unmatched],
            ),
            (
                engage(EventType::RemoveFromCart, "r", "u", T0 + 1, "a"),
                &[],
            ),
            (
                Event::new("plain", Timestamp(T0 + 1), "u", EventType::Click)
                    .with_product("a", None),
                &[],
            ),
            (
                engage(EventType::Click, "r", "u", T0 + 60_001, "a"),
                &[Outcome::Expired],
            ),
        ];
        for (e, want) in cases {
            assert_eq!(step(&mut j, &e, &mut rows), want, "{e:?}");
        }
        assert!(rows.is_empty());
        assert_eq!(
            step(&mut j, &served("r", "u", T0 + 2, &["x"]), &mut rows),
            [Outcome::Duplicate]
        );
    }

    #[test]
    fn the_state_is_bounded_by_count_and_event_time_and_survives_a_snapshot() {
        let mut j = FeedbackJoin::default();
        let mut rows = Vec::new();
        for i in 0..5 {
            step(
                &mut j,
                &served(&format!("r{i}"), "u", T0 + i, &["a"]),
                &mut rows,
            );
        }
        assert_eq!(j.len(), 3);
        // Much later, every old list is past its TTL and goes when the next one comes.
        let late = served("late", "u", T0 + 120_000, &["a"]);
        assert_eq!(
            step(&mut j, &late, &mut rows),
            [
                Outcome::Served,
                Outcome::Evicted,
                Outcome::Evicted,
                Outcome::Evicted
            ]
        );
        assert_eq!(j.len(), 1);
        let early = engage(EventType::Click, "soon", "u", T0 + 120_001, "a");
        step(&mut j, &early, &mut rows);
        let restored = FeedbackJoin::restore(&j.snapshot()).unwrap();
        assert_eq!(restored, j);
        assert!(FeedbackJoin::restore(b"\xff\xff\xff").is_err());
    }
}
