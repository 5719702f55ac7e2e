//! The shop's catalog as the shard processor sees it: which product ids exist, and where
//! the stream's `product` events (the back office's catalog entries) are written.
//!
//! ```text
//!  batch ─► decode + time bounds ─► `product` events, in order ─► ProductCatalog::write
//!                                 ─► product ids of the other events (unique) ─► ProductCatalog::known
//!                                     └ not in the catalog ─► dead letter
//!                                       (`product_id`: not in the catalog), never applied
//! ```
//!
//! Producers that write to the stream directly (the KPL, Firehose, a back office) do not
//! pass the collector's catalog check; with a catalog configured, the processor applies
//! the same rule, so a made-up id never becomes anybody's `trending`. The implementation
//! over commerce's catalog lives with the binary (it needs the commerce store); this
//! crate only names the seam.

use async_trait::async_trait;
use recstream_ingest::Event;

/// Which product ids the shop's catalog holds (active or not: a deactivated product's
/// events are real; the recommendation filter keeps it out of the lists).
#[async_trait]
pub trait ProductCatalog: Send + Sync + 'static {
    /// For each of `ids`, in order, whether the catalog holds it. `Err` when the catalog
    /// cannot be read: the batch then fails before anything of it is applied, and is
    /// retried (records are never dead-lettered because a store was unavailable).
    async fn known(&self, ids: &[&str]) -> Result<Vec<bool>, String>;

    /// Creates or replaces the catalog entries of `products` (validated `product` events,
    /// in stream order: the last one of an id wins). Absolute values, so writing a batch
    /// again after a crash leaves the same catalog. Per product, in order: `None` when
    /// written, `Some(problem)` when the catalog refuses the entry (it is dead-lettered
    /// with that reason). `Err` when the catalog cannot be written: the batch fails before
    /// anything of it is applied.
    async fn write(&self, products: &[&Event]) -> Result<Vec<Option<String>>, String>;
}
