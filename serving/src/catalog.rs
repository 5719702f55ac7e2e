//! The recommendation filter's view of the shop: [`recstream_scoring::Availability`] over
//! commerce's catalog, the same one carts and checkout read.
//!
//! ```text
//!  Recommender ─► CatalogAvailability::lookup(ids) ─► LRU (id → state, ≤ ttl old)
//!                                                      └ miss ─► StoreCatalog::product(id)
//!  collector   ─► the same lookup: an unknown product id is refused, never applied
//! ```
//!
//! States are cached for a short time (`ttl`, 2 s by default), so a product that sells out
//! stops being recommended within that time while a request costs no store read for the
//! products seen recently.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use recstream_commerce::{Catalog, StoreCatalog};
use recstream_scoring::{Availability, ProductState};

/// Default time a product's state is trusted.
pub const DEFAULT_TTL: Duration = Duration::from_secs(2);
/// Default number of products whose state is cached.
pub const DEFAULT_CAPACITY: usize = 200_000;

pub struct CatalogAvailability {
    catalog: Arc<StoreCatalog>,
    cache: Mutex<lru::LruCache<String, (ProductState, Instant)>>,
    ttl: Duration,
}

impl CatalogAvailability {
    pub fn new(catalog: Arc<StoreCatalog>) -> CatalogAvailability {
        CatalogAvailability::with(catalog, DEFAULT_TTL, DEFAULT_CAPACITY)
    }

    pub fn with(catalog: Arc<StoreCatalog>, ttl: Duration, capacity: usize) -> CatalogAvailability {
        CatalogAvailability {
            catalog,
            cache: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(capacity.max(1)).expect("positive"),
            )),
            ttl,
        }
    }
}

#[async_trait]
impl Availability for CatalogAvailability {
    async fn lookup(&self, ids: &[&str]) -> Result<Vec<ProductState>, String> {
        let now = Instant::now();
        let mut out = vec![ProductState::Unknown; ids.len()];
        let mut misses = Vec::new();
        {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            for (i, id) in ids.iter().enumerate() {
                match cache.get(*id) {
                    Some((s, at)) if now.duration_since(*at) < self.ttl => out[i] = *s,
                    _ => misses.push(i),
                }
            }
        }
        if misses.is_empty() {
            return Ok(out);
        }
        let mut fresh = Vec::with_capacity(misses.len());
        for i in misses {
            let state = match self.catalog.product(ids[i]).await {
                Ok(Some(v)) if v.buyable() => ProductState::Sellable,
                Ok(Some(_)) => ProductState::Unavailable,
                Ok(None) => ProductState::Unknown,
                Err(e) => return Err(format!("catalog: {e}")),
            };
            out[i] = state;
            fresh.push((ids[i].to_string(), state));
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        for (id, s) in fresh {
            cache.put(id, (s, now));
        }
        Ok(out)
    }
}
