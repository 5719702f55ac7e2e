//! The recommendation filter's view of the shop: [`recstream_scoring::Availability`] over
//! commerce's catalog, the same one carts and checkout read.
//!
//! ```text
//!  Recommender ─► CatalogAvailability::lookup(ids) ─► moka cache (id → state, ≤ ttl old)
//!                                                      └ miss ─► StoreCatalog::product(id)
//!  collector   ─► the same lookup: an unknown product id is refused, never applied
//! ```
//!
//! States are cached for a short time (`ttl`, 2 s by default), so a product that sells out
//! stops being recommended within that time while a request costs no store read for the
//! products seen recently.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use recstream_commerce::{Catalog, StoreCatalog};
use recstream_scoring::{Availability, ProductState};

/// Default time a product's state is trusted.
pub const DEFAULT_TTL: Duration = Duration::from_secs(2);
/// Default number of products whose state is cached.
pub const DEFAULT_CAPACITY: usize = 200_000;

/// [`Availability`] over commerce's catalog, with a bounded cache of product states
/// (moka: lock-free reads on the serving path, per-entry time to live).
pub struct CatalogAvailability {
    catalog: Arc<StoreCatalog>,
    cache: moka::sync::Cache<String, ProductState>,
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
            cache: moka::sync::Cache::builder()
                .max_capacity(capacity.max(1) as u64)
                .time_to_live(ttl)
                .build(),
        }
    }
}

#[async_trait]
impl Availability for CatalogAvailability {
    async fn lookup(&self, ids: &[&str]) -> Result<Vec<ProductState>, String> {
        let mut out = vec![ProductState::Unknown; ids.len()];
        let mut misses = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            match self.cache.get(*id) {
                Some(s) => out[i] = s,
                None => misses.push(i),
            }
        }
        if misses.is_empty() {
            return Ok(out);
        }
        for i in misses {
            let state = match self.catalog.product(ids[i]).await {
                Ok(Some(v)) if v.buyable() => ProductState::Sellable,
                Ok(Some(_)) => ProductState::Unavailable,
                Ok(None) => ProductState::Unknown,
                Err(e) => return Err(format!("catalog: {e}")),
            };
            out[i] = state;
            self.cache.insert(ids[i].to_string(), state);
        }
        Ok(out)
    }
}
