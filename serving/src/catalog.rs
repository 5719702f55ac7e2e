//! The recommendation filter's view of the shop: [`recstream_scoring::Availability`] over
//! commerce's catalog, the same one carts and checkout read.
//!
//! ```text
//!  Recommender ─► CatalogAvailability::lookup(ids) ─► cache (id → state, ≤ ttl old):
//!                                                      one read lock per lookup
//!                                                      └ miss ─► StoreCatalog::product(id)
//!  collector   ─► the same lookup: an unknown product id is refused, never applied
//!  shard processors (Kinesis) ─► KnownProducts::known(ids) ─► known ids (10 min) / unknown (30 s)
//!                                  └ misses ─► StoreCatalog::product, 16 at a time
//! ```
//!
//! States are cached for a short time (`ttl`, 2 s by default), so a product that sells out
//! stops being recommended within that time while a request costs no store read for the
//! products seen recently. A request asks about ~100 products: the cache takes one read
//! lock for all of them and hashes each id once (FxHash), instead of one concurrent-map
//! read (and its access-log entry) per id.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use recstream_commerce::{Catalog, StoreCatalog};
use recstream_scoring::{Availability, ProductState};
use rustc_hash::FxHashMap;

/// Default time a product's state is trusted.
pub const DEFAULT_TTL: Duration = Duration::from_secs(2);
/// Default number of products whose state is cached.
pub const DEFAULT_CAPACITY: usize = 200_000;

/// [`Availability`] over commerce's catalog, with a bounded cache of product states
/// (per-entry time to live; at most `capacity` entries: when an insert would go over, the
/// expired entries go, and everything if that is not enough).
pub struct CatalogAvailability {
    catalog: Arc<StoreCatalog>,
    ttl: Duration,
    capacity: usize,
    /// Product id → (state, when it stops being trusted).
    cache: RwLock<FxHashMap<Box<str>, (ProductState, Instant)>>,
}

impl CatalogAvailability {
    /// With the default time to live ([`DEFAULT_TTL`]) and capacity ([`DEFAULT_CAPACITY`]).
    pub fn new(catalog: Arc<StoreCatalog>) -> CatalogAvailability {
        CatalogAvailability::with(catalog, DEFAULT_TTL, DEFAULT_CAPACITY)
    }

    /// A product's state is trusted for `ttl`; at most `capacity` states are cached.
    pub fn with(catalog: Arc<StoreCatalog>, ttl: Duration, capacity: usize) -> CatalogAvailability {
        CatalogAvailability {
            catalog,
            ttl,
            capacity: capacity.max(1),
            cache: RwLock::new(FxHashMap::default()),
        }
    }

    /// States cached now (expired ones included until they are replaced or swept).
    pub fn cached(&self) -> usize {
        self.cache.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[async_trait]
impl Availability for CatalogAvailability {
    async fn lookup(&self, ids: &[&str]) -> Result<Vec<ProductState>, String> {
        let now = Instant::now();
        let mut out = vec![ProductState::Unknown; ids.len()];
        let mut misses = Vec::new();
        {
            let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
            for (i, id) in ids.iter().enumerate() {
                match cache.get(*id) {
                    Some(&(s, until)) if until > now => out[i] = s,
                    _ => misses.push(i),
                }
            }
        }
        if misses.is_empty() {
            return Ok(out);
        }
        for &i in &misses {
            out[i] = match self.catalog.product(ids[i]).await {
                Ok(Some(v)) if v.buyable() => ProductState::Sellable,
                Ok(Some(_)) => ProductState::Unavailable,
                Ok(None) => ProductState::Unknown,
                Err(e) => return Err(format!("catalog: {e}")),
            };
        }
        let until = Instant::now() + self.ttl;
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() + misses.len() > self.capacity {
            let now = Instant::now();
            cache.retain(|_, (_, u)| *u > now);
            if cache.len() + misses.len() > self.capacity {
                cache.clear();
            }
        }
        for &i in misses.iter().take(self.capacity) {
            cache.insert(ids[i].into(), (out[i], until));
        }
        Ok(out)
    }
}

/// How long a product the catalog holds is trusted to exist (products are deactivated,
/// never deleted).
pub const KNOWN_TTL: Duration = Duration::from_secs(600);
/// How long an id the catalog lacks is remembered as unknown (a new product's events are
/// refused for at most this long after it is added, should they race ahead of it).
pub const UNKNOWN_TTL: Duration = Duration::from_secs(30);
/// Catalog reads in flight per lookup.
const CONCURRENT_READS: usize = 16;

/// Which product ids the catalog holds, for the shard processors' check of stream
/// records: existence only (sellable or not), cached far longer than availability, with
/// the misses of a batch read concurrently.
pub struct KnownProducts {
    catalog: Arc<StoreCatalog>,
    known: moka::sync::Cache<String, ()>,
    unknown: moka::sync::Cache<String, ()>,
}

impl KnownProducts {
    /// Over `catalog`, remembering up to `capacity` ids of each kind.
    pub fn new(catalog: Arc<StoreCatalog>, capacity: u64) -> KnownProducts {
        KnownProducts {
            catalog,
            known: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(KNOWN_TTL)
                .build(),
            unknown: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(UNKNOWN_TTL)
                .build(),
        }
    }

    /// Remembers that the catalog now holds `id` (just written).
    pub fn remember(&self, id: &str) {
        self.unknown.invalidate(id);
        self.known.insert(id.to_string(), ());
    }

    /// The catalog itself.
    pub fn catalog(&self) -> &StoreCatalog {
        &self.catalog
    }

    /// For each of `ids`, in order, whether the catalog holds it; `Err` when it cannot
    /// be read.
    pub async fn known(&self, ids: &[&str]) -> Result<Vec<bool>, String> {
        use futures::StreamExt;
        let mut out = vec![false; ids.len()];
        let mut misses = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            if self.known.contains_key(*id) {
                out[i] = true;
            } else if !self.unknown.contains_key(*id) {
                misses.push(i);
            }
        }
        let mut reads = futures::stream::iter(misses)
            .map(|i| async move { (i, self.catalog.product(ids[i]).await) })
            .buffer_unordered(CONCURRENT_READS);
        while let Some((i, read)) = reads.next().await {
            let held = read.map_err(|e| format!("catalog: {e}"))?.is_some();
            out[i] = held;
            let cache = if held { &self.known } else { &self.unknown };
            cache.insert(ids[i].to_string(), ());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn states_are_cached_for_the_ttl_and_the_cache_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let shop = Arc::new(StoreCatalog::new(Arc::new(
            recstream_commerce::EmbeddedStore::open(dir.path().join("c.redb")).unwrap(),
        )));
        let seed: Vec<recstream_commerce::catalog::SeedProduct> = (0..10)
            .map(|i| recstream_commerce::catalog::SeedProduct {
                id: format!("p{i}"),
                name: format!("p{i}"),
                category: None,
                price: recstream_ingest::Money::new(100, "USD"),
                stock: 1,
                active: true,
            })
            .collect();
        shop.seed(&seed).await.unwrap();
        let av = CatalogAvailability::with(shop.clone(), Duration::from_millis(40), 4);
        let got = av.lookup(&["p0", "p1", "nope"]).await.unwrap();
        assert_eq!(
            got,
            [
                ProductState::Sellable,
                ProductState::Sellable,
                ProductState::Unknown
            ]
        );
        assert_eq!(av.cached(), 3);
        shop.set_on_hand("p0", 0).await.unwrap();
        // Within the ttl: the cached state.
        assert_eq!(av.lookup(&["p0"]).await.unwrap(), [ProductState::Sellable]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            av.lookup(&["p0"]).await.unwrap(),
            [ProductState::Unavailable]
        );
        // Never more than `capacity` states.
        let ids: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        assert_eq!(av.lookup(&ids).await.unwrap().len(), 10);
        assert!(av.cached() <= 4, "{}", av.cached());
    }
}
