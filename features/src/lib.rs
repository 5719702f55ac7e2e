//! recstream-features: per-user and per-product features, kept live from the stream.
//!
//! ```text
//!  Event ─► Aggregator (one per shard; interned ids, event-time decay, co-visitation)
//!               │ drain() every flush interval (≈1 s; less in embedded mode)
//!               ▼
//!          FlushBatch (absolute values) ─► FeatureStore ─┬─► EmbeddedStore (redb)
//!                                                        └─► DynamoDB
//!          take_delta() at each checkpoint ─► object store + StateStore (changed rows only)
//!          resume() + load_user() + replay after a crash; evict() bounds the users in memory
//! ```

pub mod aggregate;
pub mod config;
pub mod decay;
pub mod error;
pub mod metrics;
pub mod store;
pub mod view;

pub use aggregate::{Aggregator, FlushBatch, ShardMeta, StateDelta, StateRow};
pub use config::FeatureConfig;
pub use decay::Decayed;
pub use error::StoreError;
pub use store::{EmbeddedStore, FeatureStore, StateStore};
pub use view::{EventCounts, ProductFeatures, TopList, UserFeatures};
