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
//! and a [`snapshot`](Aggregator::snapshot) restored and replayed — depends only on the
//! events and their order within the shard.

use std::collections::VecDeque;

use lasso::{Rodeo, Spur};
use recstream_ingest::{Event, EventType};
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
        EventType::Recommendation | EventType::Other(_) => 6,
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
    ids: Rodeo<Spur, FxBuildHasher>,
    users: FxHashMap<Spur, UserState<Spur>>,
    products: FxHashMap<Spur, ProductState<Spur>>,
    trending: Vec<Spur>,
    category_top: FxHashMap<Spur, Vec<Spur>>,
    dirty_users: FxHashSet<Spur>,
    dirty_products: FxHashSet<Spur>,
    /// Categories a product left since the last drain (their top lists must drop it).
    left_categories: FxHashSet<Spur>,
    watermark: i64,
    applied: u64,
}

/// A product in a snapshot: id, state, co-visitation list sorted by id.
type SnapshotProduct = (String, ProductState<String>, Vec<(String, f32)>);

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
        Aggregator {
            user_h: cfg.user_half_life_ms(),
            trend_h: cfg.trending_half_life_ms(),
            cfg,
            ids: Rodeo::with_hasher(FxBuildHasher),
            users: FxHashMap::default(),
            products: FxHashMap::default(),
            trending: Vec::new(),
            category_top: FxHashMap::default(),
            dirty_users: FxHashSet::default(),
            dirty_products: FxHashSet::default(),
            left_categories: FxHashSet::default(),
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
    /// server showed, not something the shopper did) changes nothing here.
    pub fn apply(&mut self, e: &Event) {
        if e.event_type == EventType::Recommendation {
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
                    let cur = ids.get_or_intern(price.currency.as_str());
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
        let session = e.session_id.as_deref().map(|s| ids.get_or_intern(s));
        let new_session = match session {
            Some(s) => user.session != Some(s),
            None => gap > cfg.session_gap_secs * 1000,
        };
        if new_session {
            user.session = session;
            user.session_items.clear();
        }
        let mut partners: [Option<Spur>; 64] = [None; 64];
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
                product.brand = Some(ids.get_or_intern(b));
            }
            if let Some(price) = &e.price {
                product.price_minor = Some(price.amount);
                product.currency = Some(ids.get_or_intern(price.currency.as_str()));
            }
            product.last_ts = t;
        }
        if first_purchase {
            product.buyers += 1;
        }
        self.dirty_products.insert(pid);
        for a in partners[..n].iter().flatten() {
            *self
                .products
                .get_mut(&pid)
                .expect("inserted above")
                .covisit
                .entry(*a)
                .or_default() += 1.0;
            let other = self.products.entry(*a).or_default();
            *other.covisit.entry(pid).or_default() += 1.0;
            self.dirty_products.insert(*a);
        }
        for p in std::iter::once(pid).chain(partners[..n].iter().flatten().copied()) {
            let prod = self.products.get_mut(&p).expect("present");
            if prod.covisit.len() > 2 * cfg.covisit_neighbours {
                prune_covisit(&mut prod.covisit, cfg.covisit_neighbours, ids);
            }
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

    /// Serialises the whole state (ids as strings) for a checkpoint.
    pub fn snapshot(&self) -> Vec<u8> {
        let s = |k: &Spur| self.name(k);
        let so = |k: &Option<Spur>| k.map(|k| self.name(&k));
        let mut users: Vec<(String, UserState<String>)> = self
            .users
            .iter()
            .map(|(k, u)| {
                (
                    s(k),
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
                    },
                )
            })
            .collect();
        users.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut products: Vec<SnapshotProduct> = self
            .products
            .iter()
            .map(|(k, p)| {
                let mut covisit: Vec<(String, f32)> =
                    p.covisit.iter().map(|(k, w)| (s(k), *w)).collect();
                covisit.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                (
                    s(k),
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
                    },
                    covisit,
                )
            })
            .collect();
        products.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut category_top: Vec<(String, Vec<String>)> = self
            .category_top
            .iter()
            .map(|(c, l)| (s(c), l.iter().map(s).collect()))
            .collect();
        category_top.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let snap = Snapshot {
            version: 1,
            watermark: self.watermark,
            applied: self.applied,
            users,
            products,
            trending: self.trending.iter().map(s).collect(),
            category_top,
        };
        postcard::to_stdvec(&snap).expect("state always serialises")
    }

    /// Rebuilds the state from a [`snapshot`](Self::snapshot).
    pub fn restore(cfg: FeatureConfig, bytes: &[u8]) -> Result<Aggregator, crate::StoreError> {
        let snap: Snapshot =
            postcard::from_bytes(bytes).map_err(|e| crate::StoreError::Corrupt {
                what: "aggregation snapshot",
                message: e.to_string(),
            })?;
        let mut agg = Aggregator::new(cfg);
        let ids = &mut agg.ids;
        let mut k = |s: &str| ids.get_or_intern(s);
        for (id, u) in &snap.users {
            let key = k(id);
            let mut ko = |s: &Option<String>| s.as_deref().map(&mut k);
            let state = UserState {
                counts: u.counts,
                recent: VecDeque::new(),
                items: Vec::new(),
                categories: Vec::new(),
                cart: Vec::new(),
                purchased: VecDeque::new(),
                session: ko(&u.session),
                session_items: VecDeque::new(),
                segment: ko(&u.segment),
                spend_minor: u.spend_minor,
                currency: ko(&u.currency),
                first_ts: u.first_ts,
                last_ts: u.last_ts,
            };
            let state = UserState {
                recent: u.recent.iter().map(|(p, t, kk)| (k(p), *t, *kk)).collect(),
                items: u.items.iter().map(|(p, d)| (k(p), *d)).collect(),
                categories: u.categories.iter().map(|(p, d)| (k(p), *d)).collect(),
                cart: u.cart.iter().map(|(p, q)| (k(p), *q)).collect(),
                purchased: u.purchased.iter().map(|p| k(p)).collect(),
                session_items: u.session_items.iter().map(|p| k(p)).collect(),
                ..state
            };
            agg.users.insert(key, state);
        }
        for (id, p, covisit) in &snap.products {
            let key = k(id);
            let mut ko = |s: &Option<String>| s.as_deref().map(&mut k);
            let mut state = ProductState {
                counts: p.counts,
                popularity: p.popularity,
                category: ko(&p.category),
                brand: ko(&p.brand),
                price_minor: p.price_minor,
                currency: ko(&p.currency),
                covisit: FxHashMap::default(),
                buyers: p.buyers,
                last_ts: p.last_ts,
            };
            state.covisit = covisit.iter().map(|(n, w)| (k(n), *w)).collect();
            agg.products.insert(key, state);
        }
        agg.trending = snap.trending.iter().map(|p| k(p)).collect();
        for (c, l) in &snap.category_top {
            let c = k(c);
            let l = l.iter().map(|p| k(p)).collect();
            agg.category_top.insert(c, l);
        }
        agg.watermark = snap.watermark;
        agg.applied = snap.applied;
        Ok(agg)
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
        // p2 was carted after p1 was seen, then p1 bought after p2: two co-visits.
        assert_eq!(p.covisit, vec![("p2".to_string(), 2.0)]);
    }

    #[test]
    fn covisitation_is_symmetric_and_session_scoped() {
        let mut a = Aggregator::new(FeatureConfig::default());
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

    proptest! {
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

        /// Snapshot at any point, restore, replay the rest: identical to one clean run.
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
    }
}
