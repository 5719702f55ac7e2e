//! In-memory aggregation of one shard's events: the hot path.
//!
//! ```text
//!  Event ─► intern ids (user, product, category, session → u32) ─► UserState  (counts, recent,
//!                                                                   │           decayed item and
//!                                                                   │           category affinity,
//!                                                                   │           cart, purchases)
//!                                                                   ├► ProductState (counts, trending,
//!                                                                   │                co-visitation)
//!                                                                   └► dirty sets ─► drain() ─► FlushBatch
//! ```
//!
//! One [`Aggregator`] owns the state of one shard: users are partitioned by shard (the
//! partition key is the user id), products are per-shard partials merged by readers. All
//! arithmetic is in event time and every tie is broken by the string id, so the state —
//! and a state resumed from its checkpoint and replayed — depends only on the events and
//! their order within the shard.
//!
//! # Checkpoints and bounded state
//!
//! ```text
//!  apply ─► changed users / products (a flag on each state + a list)
//!  take_delta ─► StateDelta { meta (watermark, top lists), changed rows only } ─► checkpoint
//!  evict(idle, max_hot) ─► users idle in event time (or the least recent past max_hot)
//!                          leave memory; their rows stay in the state store
//!  resume(meta, product rows) ─► users come back one by one: load_user on their next event
//! ```
//!
//! A checkpoint costs what changed since the previous one, not the whole state; the rows
//! of a [`StateDelta`] are absolute values, so writing one twice is harmless. Evicted ids
//! stay interned until the interner holds twice what is live, then it is rebuilt.

use std::collections::VecDeque;

use lasso::{Rodeo, Spur};
use recstream_ingest::{Event, EventRef, EventType};
use rustc_hash::{FxBuildHasher, FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

use crate::config::FeatureConfig;
use crate::decay::Decayed;
use crate::view::{
    CartLine, EventCounts, ProductFeatures, RecentItem, TopList, UserFeatures, Weighted, sort_desc,
};

const KINDS: usize = 7;

#[inline]
fn kind_of(t: &EventType) -> usize {
    match t {
        EventType::View => 0,
        EventType::AddToCart => 1,
        EventType::RemoveFromCart => 2,
        EventType::Purchase => 3,
        EventType::Search => 4,
        EventType::Click => 5,
        EventType::Recommendation | EventType::Product | EventType::Other(_) => 6,
    }
}

const KIND_NAMES: [&str; KINDS] = [
    "view",
    "add_to_cart",
    "remove_from_cart",
    "purchase",
    "search",
    "click",
    "other",
];

/// Engagement weight of an action, for affinities and popularity.
#[inline]
fn weight(kind: usize) -> f64 {
    match kind {
        0 | 5 => 1.0,
        1 => 3.0,
        3 => 5.0,
        _ => 0.0,
    }
}

fn counts_of(c: &[u64; KINDS]) -> EventCounts {
    EventCounts {
        view: c[0],
        add_to_cart: c[1],
        remove_from_cart: c[2],
        purchase: c[3],
        search: c[4],
        click: c[5],
        other: c[6],
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct UserState<K> {
    counts: [u64; KINDS],
    recent: VecDeque<(K, i64, u8)>,
    items: Vec<(K, Decayed)>,
    categories: Vec<(K, Decayed)>,
    cart: Vec<(K, u32)>,
    purchased: VecDeque<K>,
    session: Option<K>,
    session_items: VecDeque<K>,
    segment: Option<K>,
    spend_minor: i64,
    currency: Option<K>,
    first_ts: i64,
    last_ts: i64,
    /// Changed since the last [`Aggregator::take_delta`] (listed in `changed_users`).
    #[serde(skip)]
    changed: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ProductState<K: std::hash::Hash + Eq> {
    counts: [u64; KINDS],
    popularity: Decayed,
    category: Option<K>,
    brand: Option<K>,
    price_minor: Option<i64>,
    currency: Option<K>,
    covisit: FxHashMap<K, f32>,
    buyers: u64,
    last_ts: i64,
    /// Changed since the last [`Aggregator::take_delta`] (listed in `changed_products`).
    #[serde(skip)]
    changed: bool,
}

/// A batch of changed views, ready for the feature store.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FlushBatch {
    /// Users whose view changed since the last flush.
    pub users: Vec<UserFeatures>,
    /// Products whose view (this shard's partial) changed since the last flush.
    pub products: Vec<ProductFeatures>,
    /// This shard's trending list (always present after the first event).
    pub trending: TopList,
    /// Top lists of the categories that changed.
    pub categories: Vec<(String, TopList)>,
    /// Latest event time seen by the shard.
    pub watermark: i64,
}

impl FlushBatch {
    /// Whether there is nothing to write (the trending list alone does not count).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.products.is_empty() && self.categories.is_empty()
    }
}

/// Aggregated state of one shard.
pub struct Aggregator {
    cfg: FeatureConfig,
    user_h: f64,
    trend_h: f64,
    /// Co-visit weight by distance `d` in the session (index `d`, 1 = adjacent) for the
    /// earlier item's list (the later one followed it) and for the later item's list.
    covisit_after: [f32; PARTNERS + 1],
    covisit_before: [f32; PARTNERS + 1],
    ids: Rodeo<Spur, FxBuildHasher>,
    users: FxHashMap<Spur, UserState<Spur>>,
    products: FxHashMap<Spur, ProductState<Spur>>,
    trending: Vec<Spur>,
    category_top: FxHashMap<Spur, Vec<Spur>>,
    dirty_users: FxHashSet<Spur>,
    dirty_products: FxHashSet<Spur>,
    /// Categories a product left since the last drain (their top lists must drop it).
    left_categories: FxHashSet<Spur>,
    /// Users and products changed since the last checkpoint delta.
    changed_users: Vec<Spur>,
    changed_products: Vec<Spur>,
    /// Users may live in the state store and not in memory (after a resume or an
    /// eviction): the caller must offer them with `load_user` before their events.
    partial: bool,
    watermark: i64,
    applied: u64,
}

/// Most earlier session items one product pairs with (`covisit_window` is at most 50).
const PARTNERS: usize = 64;

/// A product in a snapshot: id, state, co-visitation list sorted by id.
type SnapshotProduct = (String, ProductState<String>, Vec<(String, f32)>);

/// A product's state row: its state with string ids and its co-visitation list sorted by id.
type ProductRow = (ProductState<String>, Vec<(String, f32)>);

/// Layout version of [`StateDelta`] (a full snapshot, the layout before it, was 1).
const DELTA_VERSION: u32 = 2;

/// The small part of a shard's state written whole at every checkpoint: watermark, event
/// count and top lists (at most `top_list_len` ids each).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardMeta {
    watermark: i64,
    applied: u64,
    trending: Vec<String>,
    category_top: Vec<(String, Vec<String>)>,
}

/// One user's or product's state as the state store keeps it (postcard, string ids).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateRow {
    /// The user or product id.
    pub id: String,
    /// The encoded state (opaque outside this module).
    pub state: Vec<u8>,
}

/// What changed in one shard's state since its previous checkpoint
/// ([`Aggregator::take_delta`]): the checkpoint object and the rows the state store
/// upserts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateDelta {
    version: u32,
    /// Watermark, event count and top lists.
    pub meta: ShardMeta,
    /// Rows of the users changed since the previous delta, sorted by id.
    pub users: Vec<StateRow>,
    /// Rows of the products (this shard's partials) changed since the previous delta.
    pub products: Vec<StateRow>,
}

impl StateDelta {
    /// The checkpoint object's bytes.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("state always serialises")
    }

    /// Reads a checkpoint object; damaged or foreign bytes are an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<StateDelta, crate::StoreError> {
        let d: StateDelta =
            postcard::from_bytes(bytes).map_err(|e| corrupt_state("state delta", e))?;
        if d.version != DELTA_VERSION {
            return Err(corrupt_state(
                "state delta",
                format!("layout version {} (expected {DELTA_VERSION})", d.version),
            ));
        }
        Ok(d)
    }
}

/// Serializable form of the whole state, with string ids (intern order is not stable).
#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    watermark: i64,
    applied: u64,
    users: Vec<(String, UserState<String>)>,
    /// Each product with its co-visitation list sorted by id (hash order is not stable).
    products: Vec<SnapshotProduct>,
    trending: Vec<String>,
    category_top: Vec<(String, Vec<String>)>,
}

/// The key of `s`: `known` when it already names `s` (the same session, brand or currency
/// as last time: a comparison instead of a hash lookup), else the interner's.
#[inline]
fn intern_as(ids: &mut Rodeo<Spur, FxBuildHasher>, known: Option<Spur>, s: &str) -> Spur {
    match known {
        Some(k) if ids.resolve(&k) == s => k,
        _ => ids.get_or_intern(s),
    }
}

fn bump_decayed<K: PartialEq + Copy>(list: &mut Vec<(K, Decayed)>, key: K, w: f64, t: i64, h: f64) {
    match list.iter_mut().find(|(k, _)| *k == key) {
        Some((_, d)) => d.add(w, t, h),
        None => {
            let mut d = Decayed::default();
            d.add(w, t, h);
            list.push((key, d));
        }
    }
}

impl Aggregator {
    /// An empty aggregator with the half-lives and bounds of `cfg`.
    pub fn new(cfg: FeatureConfig) -> Aggregator {
        let mut covisit_after = [0.0; PARTNERS + 1];
        let mut covisit_before = [0.0; PARTNERS + 1];
        for d in 1..=PARTNERS {
            covisit_after[d] = (d as f32).powf(-cfg.covisit_distance_decay);
            covisit_before[d] = covisit_after[d] * cfg.covisit_backward;
        }
        Aggregator {
            user_h: cfg.user_half_life_ms(),
            trend_h: cfg.trending_half_life_ms(),
            covisit_after,
            covisit_before,
            cfg,
            ids: Rodeo::with_hasher(FxBuildHasher),
            users: FxHashMap::default(),
            products: FxHashMap::default(),
            trending: Vec::new(),
            category_top: FxHashMap::default(),
            dirty_users: FxHashSet::default(),
            dirty_products: FxHashSet::default(),
            left_categories: FxHashSet::default(),
            changed_users: Vec::new(),
            changed_products: Vec::new(),
            partial: false,
            watermark: 0,
            applied: 0,
        }
    }

    /// The settings the aggregator was built with.
    pub fn config(&self) -> &FeatureConfig {
        &self.cfg
    }

    /// Events applied since the state began (across restarts).
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Latest event time seen.
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// Users with state in this aggregator.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Products with state in this aggregator (this shard's partials).
    pub fn product_count(&self) -> usize {
        self.products.len()
    }

    /// Folds one validated event into the state. A `recommendation` event (a list the
    /// server showed) and a `product` event (a catalog entry) are not something a shopper
    /// did: they change nothing here.
    pub fn apply(&mut self, e: &Event) {
        self.apply_ref(&e.as_event_ref());
    }

    /// Folds one validated borrowed event into the state (the hot path: the record's bytes
    /// are decoded with [`recstream_ingest::decode_ref`] and never copied into an owned
    /// event); [`Aggregator::apply`] is this on a view of an owned event.
    pub fn apply_ref(&mut self, e: &EventRef<'_>) {
        if !e.event_type.is_activity() {
            return;
        }
        let kind = kind_of(&e.event_type);
        let t = e.ts.0;
        self.applied += 1;
        self.watermark = self.watermark.max(t);
        let (user_h, trend_h) = (self.user_h, self.trend_h);
        let cfg = &self.cfg;
        let ids = &mut self.ids;

        let uid = ids.get_or_intern(e.user_id.as_str());
        self.dirty_users.insert(uid);
        let user = self.users.entry(uid).or_insert_with(|| UserState {
            first_ts: t,
            last_ts: t,
            ..Default::default()
        });
        if !user.changed {
            user.changed = true;
            self.changed_users.push(uid);
        }
        user.counts[kind] += 1;
        user.first_ts = user.first_ts.min(t);
        let gap = t - user.last_ts;
        user.last_ts = user.last_ts.max(t);
        if let Some(seg) = e.profile.as_ref().and_then(|p| p.segment_key()) {
            user.segment = Some(ids.get_or_intern(seg.as_str()));
        }

        let Some(pid) = e.product_id.as_deref() else {
            return;
        };
        let pid = ids.get_or_intern(pid);
        let cat = e.category.as_deref().map(|c| ids.get_or_intern(c));
        let w = weight(kind);

        // Recent items: distinct, most recent last.
        if let Some(pos) = user.recent.iter().position(|(p, _, _)| *p == pid) {
            user.recent.remove(pos);
        }
        user.recent.push_back((pid, t, kind as u8));
        if user.recent.len() > cfg.recent_items {
            user.recent.pop_front();
        }
        if w > 0.0 {
            bump_decayed(&mut user.items, pid, w, t, user_h);
            if user.items.len() > 2 * cfg.item_affinities {
                prune_decayed(
                    &mut user.items,
                    cfg.item_affinities,
                    user.last_ts,
                    user_h,
                    ids,
                );
            }
            if let Some(c) = cat {
                bump_decayed(&mut user.categories, c, w, t, user_h);
                if user.categories.len() > 2 * cfg.categories {
                    prune_decayed(
                        &mut user.categories,
                        cfg.categories,
                        user.last_ts,
                        user_h,
                        ids,
                    );
                }
            }
        }

        let qty = e.quantity.unwrap_or(1);
        let mut first_purchase = false;
        match kind {
            1 => match user.cart.iter_mut().find(|(p, _)| *p == pid) {
                Some((_, q)) => *q = q.saturating_add(qty),
                None => user.cart.push((pid, qty)),
            },
            2 => user.cart.retain(|(p, _)| *p != pid),
            3 => {
                user.cart.retain(|(p, _)| *p != pid);
                if !user.purchased.contains(&pid) {
                    first_purchase = true;
                    user.purchased.push_back(pid);
                    if user.purchased.len() > cfg.purchased {
                        user.purchased.pop_front();
                    }
                }
                if let Some(price) = &e.price {
                    let cur = intern_as(ids, user.currency, price.currency.as_str());
                    if *user.currency.get_or_insert(cur) == cur {
                        user.spend_minor = user
                            .spend_minor
                            .saturating_add(price.amount.saturating_mul(qty as i64));
                    }
                }
            }
            _ => {}
        }

        // Co-visitation within the session (or within the gap when there is no session id).
        let session = e
            .session_id
            .as_deref()
            .map(|s| intern_as(ids, user.session, s));
        let new_session = match session {
            Some(s) => user.session != Some(s),
            None => gap > cfg.session_gap_secs * 1000,
        };
        if new_session {
            user.session = session;
            user.session_items.clear();
        }
        let mut partners: [Option<Spur>; PARTNERS] = [None; PARTNERS];
        let mut n = 0;
        for &a in user.session_items.iter() {
            if a != pid && n < partners.len() {
                partners[n] = Some(a);
                n += 1;
            }
        }
        if let Some(pos) = user.session_items.iter().position(|p| *p == pid) {
            user.session_items.remove(pos);
        }
        user.session_items.push_back(pid);
        if user.session_items.len() > cfg.covisit_window {
            user.session_items.pop_front();
        }

        let product = self.products.entry(pid).or_default();
        if !product.changed {
            product.changed = true;
            self.changed_products.push(pid);
        }
        product.counts[kind] += 1;
        if w > 0.0 {
            product.popularity.add(w, t, trend_h);
        }
        if t >= product.last_ts {
            if cat.is_some() {
                if let Some(old) = product.category.filter(|old| Some(*old) != cat) {
                    self.left_categories.insert(old);
                }
                product.category = cat;
            }
            if let Some(b) = e.brand.as_deref() {
                product.brand = Some(intern_as(ids, product.brand, b));
            }
            if let Some(price) = &e.price {
                product.price_minor = Some(price.amount);
                product.currency = Some(intern_as(ids, product.currency, price.currency.as_str()));
            }
            product.last_ts = t;
        }
        if first_purchase {
            product.buyers += 1;
        }
        self.dirty_products.insert(pid);
        // The partners are distinct (a session's items are), so each partner's list is
        // complete, and may be pruned, as soon as this product is added to it. Partner `j`
        // (oldest first) is `n - j` items before this product.
        for (j, a) in partners[..n].iter().enumerate() {
            let Some(a) = *a else { continue };
            let other = self.products.entry(a).or_default();
            if !other.changed {
                other.changed = true;
                self.changed_products.push(a);
            }
            *other.covisit.entry(pid).or_default() += self.covisit_after[n - j];
            if other.covisit.len() > 2 * cfg.covisit_neighbours {
                prune_covisit(&mut other.covisit, cfg.covisit_neighbours, ids);
            }
            self.dirty_products.insert(a);
        }
        let product = self.products.get_mut(&pid).expect("inserted above");
        for (j, a) in partners[..n].iter().enumerate() {
            let w = self.covisit_before[n - j];
            if let (Some(a), true) = (*a, w > 0.0) {
                *product.covisit.entry(a).or_default() += w;
            }
        }
        if product.covisit.len() > 2 * cfg.covisit_neighbours {
            prune_covisit(&mut product.covisit, cfg.covisit_neighbours, ids);
        }
    }

    /// Applies a batch of events in order.
    pub fn apply_all<'a>(&mut self, events: impl IntoIterator<Item = &'a Event>) {
        for e in events {
            self.apply(e);
        }
    }

    /// The views of everything that changed since the last drain.
    pub fn drain(&mut self) -> FlushBatch {
        let mut dirty_users: Vec<Spur> = self.dirty_users.drain().collect();
        let mut dirty_products: Vec<Spur> = self.dirty_products.drain().collect();
        dirty_users.sort_unstable_by(|a, b| self.ids.resolve(a).cmp(self.ids.resolve(b)));
        dirty_products.sort_unstable_by(|a, b| self.ids.resolve(a).cmp(self.ids.resolve(b)));
        let users = dirty_users.iter().map(|u| self.user_view(*u)).collect();
        let products = dirty_products
            .iter()
            .map(|p| self.product_view(*p))
            .collect();

        // Uniform decay keeps the relative order of untouched products, so the new top
        // lists are the top of (old list ∪ changed products): exact without a full scan.
        let n = self.cfg.top_list_len;
        let mut trending: Vec<Spur> = self.trending.clone();
        trending.extend(dirty_products.iter().copied());
        self.trending = self.top_by_popularity(trending, n);
        let mut changed_cats: FxHashMap<Spur, Vec<Spur>> = FxHashMap::default();
        for p in &dirty_products {
            if let Some(c) = self.products[p].category {
                changed_cats.entry(c).or_default().push(*p);
            }
        }
        for c in self.left_categories.drain() {
            changed_cats.entry(c).or_default();
        }
        let mut categories = Vec::with_capacity(changed_cats.len());
        let mut changed: Vec<(Spur, Vec<Spur>)> = changed_cats.into_iter().collect();
        changed.sort_unstable_by(|a, b| self.ids.resolve(&a.0).cmp(self.ids.resolve(&b.0)));
        for (c, mut cands) in changed {
            cands.extend(self.category_top.get(&c).into_iter().flatten().copied());
            cands.retain(|p| self.products[p].category == Some(c));
            let top = self.top_by_popularity(cands, n);
            categories.push((self.ids.resolve(&c).to_string(), self.top_list(&top)));
            if top.is_empty() {
                self.category_top.remove(&c);
            } else {
                self.category_top.insert(c, top);
            }
        }
        FlushBatch {
            users,
            products,
            trending: self.top_list(&self.trending),
            categories,
            watermark: self.watermark,
        }
    }

    fn top_by_popularity(&self, mut cands: Vec<Spur>, n: usize) -> Vec<Spur> {
        cands.sort_unstable();
        cands.dedup();
        let at = self.watermark;
        let mut scored: Vec<(String, f64)> = cands
            .iter()
            .map(|p| {
                (
                    self.ids.resolve(p).to_string(),
                    self.products[p].popularity.value_at(at, self.trend_h),
                )
            })
            .collect();
        sort_desc(&mut scored);
        scored.truncate(n);
        scored
            .iter()
            .map(|(id, _)| self.ids.get(id).expect("interned"))
            .collect()
    }

    fn top_list(&self, top: &[Spur]) -> TopList {
        let at = self.watermark;
        TopList {
            at,
            items: top
                .iter()
                .map(|p| {
                    (
                        self.ids.resolve(p).to_string(),
                        self.products[p].popularity.value_at(at, self.trend_h),
                    )
                })
                .collect(),
        }
    }

    fn name(&self, k: &Spur) -> String {
        self.ids.resolve(k).to_string()
    }

    fn user_view(&self, uid: Spur) -> UserFeatures {
        let u = &self.users[&uid];
        let weighted = |list: &Vec<(Spur, Decayed)>, cap: usize| {
            let mut v: Vec<(String, f64, Decayed)> = list
                .iter()
                .map(|(k, d)| (self.name(k), d.value_at(u.last_ts, self.user_h), *d))
                .collect();
            v.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            v.truncate(cap);
            v.into_iter()
                .map(|(id, _, weight)| Weighted { id, weight })
                .collect()
        };
        UserFeatures {
            user_id: self.name(&uid),
            counts: counts_of(&u.counts),
            recent: u
                .recent
                .iter()
                .rev()
                .map(|(p, ts, k)| RecentItem {
                    product_id: self.name(p),
                    ts: *ts,
                    action: KIND_NAMES[*k as usize].to_string(),
                })
                .collect(),
            items: weighted(&u.items, self.cfg.item_affinities),
            categories: weighted(&u.categories, self.cfg.categories),
            cart: u
                .cart
                .iter()
                .map(|(p, q)| CartLine {
                    product_id: self.name(p),
                    quantity: *q,
                })
                .collect(),
            purchased: u.purchased.iter().map(|p| self.name(p)).collect(),
            segment: u.segment.map(|s| self.name(&s)),
            spend_minor: u.spend_minor,
            currency: u.currency.map(|c| self.name(&c)),
            first_ts: u.first_ts,
            last_ts: u.last_ts,
        }
    }

    fn product_view(&self, pid: Spur) -> ProductFeatures {
        let p = &self.products[&pid];
        let mut covisit: Vec<(String, f32)> =
            p.covisit.iter().map(|(k, w)| (self.name(k), *w)).collect();
        sort_desc(&mut covisit);
        covisit.truncate(self.cfg.covisit_neighbours);
        ProductFeatures {
            product_id: self.name(&pid),
            counts: counts_of(&p.counts),
            popularity: p.popularity,
            category: p.category.map(|c| self.name(&c)),
            brand: p.brand.map(|c| self.name(&c)),
            price_minor: p.price_minor,
            currency: p.currency.map(|c| self.name(&c)),
            covisit,
            buyers: p.buyers,
            last_ts: p.last_ts,
        }
    }

    /// Current view of one user (for tests and in-process readers).
    pub fn user(&self, user_id: &str) -> Option<UserFeatures> {
        self.ids
            .get(user_id)
            .filter(|k| self.users.contains_key(k))
            .map(|k| self.user_view(k))
    }

    /// Current view of one product (this shard's partial).
    pub fn product(&self, product_id: &str) -> Option<ProductFeatures> {
        self.ids
            .get(product_id)
            .filter(|k| self.products.contains_key(k))
            .map(|k| self.product_view(k))
    }

    // ---- checkpoint state ----------------------------------------------------------

    fn user_owned(&self, u: &UserState<Spur>) -> UserState<String> {
        let s = |k: &Spur| self.name(k);
        let so = |k: &Option<Spur>| k.map(|k| self.name(&k));
        UserState {
            counts: u.counts,
            recent: u.recent.iter().map(|(p, t, k)| (s(p), *t, *k)).collect(),
            items: u.items.iter().map(|(p, d)| (s(p), *d)).collect(),
            categories: u.categories.iter().map(|(p, d)| (s(p), *d)).collect(),
            cart: u.cart.iter().map(|(p, q)| (s(p), *q)).collect(),
            purchased: u.purchased.iter().map(s).collect(),
            session: so(&u.session),
            session_items: u.session_items.iter().map(s).collect(),
            segment: so(&u.segment),
            spend_minor: u.spend_minor,
            currency: so(&u.currency),
            first_ts: u.first_ts,
            last_ts: u.last_ts,
            changed: false,
        }
    }

    /// A product's state with string ids and its co-visitation list sorted by id (hash
    /// order is not stable).
    fn product_owned(&self, p: &ProductState<Spur>) -> ProductRow {
        let so = |k: &Option<Spur>| k.map(|k| self.name(&k));
        let mut covisit: Vec<(String, f32)> =
            p.covisit.iter().map(|(k, w)| (self.name(k), *w)).collect();
        covisit.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        (
            ProductState {
                counts: p.counts,
                popularity: p.popularity,
                category: so(&p.category),
                brand: so(&p.brand),
                price_minor: p.price_minor,
                currency: so(&p.currency),
                covisit: FxHashMap::default(),
                buyers: p.buyers,
                last_ts: p.last_ts,
                changed: false,
            },
            covisit,
        )
    }

    fn intern_user(ids: &mut Rodeo<Spur, FxBuildHasher>, u: &UserState<String>) -> UserState<Spur> {
        let mut k = |s: &str| ids.get_or_intern(s);
        UserState {
            counts: u.counts,
            recent: u.recent.iter().map(|(p, t, kk)| (k(p), *t, *kk)).collect(),
            items: u.items.iter().map(|(p, d)| (k(p), *d)).collect(),
            categories: u.categories.iter().map(|(p, d)| (k(p), *d)).collect(),
            cart: u.cart.iter().map(|(p, q)| (k(p), *q)).collect(),
            purchased: u.purchased.iter().map(|p| k(p)).collect(),
            session: u.session.as_deref().map(&mut k),
            session_items: u.session_items.iter().map(|p| k(p)).collect(),
            segment: u.segment.as_deref().map(&mut k),
            spend_minor: u.spend_minor,
            currency: u.currency.as_deref().map(&mut k),
            first_ts: u.first_ts,
            last_ts: u.last_ts,
            changed: false,
        }
    }

    fn intern_product(
        ids: &mut Rodeo<Spur, FxBuildHasher>,
        row: &ProductRow,
    ) -> ProductState<Spur> {
        let (p, covisit) = row;
        let mut k = |s: &str| ids.get_or_intern(s);
        ProductState {
            counts: p.counts,
            popularity: p.popularity,
            category: p.category.as_deref().map(&mut k),
            brand: p.brand.as_deref().map(&mut k),
            price_minor: p.price_minor,
            currency: p.currency.as_deref().map(&mut k),
            covisit: covisit.iter().map(|(n, w)| (k(n), *w)).collect(),
            buyers: p.buyers,
            last_ts: p.last_ts,
            changed: false,
        }
    }

    fn meta(&self) -> ShardMeta {
        let s = |k: &Spur| self.name(k);
        let mut category_top: Vec<(String, Vec<String>)> = self
            .category_top
            .iter()
            .map(|(c, l)| (s(c), l.iter().map(s).collect()))
            .collect();
        category_top.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        ShardMeta {
            watermark: self.watermark,
            applied: self.applied,
            trending: self.trending.iter().map(s).collect(),
            category_top,
        }
    }

    /// Top lists name only products this state holds (a damaged checkpoint must not
    /// make a later drain index a missing product).
    fn set_meta(&mut self, meta: &ShardMeta) {
        let (ids, products) = (&mut self.ids, &self.products);
        let known = |ids: &mut Rodeo<Spur, FxBuildHasher>, l: &[String]| -> Vec<Spur> {
            l.iter()
                .filter_map(|p| ids.get(p.as_str()).filter(|k| products.contains_key(k)))
                .collect()
        };
        self.trending = known(ids, &meta.trending);
        for (c, l) in &meta.category_top {
            let l = known(ids, l);
            if !l.is_empty() {
                let c = ids.get_or_intern(c.as_str());
                self.category_top.insert(c, l);
            }
        }
        self.watermark = meta.watermark;
        self.applied = meta.applied;
    }

    /// What changed since the previous call: the state rows of every user and product an
    /// event touched (absolute values, sorted by id) and the shard's small meta
    /// (watermark, event count, top lists). Its size follows the changes, not the state.
    pub fn take_delta(&mut self) -> StateDelta {
        let mut users = Vec::with_capacity(self.changed_users.len());
        for k in std::mem::take(&mut self.changed_users) {
            let Some(u) = self.users.get_mut(&k) else {
                continue;
            };
            u.changed = false;
            let row = self.user_owned(&self.users[&k]);
            users.push(StateRow {
                id: self.name(&k),
                state: postcard::to_stdvec(&row).expect("state always serialises"),
            });
        }
        let mut products = Vec::with_capacity(self.changed_products.len());
        for k in std::mem::take(&mut self.changed_products) {
            let Some(p) = self.products.get_mut(&k) else {
                continue;
            };
            p.changed = false;
            let row = self.product_owned(&self.products[&k]);
            products.push(StateRow {
                id: self.name(&k),
                state: postcard::to_stdvec(&row).expect("state always serialises"),
            });
        }
        users.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        products.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        StateDelta {
            version: DELTA_VERSION,
            meta: self.meta(),
            users,
            products,
        }
    }

    /// Rebuilds a shard's state from its checkpoint: the meta of its last delta and every
    /// product row of the shard, read from the state store (with that delta written to
    /// it). Users stay in the store until [`Aggregator::load_user`] brings them back.
    pub fn resume<B: AsRef<[u8]>>(
        cfg: FeatureConfig,
        meta: &ShardMeta,
        products: impl IntoIterator<Item = (String, B)>,
    ) -> Result<Aggregator, crate::StoreError> {
        let mut agg = Aggregator::new(cfg);
        for (id, bytes) in products {
            let row: ProductRow = postcard::from_bytes(bytes.as_ref())
                .map_err(|e| corrupt_state("product state row", e))?;
            let key = agg.ids.get_or_intern(&id);
            let state = Aggregator::intern_product(&mut agg.ids, &row);
            agg.products.insert(key, state);
        }
        agg.set_meta(meta);
        agg.partial = true;
        Ok(agg)
    }

    /// Whether some users' state may be in the state store only (after a resume or an
    /// eviction): then a user who is not [resident](Self::is_resident) must be offered
    /// to [`Aggregator::load_user`] before their next event is applied.
    pub fn is_partial(&self) -> bool {
        self.partial
    }

    /// Whether `user_id`'s state is in memory.
    pub fn is_resident(&self, user_id: &str) -> bool {
        self.ids
            .get(user_id)
            .is_some_and(|k| self.users.contains_key(&k))
    }

    /// Brings a user's state row (read from the state store) back into memory; a user
    /// already in memory keeps the newer state it has.
    pub fn load_user(&mut self, user_id: &str, row: &[u8]) -> Result<(), crate::StoreError> {
        if self.is_resident(user_id) {
            return Ok(());
        }
        let owned: UserState<String> =
            postcard::from_bytes(row).map_err(|e| corrupt_state("user state row", e))?;
        let key = self.ids.get_or_intern(user_id);
        let state = Aggregator::intern_user(&mut self.ids, &owned);
        self.users.insert(key, state);
        Ok(())
    }

    /// Drops users from memory: those idle for more than `idle_ms` of event time before
    /// the watermark, then, while more than `max_hot` remain, the least recently active.
    /// Only users whose state is in the last [delta](Self::take_delta) and flushed are
    /// dropped: call it right after a checkpoint wrote that delta to the state store.
    /// Returns how many users left memory.
    pub fn evict(&mut self, idle_ms: Option<i64>, max_hot: Option<usize>) -> usize {
        let cutoff = idle_ms.map(|i| self.watermark.saturating_sub(i));
        let mut out: Vec<Spur> = Vec::new();
        let mut keep: Vec<(i64, Spur)> = Vec::new();
        for (k, u) in &self.users {
            if u.changed || self.dirty_users.contains(k) {
                continue;
            }
            if cutoff.is_some_and(|c| u.last_ts < c) {
                out.push(*k);
            } else {
                keep.push((u.last_ts, *k));
            }
        }
        if let Some(max) = max_hot {
            let excess = (self.users.len() - out.len())
                .saturating_sub(max)
                .min(keep.len());
            if excess > 0 {
                let ids = &self.ids;
                keep.select_nth_unstable_by(excess - 1, |a, b| {
                    a.0.cmp(&b.0)
                        .then_with(|| ids.resolve(&a.1).cmp(ids.resolve(&b.1)))
                });
                out.extend(keep[..excess].iter().map(|(_, k)| *k));
            }
        }
        for k in &out {
            self.users.remove(k);
        }
        if !out.is_empty() {
            self.partial = true;
            self.compact_ids();
        }
        out.len()
    }

    /// Ids stay interned after their user leaves memory; once the interner holds twice
    /// what the live state can name, it is rebuilt from the live state (amortised: the
    /// rebuild costs what is live, and the next one is as many evictions away).
    fn compact_ids(&mut self) {
        let live = 2 * self.users.len() + self.products.len() + 4096;
        let pending = !(self.dirty_users.is_empty()
            && self.dirty_products.is_empty()
            && self.left_categories.is_empty()
            && self.changed_users.is_empty()
            && self.changed_products.is_empty());
        if self.ids.len() <= 2 * live || pending {
            return;
        }
        match Aggregator::restore(self.cfg.clone(), &self.snapshot()) {
            Ok(mut fresh) => {
                fresh.partial = self.partial;
                *self = fresh;
            }
            Err(e) => tracing::warn!(error = %e, "interner compaction skipped"),
        }
    }

    /// Serialises the whole state (ids as strings): the interner's compaction, and the
    /// tests' proof that a resumed state equals a clean run's.
    fn snapshot(&self) -> Vec<u8> {
        let mut users: Vec<(String, UserState<String>)> = self
            .users
            .iter()
            .map(|(k, u)| (self.name(k), self.user_owned(u)))
            .collect();
        users.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut products: Vec<SnapshotProduct> = self
            .products
            .iter()
            .map(|(k, p)| {
                let (state, covisit) = self.product_owned(p);
                (self.name(k), state, covisit)
            })
            .collect();
        products.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let meta = self.meta();
        let snap = Snapshot {
            version: 1,
            watermark: meta.watermark,
            applied: meta.applied,
            users,
            products,
            trending: meta.trending,
            category_top: meta.category_top,
        };
        postcard::to_stdvec(&snap).expect("state always serialises")
    }

    /// Rebuilds the whole state from a full snapshot: the checkpoints of earlier versions
    /// (`state/<shard>/<seq>.bin`), which held every user and product.
    pub fn restore(cfg: FeatureConfig, bytes: &[u8]) -> Result<Aggregator, crate::StoreError> {
        let snap: Snapshot =
            postcard::from_bytes(bytes).map_err(|e| corrupt_state("aggregation snapshot", e))?;
        let mut agg = Aggregator::new(cfg);
        for (id, u) in &snap.users {
            let key = agg.ids.get_or_intern(id);
            let state = Aggregator::intern_user(&mut agg.ids, u);
            agg.users.insert(key, state);
        }
        for (id, p, covisit) in snap.products {
            let key = agg.ids.get_or_intern(&id);
            let state = Aggregator::intern_product(&mut agg.ids, &(p, covisit));
            agg.products.insert(key, state);
        }
        agg.set_meta(&ShardMeta {
            watermark: snap.watermark,
            applied: snap.applied,
            trending: snap.trending,
            category_top: snap.category_top,
        });
        Ok(agg)
    }
}

fn corrupt_state(what: &'static str, e: impl std::fmt::Display) -> crate::StoreError {
    crate::StoreError::Corrupt {
        what,
        message: e.to_string(),
    }
}

fn prune_decayed(
    list: &mut Vec<(Spur, Decayed)>,
    keep: usize,
    at: i64,
    h: f64,
    ids: &Rodeo<Spur, FxBuildHasher>,
) {
    list.sort_unstable_by(|a, b| {
        b.1.value_at(at, h)
            .total_cmp(&a.1.value_at(at, h))
            .then_with(|| ids.resolve(&a.0).cmp(ids.resolve(&b.0)))
    });
    list.truncate(keep);
}

fn prune_covisit(map: &mut FxHashMap<Spur, f32>, keep: usize, ids: &Rodeo<Spur, FxBuildHasher>) {
    let mut v: Vec<(Spur, f32)> = map.iter().map(|(k, w)| (*k, *w)).collect();
    v.sort_unstable_by(|a, b| {
        b.1.total_cmp(&a.1)
            .then_with(|| ids.resolve(&a.0).cmp(ids.resolve(&b.0)))
    });
    v.truncate(keep);
    *map = v.into_iter().collect();
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use recstream_ingest::{Money, Timestamp};

    fn ev(i: usize, user: &str, ty: EventType, product: &str, cat: &str, ts: i64) -> Event {
        let mut e = Event::new(&format!("e{i}"), Timestamp(ts), user, ty)
            .with_product(product, Some(cat))
            .with_session(&format!("{user}-s"));
        e.price = Some(Money::new(1000, "USD"));
        e
    }

    const T0: i64 = 1_569_888_000_000;

    #[test]
    fn counts_cart_purchase_and_spend() {
        let mut a = Aggregator::new(FeatureConfig::default());
        a.apply(&ev(1, "u", EventType::View, "p1", "c", T0));
        a.apply(&ev(2, "u", EventType::AddToCart, "p1", "c", T0 + 1));
        a.apply(&ev(3, "u", EventType::AddToCart, "p2", "c", T0 + 2));
        a.apply(&ev(4, "u", EventType::Purchase, "p1", "c", T0 + 3));
        let u = a.user("u").unwrap();
        assert_eq!(
            (u.counts.view, u.counts.add_to_cart, u.counts.purchase),
            (1, 2, 1)
        );
        assert_eq!(u.cart.len(), 1, "bought item leaves the cart");
        assert_eq!(u.cart[0].product_id, "p2");
        assert_eq!(u.purchased, vec!["p1"]);
        assert_eq!(u.spend_minor, 1000);
        assert_eq!(u.recent[0].product_id, "p1");
        let p = a.product("p1").unwrap();
        assert_eq!(p.buyers, 1);
        // p2 was carted right after p1 was seen (1), then p1 bought right after p2 (a
        // neighbour seen before counts half by default).
        assert_eq!(p.covisit, vec![("p2".to_string(), 1.5)]);
    }

    #[test]
    fn covisitation_is_symmetric_and_session_scoped() {
        let mut a = Aggregator::new(FeatureConfig {
            covisit_distance_decay: 0.0,
            covisit_backward: 1.0,
            ..FeatureConfig::default()
        });
        a.apply(&ev(1, "u", EventType::View, "a", "c", T0));
        a.apply(&ev(2, "u", EventType::View, "b", "c", T0 + 1));
        let mut other_session = ev(3, "u", EventType::View, "z", "c", T0 + 2);
        other_session.session_id = Some("another".into());
        a.apply(&other_session);
        assert_eq!(a.product("a").unwrap().covisit, vec![("b".into(), 1.0)]);
        assert_eq!(a.product("b").unwrap().covisit, vec![("a".into(), 1.0)]);
        assert!(a.product("z").unwrap().covisit.is_empty());
    }

    #[test]
    fn covisitation_weighs_order_and_distance() {
        let mut a = Aggregator::new(FeatureConfig {
            covisit_window: 3,
            covisit_distance_decay: 1.0,
            covisit_backward: 0.25,
            ..FeatureConfig::default()
        });
        for (i, p) in ["a", "b", "c", "d"].iter().enumerate() {
            a.apply(&ev(i, "u", EventType::View, p, "x", T0 + i as i64));
        }
        // The window of 3 still holds a when d arrives: a → b (adjacent) 1, a → c 1/2,
        // a → d 1/3.
        let check = |p: &str, want: &[(&str, f32)]| {
            let got = a.product(p).unwrap().covisit;
            assert_eq!(got.len(), want.len(), "{p}: {got:?}");
            for ((id, w), (wid, ww)) in got.iter().zip(want) {
                assert_eq!(id, wid, "{p}: {got:?}");
                assert!((w - ww).abs() < 1e-6, "{p}: {got:?}");
            }
        };
        check("a", &[("b", 1.0), ("c", 0.5), ("d", 1.0 / 3.0)]);
        // b: followed by c (1) and d (1/2), preceded by a (1 × 0.25).
        check("b", &[("c", 1.0), ("d", 0.5), ("a", 0.25)]);
        // d: only preceded: c 0.25, b 1/2 × 0.25, a 1/3 × 0.25.
        check("d", &[("c", 0.25), ("b", 0.125), ("a", 0.25 / 3.0)]);
        // Sequential rules (backward 0): the last item has no neighbours at all.
        let mut s = Aggregator::new(FeatureConfig {
            covisit_backward: 0.0,
            ..FeatureConfig::default()
        });
        s.apply(&ev(1, "u", EventType::View, "a", "x", T0));
        s.apply(&ev(2, "u", EventType::View, "b", "x", T0 + 1));
        assert_eq!(s.product("a").unwrap().covisit, vec![("b".into(), 1.0)]);
        assert!(s.product("b").unwrap().covisit.is_empty());
    }

    #[test]
    fn drain_returns_changed_views_once() {
        let mut a = Aggregator::new(FeatureConfig::default());
        a.apply(&ev(1, "u", EventType::View, "a", "c", T0));
        let b = a.drain();
        assert_eq!(b.users.len(), 1);
        assert_eq!(b.products.len(), 1);
        assert_eq!(b.trending.items[0].0, "a");
        assert_eq!(b.categories[0].0, "c");
        assert!(a.drain().is_empty());
    }

    fn arb_events() -> impl Strategy<Value = Vec<Event>> {
        proptest::collection::vec(
            (0usize..4, 0usize..4, 0usize..8, 0usize..3, 0i64..10_000_000),
            1..120,
        )
        .prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (u, ty, p, c, dt))| {
                    let ty = [
                        EventType::View,
                        EventType::AddToCart,
                        EventType::Purchase,
                        EventType::Click,
                    ][ty]
                        .clone();
                    ev(
                        i,
                        &format!("u{u}"),
                        ty,
                        &format!("p{p}"),
                        &format!("c{c}"),
                        T0 + dt,
                    )
                })
                .collect()
        })
    }

    /// Events with every field the aggregator reads varied (brands, prices in two
    /// currencies, quantities, profiles, sessions or none, unknown and `recommendation`
    /// types), as wire JSON, some with a field made invalid or escaped.
    fn arb_records() -> impl Strategy<Value = Vec<Vec<u8>>> {
        let one = (
            (0usize..4, 0usize..8, 0usize..8, 0usize..3, 0i64..10_000_000),
            (
                proptest::option::of(0usize..3),
                proptest::option::of((0i64..5000, 0usize..2)),
                proptest::option::of(0u32..4),
                proptest::option::of(0usize..3),
                proptest::option::of(0usize..2),
            ),
            0usize..12,
        );
        proptest::collection::vec(one, 1..80).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(
                    |(i, ((u, ty, p, c, dt), (brand, price, qty, session, profile), edit))| {
                        let ty = [
                            "view",
                            "add_to_cart",
                            "remove_from_cart",
                            "purchase",
                            "click",
                            "search",
                            "wishlist",
                            "recommendation",
                        ][ty];
                        let mut e = Event::new(
                            &format!("e{i}"),
                            Timestamp(T0 + dt),
                            &format!("u{u}"),
                            EventType::parse(ty),
                        )
                        .with_product(&format!("p{p}"), Some(&format!("c{c}")));
                        e.brand = brand.map(|b| format!("b{b}").into());
                        e.price = price.map(|(a, c)| Money::new(a, ["USD", "EUR"][c]));
                        e.quantity = qty;
                        e.session_id = session.map(|s| format!("u{u}-s{s}").into());
                        e.profile = profile.map(|g| recstream_ingest::Profile {
                            age_band: Some("25-34".into()),
                            gender: [Some("F".into()), None][g].clone(),
                            region: None,
                        });
                        if ty == "recommendation" {
                            e.recommendation_id = Some(format!("r{i}").into());
                            e.strategy = Some("personalized".into());
                            e.items = vec![recstream_ingest::ServedItem {
                                product_id: "p1".into(),
                                position: 1,
                                score: 0.5,
                                features: vec![],
                            }];
                        }
                        let mut v: serde_json::Value =
                            serde_json::from_slice(&e.to_json()).unwrap();
                        match edit {
                            0 => v["user_id"] = serde_json::json!(""),
                            1 => v["quantity"] = serde_json::json!(0),
                            // Escaped strings: unescaped into copies, same ids.
                            2 => v["user_id"] = serde_json::json!(format!("u{u}\\u0000")),
                            _ => {}
                        }
                        let mut bytes = v.to_string().into_bytes();
                        if edit == 3 {
                            let s =
                                String::from_utf8(bytes)
                                    .unwrap()
                                    .replacen("\"p", "\"\\u0070", 1);
                            bytes = s.into_bytes();
                        }
                        bytes
                    },
                )
                .collect()
        })
    }

    proptest! {
        /// The hot path (`decode_ref` + `apply_ref`, nothing owned) and the owned path
        /// (`Event`'s own `Deserialize` + `validate` + `apply`) accept and refuse the same
        /// records with the same errors and build byte-for-byte the same state.
        #[test]
        fn borrowed_and_owned_paths_agree(records in arb_records(), drain_at in 0usize..80) {
            let mut owned = Aggregator::new(FeatureConfig::default());
            let mut borrowed = Aggregator::new(FeatureConfig::default());
            for (i, r) in records.iter().enumerate() {
                let o = serde_json::from_slice::<Event>(r)
                    .map_err(|e| recstream_ingest::DecodeError::Malformed(e.to_string()))
                    .and_then(|e| recstream_ingest::decode::validate(&e).map(|()| e));
                let b = recstream_ingest::decode_ref(r);
                prop_assert_eq!(o.as_ref().err(), b.as_ref().err());
                if let (Ok(o), Ok(b)) = (o, b) {
                    prop_assert_eq!(&b.to_event(), &o);
                    owned.apply(&o);
                    borrowed.apply_ref(&b);
                }
                if i == drain_at {
                    prop_assert_eq!(owned.drain(), borrowed.drain());
                }
            }
            prop_assert_eq!(owned.drain(), borrowed.drain());
            prop_assert_eq!(owned.snapshot(), borrowed.snapshot());
            prop_assert_eq!(owned.take_delta(), borrowed.take_delta());
        }

        /// Per-user counts and spend do not depend on the order of the user's events.
        #[test]
        fn counts_are_order_independent(events in arb_events(), seed in any::<u64>()) {
            let mut a = Aggregator::new(FeatureConfig::default());
            a.apply_all(&events);
            let mut shuffled = events.clone();
            let n = shuffled.len();
            for i in 0..n { let j = (seed.wrapping_mul(31).wrapping_add(i as u64 * 7) % n as u64) as usize; shuffled.swap(i, j); }
            let mut b = Aggregator::new(FeatureConfig::default());
            b.apply_all(&shuffled);
            for u in 0..4 {
                let id = format!("u{u}");
                let (x, y) = (a.user(&id), b.user(&id));
                prop_assert_eq!(x.as_ref().map(|x| x.counts), y.as_ref().map(|y| y.counts));
                prop_assert_eq!(x.as_ref().map(|x| x.spend_minor), y.as_ref().map(|y| y.spend_minor));
            }
            for p in 0..8 {
                let id = format!("p{p}");
                prop_assert_eq!(a.product(&id).map(|x| x.counts), b.product(&id).map(|y| y.counts));
            }
        }

        /// Snapshot at any point, restore, replay the rest: identical to one clean run
        /// (the full snapshots of earlier versions still resume).
        #[test]
        fn snapshot_restore_replay_equals_clean_run(events in arb_events(), cut in 0usize..120) {
            let cut = cut.min(events.len());
            let mut clean = Aggregator::new(FeatureConfig::default());
            clean.apply_all(&events);
            let mut first = Aggregator::new(FeatureConfig::default());
            first.apply_all(&events[..cut]);
            let _ = first.drain();
            let mut resumed = Aggregator::restore(FeatureConfig::default(), &first.snapshot()).unwrap();
            resumed.apply_all(&events[cut..]);
            for u in 0..4 {
                let id = format!("u{u}");
                prop_assert_eq!(clean.user(&id), resumed.user(&id));
            }
            for p in 0..8 {
                let id = format!("p{p}");
                prop_assert_eq!(clean.product(&id), resumed.product(&id));
            }
            // Top lists are exact whenever they are drained, so after a drain the whole
            // state is byte for byte the same.
            prop_assert_eq!(clean.drain().trending, resumed.drain().trending);
            prop_assert_eq!(clean.snapshot(), resumed.snapshot());
        }

        /// Checkpoints as the processor takes them (flush, delta into the state store,
        /// eviction), then a crash after the last one: resuming from the state store and
        /// that delta, meeting users again on their next event, and replaying the rest
        /// gives the state of one clean run, byte for byte.
        #[test]
        fn deltas_eviction_and_resume_equal_a_clean_run(
            events in arb_events(),
            cuts in proptest::collection::vec(0usize..120, 1..4),
            idle_ms in prop_oneof![Just(None), (0i64..5_000_000).prop_map(Some)],
            max_hot in prop_oneof![Just(None), (0usize..4).prop_map(Some)],
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(events.len())).collect();
            cuts.sort_unstable();
            let mut clean = Aggregator::new(FeatureConfig::default());
            clean.apply_all(&events);

            let mut rows = Rows::default();
            let mut live = Aggregator::new(FeatureConfig::default());
            let mut at = 0;
            let mut last = None;
            for &cut in &cuts {
                apply_lazily(&mut live, &rows, &events[at..cut]);
                at = cut;
                let _ = live.drain();
                let delta = live.take_delta();
                let delta = StateDelta::decode(&delta.encode()).unwrap();
                rows.put(&delta);
                live.evict(idle_ms, max_hot);
                last = Some(delta);
            }
            let delta = last.expect("at least one cut");
            let mut resumed = Aggregator::resume(
                FeatureConfig::default(),
                &delta.meta,
                rows.products.iter().map(|(k, v)| (k.clone(), v.clone())),
            ).unwrap();
            apply_lazily(&mut resumed, &rows, &events[at..]);
            // Bring every user back, then the two states must be the same.
            for (id, row) in &rows.users {
                resumed.load_user(id, row).unwrap();
            }
            for u in 0..4 {
                let id = format!("u{u}");
                prop_assert_eq!(clean.user(&id), resumed.user(&id));
            }
            prop_assert_eq!(clean.drain().trending, resumed.drain().trending);
            prop_assert_eq!(clean.snapshot(), resumed.snapshot());
        }
    }

    /// The rows a state store holds: the last row of each id over all deltas.
    #[derive(Default)]
    struct Rows {
        users: std::collections::BTreeMap<String, Vec<u8>>,
        products: std::collections::BTreeMap<String, Vec<u8>>,
    }

    impl Rows {
        fn put(&mut self, d: &StateDelta) {
            for r in &d.users {
                self.users.insert(r.id.clone(), r.state.clone());
            }
            for r in &d.products {
                self.products.insert(r.id.clone(), r.state.clone());
            }
        }
    }

    /// Applies events as the processor does: a user not in memory is read back first.
    fn apply_lazily(agg: &mut Aggregator, rows: &Rows, events: &[Event]) {
        for e in events {
            if agg.is_partial()
                && !agg.is_resident(&e.user_id)
                && let Some(row) = rows.users.get(e.user_id.as_str())
            {
                agg.load_user(&e.user_id, row).unwrap();
            }
            agg.apply(e);
        }
    }

    #[test]
    fn a_delta_holds_what_changed_since_the_last_one() {
        let mut a = Aggregator::new(FeatureConfig::default());
        for i in 0..1000 {
            a.apply(&ev(
                i,
                &format!("u{i}"),
                EventType::View,
                &format!("p{}", i % 50),
                "c",
                T0 + i as i64,
            ));
        }
        let first = a.take_delta();
        assert_eq!((first.users.len(), first.products.len()), (1000, 50));
        for i in 0..10 {
            a.apply(&ev(
                2000 + i,
                &format!("u{i}"),
                EventType::View,
                "p7",
                "c",
                T0 + 5000,
            ));
        }
        let second = a.take_delta();
        let users: Vec<&str> = second.users.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            users,
            ["u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8", "u9"]
        );
        // p7 and the products the ten users co-visited with it in their session.
        assert!(second.products.len() <= 11, "{}", second.products.len());
        assert!(second.encode().len() * 20 < first.encode().len());
        assert!(a.take_delta().users.is_empty(), "nothing changed since");
    }

    #[test]
    fn idle_users_leave_memory_and_come_back_unchanged() {
        let mut a = Aggregator::new(FeatureConfig::default());
        let day = 24 * 3600 * 1000;
        a.apply(&ev(1, "old", EventType::AddToCart, "p1", "c", T0));
        a.apply(&ev(2, "new", EventType::View, "p2", "c", T0 + 2 * day));
        let _ = a.drain();
        let delta = a.take_delta();
        let before = a.user("old").unwrap();
        assert_eq!(a.evict(Some(day), None), 1);
        assert!(!a.is_resident("old") && a.is_resident("new") && a.is_partial());
        assert_eq!(a.user("old"), None);
        let row = &delta.users.iter().find(|r| r.id == "old").unwrap().state;
        a.load_user("old", row).unwrap();
        assert_eq!(a.user("old").unwrap(), before);
        assert!(
            a.load_user("x", b"\xff\xff").is_err(),
            "a damaged row is an error"
        );
    }

    #[test]
    fn the_hot_set_is_bounded_and_the_interner_rebuilt() {
        let cfg = FeatureConfig::default();
        let mut a = Aggregator::new(cfg);
        for round in 0..20 {
            for i in 0..1000 {
                let u = format!("u{round}-{i}");
                a.apply(&ev(
                    i,
                    &u,
                    EventType::View,
                    &format!("p{}", i % 10),
                    "c",
                    T0 + round * 1000 + i as i64,
                ));
            }
            let _ = a.drain();
            let _ = a.take_delta();
            a.evict(None, Some(500));
            assert!(a.user_count() <= 500);
        }
        // 20,000 users and as many sessions were interned; at most twice the live set
        // (plus slack) stays.
        assert!(a.ids.len() <= 2 * (2 * 500 + 10 + 4096), "{}", a.ids.len());
        // The most recent users are the ones kept.
        assert!(a.is_resident("u19-999") && !a.is_resident("u0-0"));
    }

    #[test]
    fn damaged_deltas_are_errors_not_panics() {
        assert!(StateDelta::decode(b"").is_err());
        assert!(StateDelta::decode(&[0xff; 64]).is_err());
        let mut a = Aggregator::new(FeatureConfig::default());
        a.apply(&ev(1, "u", EventType::View, "p", "c", T0));
        let mut d = a.take_delta();
        d.version = 9;
        assert!(
            StateDelta::decode(&d.encode()).is_err(),
            "a foreign layout version"
        );
        // Top lists naming products the store does not have are dropped, not trusted.
        let d = a.take_delta();
        let resumed = Aggregator::resume(
            FeatureConfig::default(),
            &d.meta,
            Vec::<(String, Vec<u8>)>::new(),
        )
        .unwrap();
        assert!(resumed.trending.is_empty());
    }
}
