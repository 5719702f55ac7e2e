//! The one-catalog filter: recommendations only name products the shop can sell.
//!
//! ```text
//!  candidates ─► Availability::lookup(ids) ─► Sellable ─► ranked, served
//!                     (the commerce catalog,   Unavailable (inactive, sold out) ─► dropped
//!                      wired in by the binary)  Unknown (not in the catalog)     ─► dropped
//! ```
//!
//! The trait keeps this crate free of a commerce dependency: the binary (or serving)
//! wires an implementation backed by the same catalog the cart and checkout use. Without
//! one, nothing is filtered (a deployment with no shop).

use async_trait::async_trait;

/// What the catalog says about one product id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProductState {
    /// Not in the catalog at all.
    Unknown,
    /// In the catalog, but inactive or out of stock.
    Unavailable,
    /// Active with stock available: can be added to a cart.
    Sellable,
}

/// Whether products can be sold now: the recommendation filter's view of the shop's
/// catalog (implemented over commerce's catalog by serving; scoring has no commerce
/// dependency).
#[async_trait]
pub trait Availability: Send + Sync + 'static {
    /// The state of each of `ids`, in order. An error degrades the answer (the response
    /// lists `catalog` in `degraded`); it never fails it.
    async fn lookup(&self, ids: &[&str]) -> Result<Vec<ProductState>, String>;
}

/// The ids of `ids` that are sellable, in order (all of them when `availability` fails,
/// with `catalog` pushed to `degraded`).
pub(crate) async fn sellable(
    availability: &dyn Availability,
    ids: &[&str],
    degraded: &mut Vec<&'static str>,
) -> Vec<bool> {
    match availability.lookup(ids).await {
        Ok(states) if states.len() == ids.len() => states
            .into_iter()
            .map(|s| s == ProductState::Sellable)
            .collect(),
        Ok(_) | Err(_) => {
            if !degraded.contains(&"catalog") {
                degraded.push("catalog");
            }
            vec![true; ids.len()]
        }
    }
}
