//! The embedded feature store: one redb database file on local disk (durable, ACID,
//! crash-safe), with catalog-sized read caches so scoring never decodes on the hot path.
//!
//! Tables:
//!
//! | table | key | value |
//! |---|---|---|
//! | `users` | user id | postcard [`UserFeatures`] |
//! | `products` | (product id, shard) | postcard [`ProductFeatures`] (one shard's partial) |
//! | `top_lists` | (`trending` or `category:<c>`, shard) | postcard [`TopList`] |
//! | `checkpoints` | shard | JSON checkpoint, owned by [`EmbeddedCheckpoints`] (see [`EmbeddedStore::checkpoints`]) |
//! | `user_state` | (shard, user id) | a user's aggregation state row ([`StateStore`]) |
//! | `product_state` | (shard, product id) | a product's aggregation state row (this shard's partial) |
//! | `state_applied` | shard | the key of the last checkpoint delta whose rows are all written |
//!
//! Products and top lists are loaded into memory at open and kept merged across shards.
//! Users are read from the database and kept, decoded, in an LRU of the
//! [`USER_CACHE_CAPACITY`] most recently asked; a write replaces the cached copy of every
//! user it changes, so a cached user is never older than the database.

use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use recstream_ingest::{EmbeddedCheckpoints, IngestError, ShardId};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use rustc_hash::FxHashMap;
use std::sync::RwLock;

use super::{FeatureStore, StateStore};
use crate::aggregate::{FlushBatch, StateDelta};
use crate::config::FeatureConfig;
use crate::error::StoreError;
use crate::view::{ProductFeatures, TopList, UserFeatures};

const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const PRODUCTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("products");
const TOP_LISTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("top_lists");
const USER_STATE: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("user_state");
const PRODUCT_STATE: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("product_state");
const STATE_APPLIED: TableDefinition<&str, &str> = TableDefinition::new("state_applied");
const TRENDING: &str = "trending";

/// Users kept decoded in memory (a few KB each at the default feature bounds).
pub const USER_CACHE_CAPACITY: usize = 20_000;

/// Decoded users, most recently read first. `generation` counts writes: a reader that
/// missed only keeps what it decoded if no write happened meanwhile (else the value it
/// read may predate that write).
struct UserCache {
    lru: lru::LruCache<String, Arc<UserFeatures>>,
    generation: u64,
}

#[derive(Default)]
struct Cache {
    /// product → [(shard, partial)]
    partials: FxHashMap<String, Vec<(String, ProductFeatures)>>,
    merged: FxHashMap<String, Arc<ProductFeatures>>,
    /// list name → [(shard, list)]
    list_partials: FxHashMap<String, Vec<(String, TopList)>>,
    lists: FxHashMap<String, Arc<TopList>>,
}

/// The feature store of the embedded mode: one redb database file holding users,
/// products' per-shard partials and top lists, with an in-process read cache. It also
/// holds the embedded checkpoints ([`EmbeddedStore::checkpoints`]).
pub struct EmbeddedStore {
    db: Arc<Database>,
    cfg: FeatureConfig,
    cache: RwLock<Cache>,
    users: Mutex<UserCache>,
}

fn corrupt(what: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what,
        message: e.to_string(),
    }
}

fn list_key(category: &str) -> String {
    format!("category:{category}")
}

impl Cache {
    fn put_product(&mut self, shard: &str, p: ProductFeatures, cfg: &FeatureConfig) {
        let parts = self.partials.entry(p.product_id.clone()).or_default();
        match parts.iter_mut().find(|(s, _)| s == shard) {
            Some((_, old)) => *old = p,
            None => parts.push((shard.to_string(), p)),
        }
        let mut merged = parts[0].1.clone();
        for (_, other) in &parts[1..] {
            merged.merge(other, cfg.trending_half_life_ms(), cfg.covisit_neighbours);
        }
        self.merged
            .insert(merged.product_id.clone(), Arc::new(merged));
    }

    fn put_list(&mut self, name: &str, shard: &str, l: TopList, cfg: &FeatureConfig) {
        let parts = self.list_partials.entry(name.to_string()).or_default();
        match parts.iter_mut().find(|(s, _)| s == shard) {
            Some((_, old)) => *old = l,
            None => parts.push((shard.to_string(), l)),
        }
        let merged = if parts.len() == 1 {
            parts[0].1.clone()
        } else {
            TopList::merge_all(
                parts.iter().map(|(_, l)| l),
                cfg.trending_half_life_ms(),
                cfg.top_list_len,
            )
        };
        self.lists.insert(name.to_string(), Arc::new(merged));
    }
}

impl EmbeddedStore {
    /// The shard checkpoints, kept in this store's database file (redb allows one
    /// handle per file, so the checkpoint store shares it).
    pub fn checkpoints(&self) -> Result<EmbeddedCheckpoints, IngestError> {
        EmbeddedCheckpoints::with_database(self.db.clone())
    }

    /// Opens (or creates) the database at `path` and warms the catalog caches.
    pub fn open(path: impl AsRef<Path>, cfg: FeatureConfig) -> Result<EmbeddedStore, StoreError> {
        let path = path.as_ref();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Embedded(format!("{}: {e}", dir.display())))?;
        }
        let db = Database::create(path)?;
        {
            let w = db.begin_write()?;
            w.open_table(USERS)?;
            w.open_table(PRODUCTS)?;
            w.open_table(TOP_LISTS)?;
            w.open_table(USER_STATE)?;
            w.open_table(PRODUCT_STATE)?;
            w.open_table(STATE_APPLIED)?;
            w.commit()?;
        }
        let mut cache = Cache::default();
        {
            let r = db.begin_read()?;
            for row in r.open_table(PRODUCTS)?.iter()? {
                let (k, v) = row?;
                let p: ProductFeatures =
                    postcard::from_bytes(v.value()).map_err(|e| corrupt("product row", e))?;
                cache.put_product(k.value().1, p, &cfg);
            }
            for row in r.open_table(TOP_LISTS)?.iter()? {
                let (k, v) = row?;
                let l: TopList =
                    postcard::from_bytes(v.value()).map_err(|e| corrupt("top list row", e))?;
                let (name, shard) = k.value();
                cache.put_list(name, shard, l, &cfg);
            }
        }
        Ok(EmbeddedStore {
            db: Arc::new(db),
            cfg,
            cache: RwLock::new(cache),
            users: Mutex::new(UserCache {
                lru: lru::LruCache::new(NonZeroUsize::new(USER_CACHE_CAPACITY).expect("non-zero")),
                generation: 0,
            }),
        })
    }

    fn write_sync(db: &Database, shard: &str, batch: &FlushBatch) -> Result<(), StoreError> {
        let w = db.begin_write()?;
        {
            let mut users = w.open_table(USERS)?;
            let mut buf = Vec::with_capacity(512);
            for u in &batch.users {
                buf.clear();
                let bytes = postcard::to_extend(u, std::mem::take(&mut buf))
                    .map_err(|e| corrupt("user view", e))?;
                users.insert(u.user_id.as_str(), bytes.as_slice())?;
                buf = bytes;
            }
            let mut products = w.open_table(PRODUCTS)?;
            for p in &batch.products {
                let bytes = postcard::to_stdvec(p).map_err(|e| corrupt("product view", e))?;
                products.insert((p.product_id.as_str(), shard), bytes.as_slice())?;
            }
            let mut lists = w.open_table(TOP_LISTS)?;
            let bytes = postcard::to_stdvec(&batch.trending).map_err(|e| corrupt("top list", e))?;
            lists.insert((TRENDING, shard), bytes.as_slice())?;
            for (c, l) in &batch.categories {
                let bytes = postcard::to_stdvec(l).map_err(|e| corrupt("top list", e))?;
                lists.insert((list_key(c).as_str(), shard), bytes.as_slice())?;
            }
        }
        w.commit()?;
        Ok(())
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Embedded(format!("store task failed: {e}")))?
}

#[async_trait]
impl FeatureStore for EmbeddedStore {
    async fn write(&self, shard: &ShardId, batch: &FlushBatch) -> Result<(), StoreError> {
        let db = self.db.clone();
        let shard_s = shard.to_string();
        let batch_owned = Arc::new(batch.clone());
        let b = batch_owned.clone();
        blocking(move || EmbeddedStore::write_sync(&db, &shard_s, &b)).await?;
        {
            let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
            users.generation += 1;
            for u in &batch_owned.users {
                if let Some(cached) = users.lru.peek_mut(u.user_id.as_str()) {
                    *cached = Arc::new(u.clone());
                }
            }
        }
        let mut cache = self.cache.write().expect("cache lock");
        for p in &batch_owned.products {
            cache.put_product(shard.as_str(), p.clone(), &self.cfg);
        }
        cache.put_list(
            TRENDING,
            shard.as_str(),
            batch_owned.trending.clone(),
            &self.cfg,
        );
        for (c, l) in &batch_owned.categories {
            cache.put_list(&list_key(c), shard.as_str(), l.clone(), &self.cfg);
        }
        Ok(())
    }

    async fn user(&self, user_id: &str) -> Result<Option<Arc<UserFeatures>>, StoreError> {
        let generation = {
            let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(u) = users.lru.get(user_id) {
                return Ok(Some(u.clone()));
            }
            users.generation
        };
        let r = self.db.begin_read()?;
        let t = r.open_table(USERS)?;
        let Some(v) = t.get(user_id)? else {
            return Ok(None);
        };
        let u: Arc<UserFeatures> =
            Arc::new(postcard::from_bytes(v.value()).map_err(|e| corrupt("user row", e))?);
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if users.generation == generation {
            users.lru.put(user_id.to_string(), u.clone());
        }
        Ok(Some(u))
    }

    async fn products(
        &self,
        ids: &[&str],
    ) -> Result<Vec<Option<Arc<ProductFeatures>>>, StoreError> {
        let cache = self.cache.read().expect("cache lock");
        Ok(ids
            .iter()
            .map(|id| cache.merged.get(*id).cloned())
            .collect())
    }

    async fn trending(&self) -> Result<Arc<TopList>, StoreError> {
        let cache = self.cache.read().expect("cache lock");
        Ok(cache.lists.get(TRENDING).cloned().unwrap_or_default())
    }

    async fn category_top(&self, category: &str) -> Result<Option<Arc<TopList>>, StoreError> {
        let cache = self.cache.read().expect("cache lock");
        Ok(cache.lists.get(&list_key(category)).cloned())
    }

    async fn scan_users(&self) -> Result<Vec<Arc<UserFeatures>>, StoreError> {
        let db = self.db.clone();
        blocking(move || {
            let r = db.begin_read()?;
            let mut out = Vec::new();
            for row in r.open_table(USERS)?.iter()? {
                let (_, v) = row?;
                let u: UserFeatures =
                    postcard::from_bytes(v.value()).map_err(|e| corrupt("user row", e))?;
                out.push(Arc::new(u));
            }
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl StateStore for EmbeddedStore {
    async fn put_state(&self, shard: &ShardId, delta: &StateDelta) -> Result<(), StoreError> {
        if delta.users.is_empty() && delta.products.is_empty() {
            return Ok(());
        }
        let db = self.db.clone();
        let shard = shard.to_string();
        let delta = delta.clone();
        blocking(move || {
            let w = db.begin_write()?;
            {
                let mut users = w.open_table(USER_STATE)?;
                for r in &delta.users {
                    users.insert((shard.as_str(), r.id.as_str()), r.state.as_slice())?;
                }
                let mut products = w.open_table(PRODUCT_STATE)?;
                for r in &delta.products {
                    products.insert((shard.as_str(), r.id.as_str()), r.state.as_slice())?;
                }
            }
            w.commit()?;
            Ok(())
        })
        .await
    }

    async fn user_states(
        &self,
        shard: &ShardId,
        ids: &[&str],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(USER_STATE)?;
        ids.iter()
            .map(|id| Ok(t.get((shard.as_str(), *id))?.map(|v| v.value().to_vec())))
            .collect()
    }

    async fn product_states(&self, shard: &ShardId) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let db = self.db.clone();
        let shard = shard.to_string();
        blocking(move || {
            let r = db.begin_read()?;
            let t = r.open_table(PRODUCT_STATE)?;
            let mut out = Vec::new();
            for row in t.range((shard.as_str(), "")..)? {
                let (k, v) = row?;
                let (s, id) = k.value();
                if s != shard {
                    break;
                }
                out.push((id.to_string(), v.value().to_vec()));
            }
            Ok(out)
        })
        .await
    }

    async fn mark_applied(&self, shard: &ShardId, tag: &str) -> Result<(), StoreError> {
        let db = self.db.clone();
        let (shard, tag) = (shard.to_string(), tag.to_string());
        blocking(move || {
            let w = db.begin_write()?;
            w.open_table(STATE_APPLIED)?
                .insert(shard.as_str(), tag.as_str())?;
            w.commit()?;
            Ok(())
        })
        .await
    }

    async fn applied(&self, shard: &ShardId) -> Result<Option<String>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(STATE_APPLIED)?;
        Ok(t.get(shard.as_str())?.map(|v| v.value().to_string()))
    }
}
