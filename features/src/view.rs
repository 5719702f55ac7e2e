//! The materialised feature views: what the feature store holds and what scoring reads.
//!
//! These are plain serde structs with string ids, the contract between the aggregation
//! (which works on interned ids) and every reader (scoring, segments, the DynamoDB items).
//! Product views are written per shard (each shard owns its partial) and merged on read.

use serde::{Deserialize, Serialize};

use crate::decay::Decayed;

/// Event counts by type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCounts {
    /// Product views.
    pub view: u64,
    /// Additions to the cart.
    pub add_to_cart: u64,
    /// Removals from the cart.
    pub remove_from_cart: u64,
    /// Purchases.
    pub purchase: u64,
    /// Searches.
    pub search: u64,
    /// Clicks on recommendations or results.
    pub click: u64,
    /// Events of any other type.
    pub other: u64,
}

impl EventCounts {
    /// Events of every type together.
    pub fn total(&self) -> u64 {
        self.view
            + self.add_to_cart
            + self.remove_from_cart
            + self.purchase
            + self.search
            + self.click
            + self.other
    }

    /// Adds `o`'s counts to these (merging shards' partials).
    pub fn add(&mut self, o: &EventCounts) {
        self.view += o.view;
        self.add_to_cart += o.add_to_cart;
        self.remove_from_cart += o.remove_from_cart;
        self.purchase += o.purchase;
        self.search += o.search;
        self.click += o.click;
        self.other += o.other;
    }
}

/// An item the user touched recently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecentItem {
    /// The product touched.
    pub product_id: String,
    /// When, epoch ms (event time).
    pub ts: i64,
    /// The event type (`view`, `add_to_cart`, `purchase`, …).
    pub action: String,
}

/// A scored id with a time-decayed weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Weighted {
    /// A product id or a category, depending on the list.
    pub id: String,
    /// The decayed weight.
    pub weight: Decayed,
}

/// A product in the user's cart, as the cart events left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartLine {
    /// The product in the cart.
    pub product_id: String,
    /// Units of it in the cart.
    pub quantity: u32,
}

/// Everything recstream knows about one user.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserFeatures {
    /// The user id of the events.
    pub user_id: String,
    /// Event counts over the user's whole history.
    pub counts: EventCounts,
    /// Most recent first, distinct products, bounded.
    pub recent: Vec<RecentItem>,
    /// Decayed engagement per product (view 1, cart 3, purchase 5), strongest first.
    pub items: Vec<Weighted>,
    /// Decayed engagement per category, strongest first.
    pub categories: Vec<Weighted>,
    /// The cart as the user's add/remove events left it.
    pub cart: Vec<CartLine>,
    /// Products the user bought, most recent first, bounded.
    pub purchased: Vec<String>,
    /// Demographic segment key from the last profile seen (`age|gender|region`).
    pub segment: Option<String>,
    /// Total purchase spend in minor units (of the first currency seen).
    pub spend_minor: i64,
    /// Currency of `spend_minor` (ISO 4217), once a priced purchase was seen.
    pub currency: Option<String>,
    /// Event time of the user's first event, epoch ms.
    pub first_ts: i64,
    /// Event time of the user's latest event, epoch ms.
    pub last_ts: i64,
}

/// Everything recstream knows about one product (one shard's partial, or merged).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProductFeatures {
    /// The product id of the events.
    pub product_id: String,
    /// Event counts over the product's whole history.
    pub counts: EventCounts,
    /// Decayed popularity (trending) with the trending half-life.
    pub popularity: Decayed,
    /// Category path from the latest event that carried one.
    pub category: Option<String>,
    /// Brand from the latest event that carried one.
    pub brand: Option<String>,
    /// Unit price in minor units from the latest event that carried one.
    pub price_minor: Option<i64>,
    /// Currency of `price_minor` (ISO 4217).
    pub currency: Option<String>,
    /// Co-visited products (same session, within a short window), strongest first.
    pub covisit: Vec<(String, f32)>,
    /// Distinct users who bought it.
    pub buyers: u64,
    /// Event time of the latest event about the product, epoch ms.
    pub last_ts: i64,
}

/// A ranked list of products (trending overall, or top of a category).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TopList {
    /// The event time the weights are decayed to.
    pub at: i64,
    /// Product ids with their weights decayed to `at`, strongest first.
    pub items: Vec<(String, f64)>,
}

impl ProductFeatures {
    /// Folds another shard's partial for the same product into this one.
    pub fn merge(&mut self, other: &ProductFeatures, half_life_ms: f64, covisit_cap: usize) {
        self.counts.add(&other.counts);
        self.popularity = self.popularity.merged(other.popularity, half_life_ms);
        if other.last_ts >= self.last_ts {
            self.category = other.category.clone().or(self.category.take());
            self.brand = other.brand.clone().or(self.brand.take());
            self.price_minor = other.price_minor.or(self.price_minor);
            self.currency = other.currency.clone().or(self.currency.take());
        }
        self.buyers += other.buyers;
        self.last_ts = self.last_ts.max(other.last_ts);
        if !other.covisit.is_empty() {
            let mut all: rustc_hash::FxHashMap<String, f32> = self.covisit.drain(..).collect();
            for (id, w) in &other.covisit {
                *all.entry(id.clone()).or_default() += w;
            }
            self.covisit = top_n(all.into_iter().collect(), covisit_cap);
        }
    }
}

impl TopList {
    /// Sums ranked lists from several shards (decayed to a common time) into one.
    pub fn merge_all<'a>(
        lists: impl IntoIterator<Item = &'a TopList>,
        half_life_ms: f64,
        cap: usize,
    ) -> TopList {
        let lists: Vec<&TopList> = lists.into_iter().collect();
        let at = lists.iter().map(|l| l.at).max().unwrap_or(0);
        let mut all: rustc_hash::FxHashMap<&str, f64> = Default::default();
        for l in &lists {
            let f = (-((at - l.at) as f64) / half_life_ms).exp2();
            for (id, w) in &l.items {
                *all.entry(id.as_str()).or_default() += w * f;
            }
        }
        let mut items: Vec<(String, f64)> =
            all.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        sort_desc(&mut items);
        items.truncate(cap);
        TopList { at, items }
    }
}

/// The weight a best-first list is normalised by: its first (largest) weight, 1 for an
/// empty list, never zero.
pub fn top_weight<S>(items: &[(S, f64)]) -> f64 {
    items
        .first()
        .map(|(_, w)| *w)
        .unwrap_or(1.0)
        .max(f64::MIN_POSITIVE)
}

/// Sorts by weight descending, ties broken by id, so results never depend on hash order.
pub fn sort_desc<W: PartialOrd + Copy>(items: &mut [(String, W)]) {
    items.sort_unstable_by(|a, b| {
        b.1.partial_cmp(&a.1)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| a.0.cmp(&b.0))
    });
}

fn top_n(mut items: Vec<(String, f32)>, n: usize) -> Vec<(String, f32)> {
    sort_desc(&mut items);
    items.truncate(n);
    items
}
