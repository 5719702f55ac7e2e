//! The DynamoDB feature store (aws-sdk-dynamodb), the production twin of
//! [`EmbeddedStore`](super::EmbeddedStore).
//!
//! ```text
//!  FlushBatch ─► encode (postcard `v` + readable attributes, ≤ 400 KB, lists truncated)
//!      ─► chunks of 25 ─► BatchWriteItem (≤ write_concurrency in flight)
//!            └─ UnprocessedItems / throttling ─► resend only those, backoff + jitter (aws::retry)
//!  serving ─► moka TTL cache (users 200 ms, products / top lists 1 s) ─► miss ─► GetItem / BatchGetItem
//!            / Query, bounded by read_timeout ─► partials merged per shard (sorted by shard id)
//!  batch jobs ─► scan_users: paginated Scan
//! ```
//!
//! # Tables and items
//!
//! | table | key | readable attributes | `v` (binary) |
//! |---|---|---|---|
//! | `<prefix>users` | `user_id` (S) | `events`, `views`, `carts`, `purchases` (N), `spend_minor` (N), `currency` (S), `segment` (S), `first_ts`, `last_ts` (N, epoch ms) | postcard [`UserFeatures`] |
//! | `<prefix>products` | `product_id` (S) + `shard` (S) | `views`, `carts`, `purchases`, `buyers` (N), `category`, `brand` (S), `price_minor` (N), `last_ts` (N) | postcard [`ProductFeatures`]: one shard's partial |
//! | `<prefix>top-lists` | `name` (S: `trending` or `category:<c>`) + `shard` (S) | `at` (N, epoch ms), `len` (N) | postcard [`TopList`]: one shard's list |
//! | `<prefix>state` | `shard` (S) + `key` (S: `u#<user id>` or `p#<product id>`) | — | one aggregation state row ([`StateStore`]) |
//! | `<prefix>state` | `shard` (S) + `key` = `m#applied` | `tag` (S: the last checkpoint delta whose rows are all written) | — |
//!
//! Every item also carries `ver` (N, the layout version, `1`). Readers decode `v` only; the
//! readable attributes are for people (console, PartiQL, exports) and are never read back.
//! Optional attributes are left out when unknown. Tables are on-demand
//! (`PAY_PER_REQUEST`); [`DynamoFeatureStore::create_tables_if_missing`] creates them.
//!
//! # Guarantees
//!
//! - Writes are absolute values (PutRequest of the whole view), so a replay after a crash
//!   rewrites the same items: idempotent. A failed `write` may have stored part of the
//!   batch; writing the batch again completes it.
//! - Views with an empty id (which DynamoDB cannot key, and which ingest never produces)
//!   are skipped with a warning instead of failing the whole batch forever.
//! - A view whose encoding would exceed DynamoDB's 400 KB item limit has its longest list
//!   halved until it fits (counted in [`DYNAMO_TRUNCATED_TOTAL`], logged).
//! - The products of a shard are read with BatchGetItem over the shards known from the
//!   `trending` partials (every flush writes its shard's trending list); with no known
//!   shard, or more than `batch_get_max_shards`, each product is read with one Query.
//! - Serving reads use eventually consistent reads by default and a local cache, so a
//!   value may be up to `catalog_ttl` (+ DynamoDB's replication lag) old. Reads of this
//!   process after its own `write` see the write: `write` drops the keys it touched.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::batch_write_item::{BatchWriteItemError, BatchWriteItemOutput};
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, PutRequest, WriteRequest};
use recstream_ingest::ShardId;
use recstream_ingest::aws::dynamodb::attr::{self, b, n, put_opt_s as opt_s, s};
use recstream_ingest::aws::dynamodb::{
    KeySchema, build_error as dynamodb_build_error, ensure_table, sdk_error,
};
use recstream_ingest::aws::{AwsConfig, RetryPolicy, is_retriable, retry, sdk_config};
use rustc_hash::FxHashMap;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::task::JoinSet;

/// The SDK this store is built on, for implementors of [`BatchWriteApi`] (tests wrap the
/// real client to inject throttling and UnprocessedItems).
pub use aws_sdk_dynamodb as sdk;

use super::{FeatureStore, StateStore};
use crate::aggregate::{FlushBatch, StateDelta};
use crate::config::FeatureConfig;
use crate::error::StoreError;
use crate::view::{ProductFeatures, TopList, UserFeatures};

/// Items DynamoDB handed back as UnprocessedItems and that were resent.
pub const DYNAMO_UNPROCESSED_TOTAL: &str = "recstream_features_dynamo_unprocessed_items_total";
/// Views whose lists were truncated to fit the 400 KB item limit (label: `kind`).
pub const DYNAMO_TRUNCATED_TOTAL: &str = "recstream_features_dynamo_truncated_items_total";
/// Serving-cache lookups of the DynamoDB store (labels: `kind`, `result` = hit | miss).
pub const STORE_CACHE_TOTAL: &str = "recstream_features_store_cache_total";

const SERVICE: &str = "dynamodb";
const LAYOUT_VERSION: u32 = 1;
const TRENDING: &str = "trending";
/// BatchWriteItem takes at most 25 requests, BatchGetItem at most 100 keys.
const WRITE_CHUNK: usize = 25;
const GET_CHUNK: usize = 100;
/// DynamoDB's item limit is 400 KB, names and values included; `v` gets all of it but a
/// margin for the key and the readable attributes (ids ≤ 128 bytes, categories ≤ 256).
const MAX_VIEW_BYTES: usize = 400 * 1024 - 8 * 1024;

type Item = HashMap<String, AttributeValue>;

/// Tuning of the DynamoDB store. The defaults suit serving next to a storefront.
#[derive(Debug, Clone, PartialEq)]
pub struct DynamoOptions {
    /// How long a user read is reused (0 = no cache).
    pub user_ttl: Duration,
    /// How long product and top-list reads are reused (0 = no cache).
    pub catalog_ttl: Duration,
    /// Entries per cache (users, products, lists) before expired entries are dropped.
    pub cache_capacity: usize,
    /// Bound on one serving read, retries included; past it the read fails (retriable)
    /// and the caller degrades.
    pub read_timeout: Duration,
    /// Strongly consistent reads (twice the read cost; needed only right after writes).
    pub consistent_reads: bool,
    /// BatchWriteItem calls in flight per `write`.
    pub write_concurrency: usize,
    /// Above this many shards, `products` Queries each product instead of BatchGetItem.
    pub batch_get_max_shards: usize,
    /// Items per Scan page (`None` = DynamoDB's 1 MB pages).
    pub scan_page_limit: Option<i32>,
}

impl Default for DynamoOptions {
    fn default() -> Self {
        DynamoOptions {
            user_ttl: Duration::from_millis(200),
            catalog_ttl: Duration::from_secs(1),
            cache_capacity: 100_000,
            read_timeout: Duration::from_millis(250),
            consistent_reads: false,
            write_concurrency: 4,
            batch_get_max_shards: 16,
            scan_page_limit: None,
        }
    }
}

/// The one step of a write that talks to DynamoDB, as a seam: the store calls it once per
/// attempt of a chunk; tests substitute an implementation that throttles or hands back
/// UnprocessedItems.
#[async_trait]
pub trait BatchWriteApi: Send + Sync + 'static {
    /// BatchWriteItem, exactly as the SDK client does it.
    async fn batch_write_item(
        &self,
        request_items: HashMap<String, Vec<WriteRequest>>,
    ) -> Result<BatchWriteItemOutput, SdkError<BatchWriteItemError, HttpResponse>>;
}

#[async_trait]
impl BatchWriteApi for Client {
    async fn batch_write_item(
        &self,
        request_items: HashMap<String, Vec<WriteRequest>>,
    ) -> Result<BatchWriteItemOutput, SdkError<BatchWriteItemError, HttpResponse>> {
        Client::batch_write_item(self)
            .set_request_items(Some(request_items))
            .send()
            .await
    }
}

/// Table names.
#[derive(Debug, Clone)]
struct Tables {
    users: String,
    products: String,
    top_lists: String,
    state: String,
}

/// The read-through cache in front of the tables: entries expire `ttl` after they were
/// written, at most `cap` are kept (moka: TinyLFU admission, LRU eviction, expiry and
/// eviction done in small amortised steps, never a scan of the whole map, and reads
/// take no global lock). A zero `ttl` turns it off.
struct TtlCache<V> {
    cache: Option<moka::sync::Cache<String, V>>,
}

impl<V: Clone + Send + Sync + 'static> TtlCache<V> {
    fn new(ttl: Duration, cap: usize) -> TtlCache<V> {
        let cache = (!ttl.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(cap.max(1) as u64)
                .time_to_live(ttl)
                .build()
        });
        TtlCache { cache }
    }

    fn get(&self, key: &str) -> Option<V> {
        self.cache.as_ref()?.get(key)
    }

    fn put(&self, key: String, value: V) {
        if let Some(c) = &self.cache {
            c.insert(key, value);
        }
    }

    fn remove<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        if let Some(c) = &self.cache {
            for k in keys {
                c.invalidate(k);
            }
        }
    }
}

/// The DynamoDB implementation of [`FeatureStore`].
pub struct DynamoFeatureStore {
    client: Client,
    writer: Arc<dyn BatchWriteApi>,
    tables: Tables,
    cfg: FeatureConfig,
    policy: RetryPolicy,
    read_policy: RetryPolicy,
    opts: DynamoOptions,
    users: TtlCache<Option<Arc<UserFeatures>>>,
    products: TtlCache<Option<Arc<ProductFeatures>>>,
    lists: TtlCache<Option<Arc<TopList>>>,
    /// Shards that have written a trending list (key: `trending`).
    shards: TtlCache<Arc<Vec<String>>>,
}

impl DynamoFeatureStore {
    /// A store over the tables `aws.table("users" | "products" | "top-lists")`, with a
    /// client built from `sdk` (see [`recstream_ingest::aws::sdk_config`]).
    pub fn new(
        sdk: &aws_config::SdkConfig,
        aws: &AwsConfig,
        cfg: FeatureConfig,
    ) -> DynamoFeatureStore {
        DynamoFeatureStore::with_client(Client::new(sdk), aws, cfg)
    }

    /// Loads the SDK configuration from the standard environment (`AWS_ENDPOINT_URL
    /// [_DYNAMODB]`, `AWS_REGION`, the default credential chain) and builds the store.
    pub async fn from_env(aws: &AwsConfig, cfg: FeatureConfig) -> DynamoFeatureStore {
        let sdk = sdk_config(aws.region.as_deref()).await;
        DynamoFeatureStore::new(&sdk, aws, cfg)
    }

    /// A store using an already built `client` (e.g. one pointed at a local endpoint).
    pub fn with_client(client: Client, aws: &AwsConfig, cfg: FeatureConfig) -> DynamoFeatureStore {
        let policy = aws.retry_policy();
        let opts = DynamoOptions::default();
        DynamoFeatureStore {
            writer: Arc::new(client.clone()),
            client,
            tables: Tables {
                users: aws.table("users"),
                products: aws.table("products"),
                top_lists: aws.table("top-lists"),
                state: aws.table("state"),
            },
            cfg,
            policy,
            read_policy: RetryPolicy {
                max_attempts: policy.max_attempts.min(3),
                base: Duration::from_millis(10),
                max: Duration::from_millis(50),
            },
            users: TtlCache::new(opts.user_ttl, opts.cache_capacity),
            products: TtlCache::new(opts.catalog_ttl, opts.cache_capacity),
            lists: TtlCache::new(opts.catalog_ttl, opts.cache_capacity),
            shards: TtlCache::new(opts.catalog_ttl, 1),
            opts,
        }
    }

    /// Replaces the default cache TTLs and capacity with `opts`.
    pub fn with_options(mut self, opts: DynamoOptions) -> DynamoFeatureStore {
        self.users = TtlCache::new(opts.user_ttl, opts.cache_capacity);
        self.products = TtlCache::new(opts.catalog_ttl, opts.cache_capacity);
        self.lists = TtlCache::new(opts.catalog_ttl, opts.cache_capacity);
        self.shards = TtlCache::new(opts.catalog_ttl, 1);
        self.opts = DynamoOptions {
            write_concurrency: opts.write_concurrency.max(1),
            ..opts
        };
        self
    }

    /// Replaces the BatchWriteItem step (tests inject throttling and UnprocessedItems).
    pub fn with_batch_writer(mut self, writer: Arc<dyn BatchWriteApi>) -> DynamoFeatureStore {
        self.writer = writer;
        self
    }

    /// The underlying SDK client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The table names: users, products, top lists, aggregation state.
    pub fn table_names(&self) -> [&str; 4] {
        [
            &self.tables.users,
            &self.tables.products,
            &self.tables.top_lists,
            &self.tables.state,
        ]
    }

    /// Creates the four tables (on-demand capacity) unless they exist, and waits until
    /// they are ACTIVE. Idempotent (`recstream init`). An existing table with other key
    /// attributes is a configuration error.
    pub async fn create_tables_if_missing(&self) -> Result<(), StoreError> {
        let specs = [
            (&self.tables.users, KeySchema::hash("user_id")),
            (
                &self.tables.products,
                KeySchema::composite("product_id", "shard"),
            ),
            (
                &self.tables.top_lists,
                KeySchema::composite("name", "shard"),
            ),
            (&self.tables.state, KeySchema::composite("shard", "key")),
        ];
        for (table, key) in specs {
            ensure_table(&self.client, table, key, &self.policy).await?;
        }
        Ok(())
    }

    // ---- writes ------------------------------------------------------------------

    fn user_item(&self, u: &UserFeatures, truncated: &mut u64) -> Result<Item, StoreError> {
        let v = encode_fitting(u, truncated, "user", |u: &mut UserFeatures| {
            let lists = [
                u.recent.len(),
                u.items.len(),
                u.categories.len(),
                u.cart.len(),
                u.purchased.len(),
            ];
            let (i, &longest) = lists.iter().enumerate().max_by_key(|(_, n)| **n)?;
            if longest == 0 {
                return None;
            }
            let keep = longest / 2;
            match i {
                0 => u.recent.truncate(keep),
                1 => u.items.truncate(keep),
                2 => u.categories.truncate(keep),
                3 => u.cart.truncate(keep),
                _ => u.purchased.truncate(keep),
            }
            Some(())
        })?;
        let mut item = Item::with_capacity(14);
        item.insert("user_id".into(), s(&u.user_id));
        item.insert("v".into(), b(v));
        item.insert("ver".into(), n(LAYOUT_VERSION));
        item.insert("events".into(), n(u.counts.total()));
        item.insert("views".into(), n(u.counts.view));
        item.insert("carts".into(), n(u.counts.add_to_cart));
        item.insert("purchases".into(), n(u.counts.purchase));
        item.insert("spend_minor".into(), n(u.spend_minor));
        item.insert("first_ts".into(), n(u.first_ts));
        item.insert("last_ts".into(), n(u.last_ts));
        opt_s(&mut item, "currency", u.currency.as_deref());
        opt_s(&mut item, "segment", u.segment.as_deref());
        Ok(item)
    }

    fn product_item(
        &self,
        shard: &str,
        p: &ProductFeatures,
        truncated: &mut u64,
    ) -> Result<Item, StoreError> {
        let v = encode_fitting(p, truncated, "product", |p: &mut ProductFeatures| {
            if p.covisit.is_empty() {
                return None;
            }
            p.covisit.truncate(p.covisit.len() / 2);
            Some(())
        })?;
        let mut item = Item::with_capacity(12);
        item.insert("product_id".into(), s(&p.product_id));
        item.insert("shard".into(), s(shard));
        item.insert("v".into(), b(v));
        item.insert("ver".into(), n(LAYOUT_VERSION));
        item.insert("views".into(), n(p.counts.view));
        item.insert("carts".into(), n(p.counts.add_to_cart));
        item.insert("purchases".into(), n(p.counts.purchase));
        item.insert("buyers".into(), n(p.buyers));
        item.insert("last_ts".into(), n(p.last_ts));
        opt_s(&mut item, "category", p.category.as_deref());
        opt_s(&mut item, "brand", p.brand.as_deref());
        if let Some(price) = p.price_minor {
            item.insert("price_minor".into(), n(price));
        }
        Ok(item)
    }

    fn list_item(
        &self,
        name: &str,
        shard: &str,
        l: &TopList,
        truncated: &mut u64,
    ) -> Result<Item, StoreError> {
        let v = encode_fitting(l, truncated, "top_list", |l: &mut TopList| {
            if l.items.is_empty() {
                return None;
            }
            l.items.truncate(l.items.len() / 2);
            Some(())
        })?;
        let mut item = Item::with_capacity(6);
        item.insert("name".into(), s(name));
        item.insert("shard".into(), s(shard));
        item.insert("v".into(), b(v));
        item.insert("ver".into(), n(LAYOUT_VERSION));
        item.insert("at".into(), n(l.at));
        item.insert("len".into(), n(l.items.len()));
        Ok(item)
    }

    /// Sends one chunk (≤ 25 requests) with its own retry loop: each attempt resends
    /// only what is still unprocessed. Returns how many items were handed back.
    async fn write_chunk(
        writer: Arc<dyn BatchWriteApi>,
        policy: RetryPolicy,
        chunk: HashMap<String, Vec<WriteRequest>>,
    ) -> Result<u64, StoreError> {
        let pending = Mutex::new(chunk);
        let handed_back = Mutex::new(0u64);
        let result = retry(
            &policy,
            SERVICE,
            "BatchWriteItem",
            Attempt::retriable,
            || {
                let items = pending.lock().expect("pending lock").clone();
                let (writer, pending, handed_back) = (&writer, &pending, &handed_back);
                async move {
                    let out = writer
                        .batch_write_item(items)
                        .await
                        .map_err(|e| Attempt::Failed(dynamo_error("BatchWriteItem", &e)))?;
                    let left: HashMap<String, Vec<WriteRequest>> = out
                        .unprocessed_items
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|(_, reqs)| !reqs.is_empty())
                        .collect();
                    let n: usize = left.values().map(Vec::len).sum();
                    *pending.lock().expect("pending lock") = left;
                    if n == 0 {
                        Ok(())
                    } else {
                        *handed_back.lock().expect("count lock") += n as u64;
                        Err(Attempt::Unprocessed(n))
                    }
                }
            },
        )
        .await;
        let handed_back = *handed_back.lock().expect("count lock");
        match result {
            Ok(()) => Ok(handed_back),
            Err(Attempt::Unprocessed(n)) => Err(StoreError::Dynamo {
                operation: "BatchWriteItem",
                message: format!(
                    "{n} items still unprocessed after {} attempts",
                    policy.max_attempts
                ),
                retriable: true,
            }),
            Err(Attempt::Failed(e)) => Err(e),
        }
    }

    // ---- reads -------------------------------------------------------------------

    /// Bounds a serving read by `read_timeout`.
    async fn bounded<T>(
        &self,
        operation: &'static str,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.opts.read_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Dynamo {
                operation,
                message: format!("timed out after {:?}", self.opts.read_timeout),
                retriable: true,
            }),
        }
    }

    /// One top list (all shards' partials, merged) and the shards that wrote it.
    async fn load_list(
        &self,
        name: &str,
    ) -> Result<(Option<Arc<TopList>>, Vec<String>), StoreError> {
        let items = query_all(
            &self.client,
            &self.read_policy,
            &self.tables.top_lists,
            "name",
            name,
            self.opts.consistent_reads,
        )
        .await?;
        let mut parts: Vec<(String, TopList)> = items
            .iter()
            .map(|it| Ok((shard_of(it)?, decode_v(it, "top list item")?)))
            .collect::<Result<_, StoreError>>()?;
        parts.sort_by(|a, b| a.0.cmp(&b.0));
        let shards: Vec<String> = parts.iter().map(|(s, _)| s.clone()).collect();
        let merged = match parts.len() {
            0 => None,
            1 => Some(parts.pop().expect("one part").1),
            _ => Some(TopList::merge_all(
                parts.iter().map(|(_, l)| l),
                self.cfg.trending_half_life_ms(),
                self.cfg.top_list_len,
            )),
        };
        Ok((merged.map(Arc::new), shards))
    }

    async fn cached_list(&self, name: &str) -> Result<Option<Arc<TopList>>, StoreError> {
        if let Some(l) = self.lists.get(name) {
            cache_metric("top_list", true, 1);
            return Ok(l);
        }
        cache_metric("top_list", false, 1);
        let (list, shards) = self.bounded("Query", self.load_list(name)).await?;
        if name == TRENDING {
            self.shards.put(TRENDING.into(), Arc::new(shards));
        }
        self.lists.put(name.to_string(), list.clone());
        Ok(list)
    }

    /// Shards known to have written (their trending list), from the cache or DynamoDB.
    async fn known_shards(&self) -> Result<Arc<Vec<String>>, StoreError> {
        if let Some(s) = self.shards.get(TRENDING) {
            return Ok(s);
        }
        let (list, shards) = self.load_list(TRENDING).await?;
        let shards = Arc::new(shards);
        self.lists.put(TRENDING.into(), list);
        self.shards.put(TRENDING.into(), shards.clone());
        Ok(shards)
    }

    /// Every shard's partial of each product in `ids` (distinct ids).
    async fn product_partials(
        &self,
        ids: &[String],
    ) -> Result<FxHashMap<String, Vec<(String, ProductFeatures)>>, StoreError> {
        let shards = self.known_shards().await?;
        let mut tasks = JoinSet::new();
        let consistent = self.opts.consistent_reads;
        if !shards.is_empty() && shards.len() <= self.opts.batch_get_max_shards {
            let keys: Vec<Item> = ids
                .iter()
                .flat_map(|id| {
                    shards.iter().map(move |shard| {
                        Item::from([
                            ("product_id".to_string(), s(id)),
                            ("shard".to_string(), s(shard)),
                        ])
                    })
                })
                .collect();
            for chunk in keys.chunks(GET_CHUNK) {
                let (client, table, policy) = (
                    self.client.clone(),
                    self.tables.products.clone(),
                    self.read_policy,
                );
                let chunk = chunk.to_vec();
                tasks.spawn(async move {
                    batch_get_chunk(&client, &policy, &table, chunk, consistent, "shard").await
                });
            }
        } else {
            for id in ids {
                let (client, table, policy, id) = (
                    self.client.clone(),
                    self.tables.products.clone(),
                    self.read_policy,
                    id.clone(),
                );
                tasks.spawn(async move {
                    query_all(&client, &policy, &table, "product_id", &id, consistent).await
                });
            }
        }
        let mut out: FxHashMap<String, Vec<(String, ProductFeatures)>> = FxHashMap::default();
        while let Some(done) = tasks.join_next().await {
            let items = done.map_err(|e| StoreError::Dynamo {
                operation: "BatchGetItem",
                message: format!("read task failed: {e}"),
                retriable: true,
            })??;
            for it in &items {
                let p: ProductFeatures = decode_v(it, "product item")?;
                out.entry(p.product_id.clone())
                    .or_default()
                    .push((shard_of(it)?, p));
            }
        }
        Ok(out)
    }

    fn merge_partials(&self, mut parts: Vec<(String, ProductFeatures)>) -> Option<ProductFeatures> {
        parts.sort_by(|a, b| a.0.cmp(&b.0));
        let mut it = parts.into_iter();
        let (_, mut merged) = it.next()?;
        for (_, p) in it {
            merged.merge(
                &p,
                self.cfg.trending_half_life_ms(),
                self.cfg.covisit_neighbours,
            );
        }
        Some(merged)
    }
}

/// Why one attempt of a chunk did not finish.
enum Attempt {
    Unprocessed(usize),
    Failed(StoreError),
}

impl Attempt {
    fn retriable(&self) -> bool {
        match self {
            Attempt::Unprocessed(_) => true,
            Attempt::Failed(e) => e.retriable(),
        }
    }
}

/// Collects chunks of at most 25 write requests, grouped by table.
#[derive(Default)]
struct ChunkBuilder {
    requests: HashMap<String, Vec<WriteRequest>>,
    len: usize,
}

impl ChunkBuilder {
    fn push(
        &mut self,
        table: &str,
        item: Item,
    ) -> Result<Option<HashMap<String, Vec<WriteRequest>>>, StoreError> {
        let put = PutRequest::builder()
            .set_item(Some(item))
            .build()
            .map_err(|e| StoreError::from(dynamodb_build_error("BatchWriteItem", e)))?;
        self.requests
            .entry(table.to_string())
            .or_default()
            .push(WriteRequest::builder().put_request(put).build());
        self.len += 1;
        Ok((self.len == WRITE_CHUNK).then(|| self.take()))
    }

    fn take(&mut self) -> HashMap<String, Vec<WriteRequest>> {
        self.len = 0;
        std::mem::take(&mut self.requests)
    }
}

/// Positions of the last occurrence of each key: BatchWriteItem refuses a request that
/// names one key twice, and the last view of a key is the newest.
fn last_of<'a, T>(items: &'a [T], key: impl Fn(&'a T) -> &'a str) -> Vec<usize> {
    let mut last: FxHashMap<&str, usize> = FxHashMap::default();
    for (i, t) in items.iter().enumerate() {
        last.insert(key(t), i);
    }
    let mut idx: Vec<usize> = last.into_values().collect();
    idx.sort_unstable();
    idx
}

/// Sends items in BatchWriteItem chunks of at most 25 (grouped by table), with at most
/// `write_concurrency` chunks in flight: the one write path of [`FeatureStore::write`] and
/// [`StateStore::put_state`].
struct ChunkSender<'a> {
    store: &'a DynamoFeatureStore,
    tasks: JoinSet<Result<u64, StoreError>>,
    chunk: ChunkBuilder,
    handed_back: u64,
}

impl<'a> ChunkSender<'a> {
    fn new(store: &'a DynamoFeatureStore) -> ChunkSender<'a> {
        ChunkSender {
            store,
            tasks: JoinSet::new(),
            chunk: ChunkBuilder::default(),
            handed_back: 0,
        }
    }

    /// Adds one item; a full chunk is sent (after waiting for a free slot).
    async fn push(&mut self, table: &str, item: Item) -> Result<(), StoreError> {
        if let Some(full) = self.chunk.push(table, item)? {
            self.send(full).await?;
        }
        Ok(())
    }

    async fn send(&mut self, chunk: HashMap<String, Vec<WriteRequest>>) -> Result<(), StoreError> {
        let limit = self.store.opts.write_concurrency.max(1);
        spawn_chunk(
            &mut self.tasks,
            limit,
            &mut self.handed_back,
            &self.store.writer,
            self.store.policy,
            chunk,
        )
        .await
    }

    /// Sends what is left and waits for every chunk; returns how many items DynamoDB
    /// handed back (and were resent) along the way.
    async fn finish(mut self) -> Result<u64, StoreError> {
        if self.chunk.len > 0 {
            let last = self.chunk.take();
            self.send(last).await?;
        }
        while let Some(n) = join_one(&mut self.tasks).await? {
            self.handed_back += n;
        }
        Ok(self.handed_back)
    }
}

/// Waits for a free slot (at most `limit` chunks in flight), then sends `chunk`.
async fn spawn_chunk(
    tasks: &mut JoinSet<Result<u64, StoreError>>,
    limit: usize,
    handed_back: &mut u64,
    writer: &Arc<dyn BatchWriteApi>,
    policy: RetryPolicy,
    chunk: HashMap<String, Vec<WriteRequest>>,
) -> Result<(), StoreError> {
    while tasks.len() >= limit {
        *handed_back += join_one(tasks).await?.unwrap_or(0);
    }
    tasks.spawn(DynamoFeatureStore::write_chunk(
        writer.clone(),
        policy,
        chunk,
    ));
    // Encoding is CPU work: give the runtime a turn between chunks.
    tokio::task::yield_now().await;
    Ok(())
}

async fn join_one(tasks: &mut JoinSet<Result<u64, StoreError>>) -> Result<Option<u64>, StoreError> {
    match tasks.join_next().await {
        None => Ok(None),
        Some(Ok(r)) => r.map(Some),
        Some(Err(e)) => Err(StoreError::Dynamo {
            operation: "BatchWriteItem",
            message: format!("write task failed: {e}"),
            retriable: true,
        }),
    }
}

#[async_trait]
impl FeatureStore for DynamoFeatureStore {
    #[tracing::instrument(skip_all, fields(shard = %shard, users = batch.users.len(), products = batch.products.len()))]
    async fn write(&self, shard: &ShardId, batch: &FlushBatch) -> Result<(), StoreError> {
        let shard_s = shard.as_str();
        let mut sender = ChunkSender::new(self);
        let mut truncated = 0u64;
        let users = last_of(&batch.users, |u| u.user_id.as_str());
        let products = last_of(&batch.products, |p| p.product_id.as_str());
        let categories = last_of(&batch.categories, |(c, _)| c.as_str());

        // DynamoDB refuses empty key strings, and one such item would fail its whole chunk
        // on every retry; ingest never produces them, so this only guards the store.
        let mut skipped = 0usize;
        for &i in &users {
            if batch.users[i].user_id.is_empty() {
                skipped += 1;
                continue;
            }
            let item = self.user_item(&batch.users[i], &mut truncated)?;
            sender.push(&self.tables.users, item).await?;
        }
        for &i in &products {
            if batch.products[i].product_id.is_empty() {
                skipped += 1;
                continue;
            }
            let item = self.product_item(shard_s, &batch.products[i], &mut truncated)?;
            sender.push(&self.tables.products, item).await?;
        }
        let lists = std::iter::once((TRENDING.to_string(), &batch.trending)).chain(
            categories
                .iter()
                .map(|&i| (list_key(&batch.categories[i].0), &batch.categories[i].1)),
        );
        let mut list_names = Vec::with_capacity(categories.len() + 1);
        for (name, list) in lists {
            let item = self.list_item(&name, shard_s, list, &mut truncated)?;
            list_names.push(name);
            sender.push(&self.tables.top_lists, item).await?;
        }
        let handed_back = sender.finish().await?;

        // Read-your-writes for this process: drop what the batch touched.
        self.users
            .remove(users.iter().map(|&i| batch.users[i].user_id.as_str()));
        self.products.remove(
            products
                .iter()
                .map(|&i| batch.products[i].product_id.as_str()),
        );
        self.lists.remove(list_names.iter().map(String::as_str));
        self.shards.remove([TRENDING]);
        if handed_back > 0 {
            metrics::counter!(DYNAMO_UNPROCESSED_TOTAL).increment(handed_back);
        }
        if truncated > 0 {
            tracing::warn!(truncated, "views truncated to fit the dynamodb item limit");
        }
        if skipped > 0 {
            tracing::warn!(skipped, "views with an empty id not written to dynamodb");
        }
        Ok(())
    }

    async fn user(&self, user_id: &str) -> Result<Option<Arc<UserFeatures>>, StoreError> {
        if let Some(u) = self.users.get(user_id) {
            cache_metric("user", true, 1);
            return Ok(u);
        }
        cache_metric("user", false, 1);
        let out = self
            .bounded("GetItem", async {
                retry(&self.read_policy, SERVICE, "GetItem", is_retriable, || {
                    self.client
                        .get_item()
                        .table_name(&self.tables.users)
                        .key("user_id", s(user_id))
                        .projection_expression("#v")
                        .expression_attribute_names("#v", "v")
                        .consistent_read(self.opts.consistent_reads)
                        .send()
                })
                .await
                .map_err(|e| dynamo_error("GetItem", &e))
            })
            .await?;
        let user = match out.item {
            Some(item) => Some(Arc::new(decode_v::<UserFeatures>(&item, "user item")?)),
            None => None,
        };
        self.users.put(user_id.to_string(), user.clone());
        Ok(user)
    }

    async fn products(
        &self,
        ids: &[&str],
    ) -> Result<Vec<Option<Arc<ProductFeatures>>>, StoreError> {
        let mut missing: Vec<String> = Vec::new();
        let mut found: FxHashMap<&str, Option<Arc<ProductFeatures>>> = FxHashMap::default();
        for &id in ids {
            if found.contains_key(id) {
                continue;
            }
            match self.products.get(id) {
                Some(p) => {
                    found.insert(id, p);
                }
                None => {
                    found.insert(id, None);
                    missing.push(id.to_string());
                }
            }
        }
        cache_metric("product", true, (found.len() - missing.len()) as u64);
        if !missing.is_empty() {
            cache_metric("product", false, missing.len() as u64);
            let mut partials = self
                .bounded("BatchGetItem", self.product_partials(&missing))
                .await?;
            for id in &missing {
                let merged = partials
                    .remove(id.as_str())
                    .and_then(|parts| self.merge_partials(parts))
                    .map(Arc::new);
                self.products.put(id.clone(), merged.clone());
                found.insert(id.as_str(), merged);
            }
        }
        Ok(ids
            .iter()
            .map(|id| found.get(id).cloned().flatten())
            .collect())
    }

    async fn trending(&self) -> Result<Arc<TopList>, StoreError> {
        Ok(self.cached_list(TRENDING).await?.unwrap_or_default())
    }

    async fn category_top(&self, category: &str) -> Result<Option<Arc<TopList>>, StoreError> {
        self.cached_list(&list_key(category)).await
    }

    async fn scan_users(&self) -> Result<Vec<Arc<UserFeatures>>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = retry(&self.policy, SERVICE, "Scan", is_retriable, || {
                self.client
                    .scan()
                    .table_name(&self.tables.users)
                    .projection_expression("#v")
                    .expression_attribute_names("#v", "v")
                    .consistent_read(self.opts.consistent_reads)
                    .set_limit(self.opts.scan_page_limit)
                    .set_exclusive_start_key(start.clone())
                    .send()
            })
            .await
            .map_err(|e| dynamo_error("Scan", &e))?;
            for item in page.items() {
                out.push(Arc::new(decode_v::<UserFeatures>(item, "user item")?));
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        Ok(out)
    }
}

/// Every item under partition key `pk = value` (all pages).
async fn query_all(
    client: &Client,
    policy: &RetryPolicy,
    table: &str,
    pk: &str,
    value: &str,
    consistent: bool,
) -> Result<Vec<Item>, StoreError> {
    query_prefix(client, policy, table, (pk, value), None, consistent).await
}

/// Every item under partition key `pk` whose sort key begins with `sk_prefix` (all pages).
async fn query_prefix(
    client: &Client,
    policy: &RetryPolicy,
    table: &str,
    (pk, value): (&str, &str),
    sk_prefix: Option<(&str, &str)>,
    consistent: bool,
) -> Result<Vec<Item>, StoreError> {
    let mut items = Vec::new();
    let mut start: Option<Item> = None;
    loop {
        let page = retry(policy, SERVICE, "Query", is_retriable, || {
            let q = client
                .query()
                .table_name(table)
                .expression_attribute_names("#pk", pk)
                .expression_attribute_values(":pk", s(value))
                .consistent_read(consistent)
                .set_exclusive_start_key(start.clone());
            let q = match sk_prefix {
                None => q.key_condition_expression("#pk = :pk"),
                Some((sk, prefix)) => q
                    .key_condition_expression("#pk = :pk AND begins_with(#sk, :sk)")
                    .expression_attribute_names("#sk", sk)
                    .expression_attribute_values(":sk", s(prefix)),
            };
            q.send()
        })
        .await
        .map_err(|e| dynamo_error("Query", &e))?;
        items.extend(page.items.unwrap_or_default());
        match page.last_evaluated_key {
            Some(k) if !k.is_empty() => start = Some(k),
            _ => return Ok(items),
        }
    }
}

/// One BatchGetItem of ≤ 100 keys, resending UnprocessedKeys with backoff.
async fn batch_get_chunk(
    client: &Client,
    policy: &RetryPolicy,
    table: &str,
    keys: Vec<Item>,
    consistent: bool,
    key_attr: &str,
) -> Result<Vec<Item>, StoreError> {
    let pending = Mutex::new(keys);
    let got = Mutex::new(Vec::new());
    let result = retry(policy, SERVICE, "BatchGetItem", Attempt::retriable, || {
        let keys = pending.lock().expect("pending lock").clone();
        let (pending, got) = (&pending, &got);
        async move {
            let request = KeysAndAttributes::builder()
                .set_keys(Some(keys))
                .projection_expression("#s, #v")
                .expression_attribute_names("#s", key_attr)
                .expression_attribute_names("#v", "v")
                .consistent_read(consistent)
                .build()
                .map_err(|e| {
                    Attempt::Failed(StoreError::from(dynamodb_build_error("BatchGetItem", e)))
                })?;
            let mut out = client
                .batch_get_item()
                .request_items(table, request)
                .send()
                .await
                .map_err(|e| Attempt::Failed(dynamo_error("BatchGetItem", &e)))?;
            if let Some(items) = out.responses.as_mut().and_then(|r| r.remove(table)) {
                got.lock().expect("got lock").extend(items);
            }
            let left = out
                .unprocessed_keys
                .and_then(|mut u| u.remove(table))
                .map(|k| k.keys)
                .unwrap_or_default();
            let n = left.len();
            *pending.lock().expect("pending lock") = left;
            if n == 0 {
                Ok(())
            } else {
                Err(Attempt::Unprocessed(n))
            }
        }
    })
    .await;
    match result {
        Ok(()) => Ok(got.into_inner().expect("got lock")),
        Err(Attempt::Unprocessed(n)) => Err(StoreError::Dynamo {
            operation: "BatchGetItem",
            message: format!("{n} keys still unprocessed"),
            retriable: true,
        }),
        Err(Attempt::Failed(e)) => Err(e),
    }
}

/// Encodes `value` with postcard; while the encoding is over the item budget, `shrink`
/// halves its longest list (returns `None` when there is nothing left to cut).
fn encode_fitting<T: Serialize + Clone>(
    value: &T,
    truncated: &mut u64,
    kind: &'static str,
    mut shrink: impl FnMut(&mut T) -> Option<()>,
) -> Result<Vec<u8>, StoreError> {
    let bytes = postcard::to_stdvec(value).map_err(|e| corrupt(kind, e))?;
    if bytes.len() <= MAX_VIEW_BYTES {
        return Ok(bytes);
    }
    let original = bytes.len();
    let mut cut = value.clone();
    loop {
        if shrink(&mut cut).is_none() {
            return Err(StoreError::Dynamo {
                operation: "BatchWriteItem",
                message: format!("{kind} view of {original} bytes cannot fit in a dynamodb item"),
                retriable: false,
            });
        }
        let bytes = postcard::to_stdvec(&cut).map_err(|e| corrupt(kind, e))?;
        if bytes.len() <= MAX_VIEW_BYTES {
            *truncated += 1;
            metrics::counter!(DYNAMO_TRUNCATED_TOTAL, "kind" => kind).increment(1);
            tracing::warn!(
                kind,
                original,
                kept = bytes.len(),
                "truncated a view to fit dynamodb"
            );
            return Ok(bytes);
        }
    }
}

fn decode_v<T: DeserializeOwned>(item: &Item, what: &'static str) -> Result<T, StoreError> {
    let v = attr::get_b(item, "v")
        .ok_or_else(|| corrupt(what, "attribute `v` is missing or not binary"))?;
    postcard::from_bytes(v).map_err(|e| corrupt(what, e))
}

fn shard_of(item: &Item) -> Result<String, StoreError> {
    attr::get_s(item, "shard")
        .map(str::to_string)
        .ok_or_else(|| corrupt("dynamodb item", "attribute `shard` is missing"))
}

fn list_key(category: &str) -> String {
    format!("category:{category}")
}

fn cache_metric(kind: &'static str, hit: bool, count: u64) {
    if count > 0 {
        let result = if hit { "hit" } else { "miss" };
        metrics::counter!(STORE_CACHE_TOTAL, "kind" => kind, "result" => result).increment(count);
    }
}

fn corrupt(what: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what,
        message: e.to_string(),
    }
}

fn dynamo_error<E>(operation: &'static str, e: &SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    sdk_error(operation, e).into()
}

const USER_ROW: &str = "u#";
const PRODUCT_ROW: &str = "p#";
const APPLIED_ROW: &str = "m#applied";

/// The aggregation state rows (`<prefix>state`): written at each checkpoint, read with
/// strongly consistent reads (a resumed shard must see the last checkpoint's rows).
#[async_trait]
impl StateStore for DynamoFeatureStore {
    #[tracing::instrument(skip_all, fields(shard = %shard, users = delta.users.len(), products = delta.products.len()))]
    async fn put_state(&self, shard: &ShardId, delta: &StateDelta) -> Result<(), StoreError> {
        let mut sender = ChunkSender::new(self);
        let rows = delta
            .users
            .iter()
            .map(|r| (USER_ROW, r))
            .chain(delta.products.iter().map(|r| (PRODUCT_ROW, r)));
        for (kind, row) in rows {
            if row.state.len() > MAX_VIEW_BYTES {
                // State must be exact: a row that cannot be stored is an error to fix in
                // the [features] bounds, never a silent cut.
                return Err(StoreError::Dynamo {
                    operation: "BatchWriteItem",
                    message: format!(
                        "state row {kind}{} of {} bytes exceeds the dynamodb item limit; lower the [features] bounds",
                        row.id,
                        row.state.len()
                    ),
                    retriable: false,
                });
            }
            let item = Item::from([
                ("shard".to_string(), s(shard.as_str())),
                ("key".to_string(), s(format!("{kind}{}", row.id))),
                ("v".to_string(), b(row.state.clone())),
                ("ver".to_string(), n(LAYOUT_VERSION)),
            ]);
            sender.push(&self.tables.state, item).await?;
        }
        let handed_back = sender.finish().await?;
        if handed_back > 0 {
            metrics::counter!(DYNAMO_UNPROCESSED_TOTAL).increment(handed_back);
        }
        Ok(())
    }

    async fn user_states(
        &self,
        shard: &ShardId,
        ids: &[&str],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let mut distinct: Vec<&str> = ids.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let mut found: FxHashMap<String, Vec<u8>> = FxHashMap::default();
        for chunk in distinct.chunks(GET_CHUNK) {
            let keys = chunk
                .iter()
                .map(|id| {
                    Item::from([
                        ("shard".to_string(), s(shard.as_str())),
                        ("key".to_string(), s(format!("{USER_ROW}{id}"))),
                    ])
                })
                .collect();
            let items = batch_get_chunk(
                &self.client,
                &self.policy,
                &self.tables.state,
                keys,
                true,
                "key",
            )
            .await?;
            for it in items {
                let key = attr::get_s(&it, "key")
                    .and_then(|k| k.strip_prefix(USER_ROW))
                    .ok_or_else(|| corrupt("state item", "attribute `key` is missing"))?
                    .to_string();
                let v = attr::get_b(&it, "v")
                    .ok_or_else(|| corrupt("state item", "attribute `v` is missing"))?
                    .to_vec();
                found.insert(key, v);
            }
        }
        Ok(ids.iter().map(|id| found.get(*id).cloned()).collect())
    }

    async fn product_states(&self, shard: &ShardId) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let items = query_prefix(
            &self.client,
            &self.policy,
            &self.tables.state,
            ("shard", shard.as_str()),
            Some(("key", PRODUCT_ROW)),
            true,
        )
        .await?;
        items
            .iter()
            .map(|it| {
                let id = attr::get_s(it, "key")
                    .and_then(|k| k.strip_prefix(PRODUCT_ROW))
                    .ok_or_else(|| corrupt("state item", "attribute `key` is missing"))?;
                let v = attr::get_b(it, "v")
                    .ok_or_else(|| corrupt("state item", "attribute `v` is missing"))?;
                Ok((id.to_string(), v.to_vec()))
            })
            .collect()
    }

    async fn mark_applied(&self, shard: &ShardId, tag: &str) -> Result<(), StoreError> {
        let item = Item::from([
            ("shard".to_string(), s(shard.as_str())),
            ("key".to_string(), s(APPLIED_ROW)),
            ("tag".to_string(), s(tag)),
            ("ver".to_string(), n(LAYOUT_VERSION)),
        ]);
        retry(&self.policy, SERVICE, "PutItem", is_retriable, || {
            self.client
                .put_item()
                .table_name(&self.tables.state)
                .set_item(Some(item.clone()))
                .send()
        })
        .await
        .map_err(|e| dynamo_error("PutItem", &e))?;
        Ok(())
    }

    async fn applied(&self, shard: &ShardId) -> Result<Option<String>, StoreError> {
        let out = retry(&self.policy, SERVICE, "GetItem", is_retriable, || {
            self.client
                .get_item()
                .table_name(&self.tables.state)
                .key("shard", s(shard.as_str()))
                .key("key", s(APPLIED_ROW))
                .consistent_read(true)
                .send()
        })
        .await
        .map_err(|e| dynamo_error("GetItem", &e))?;
        Ok(out
            .item
            .as_ref()
            .and_then(|it| attr::get_s(it, "tag"))
            .map(str::to_string))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use aws_sdk_dynamodb::error::ErrorMetadata;
    use aws_sdk_dynamodb::types::error::ProvisionedThroughputExceededException;

    use super::*;
    use crate::view::{EventCounts, RecentItem};

    /// Fails the first `throttle` calls with throttling, then for `partial` calls stores
    /// only the first request and hands the rest back; then stores everything.
    #[derive(Default)]
    struct Flaky {
        throttle: usize,
        partial: usize,
        non_retriable: bool,
        calls: AtomicUsize,
        max_requests: AtomicUsize,
        stored: Mutex<BTreeMap<(String, String), Item>>,
    }

    fn key_of(item: &Item) -> String {
        ["user_id", "product_id", "name"]
            .iter()
            .filter_map(|k| match item.get(*k) {
                Some(AttributeValue::S(s)) => Some(s.clone()),
                _ => None,
            })
            .chain(match item.get("shard") {
                Some(AttributeValue::S(s)) => Some(format!("@{s}")),
                _ => None,
            })
            .collect()
    }

    pub(super) fn throttled() -> SdkError<BatchWriteItemError, HttpResponse> {
        let meta = ErrorMetadata::builder()
            .code("ProvisionedThroughputExceededException")
            .message("slow down")
            .build();
        SdkError::service_error(
            BatchWriteItemError::ProvisionedThroughputExceededException(
                ProvisionedThroughputExceededException::builder()
                    .message("slow down")
                    .meta(meta)
                    .build(),
            ),
            HttpResponse::new(400u16.try_into().unwrap(), "".into()),
        )
    }

    fn validation() -> SdkError<BatchWriteItemError, HttpResponse> {
        let meta = ErrorMetadata::builder()
            .code("ValidationException")
            .message("bad item")
            .build();
        SdkError::service_error(
            BatchWriteItemError::generic(meta),
            HttpResponse::new(400u16.try_into().unwrap(), "".into()),
        )
    }

    #[async_trait]
    impl BatchWriteApi for Flaky {
        async fn batch_write_item(
            &self,
            request_items: HashMap<String, Vec<WriteRequest>>,
        ) -> Result<BatchWriteItemOutput, SdkError<BatchWriteItemError, HttpResponse>> {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            let total: usize = request_items.values().map(Vec::len).sum();
            self.max_requests.fetch_max(total, Ordering::SeqCst);
            if self.non_retriable {
                return Err(validation());
            }
            if call < self.throttle {
                return Err(throttled());
            }
            let partial = call < self.throttle + self.partial;
            let mut left: HashMap<String, Vec<WriteRequest>> = HashMap::new();
            let mut stored = self.stored.lock().unwrap();
            let mut first = true;
            for (table, reqs) in request_items {
                let mut seen = std::collections::HashSet::new();
                for r in reqs {
                    let item = r.put_request().unwrap().item().clone();
                    assert!(seen.insert(key_of(&item)), "duplicate key in one request");
                    if partial && !first {
                        left.entry(table.clone()).or_default().push(r);
                    } else {
                        stored.insert((table.clone(), key_of(&item)), item);
                    }
                    first = false;
                }
            }
            Ok(BatchWriteItemOutput::builder()
                .set_unprocessed_items(Some(left))
                .build())
        }
    }

    fn store(flaky: Arc<Flaky>, attempts: u32) -> DynamoFeatureStore {
        let conf = aws_sdk_dynamodb::Config::builder()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
            .build();
        let aws = AwsConfig {
            table_prefix: "t-".into(),
            max_attempts: attempts,
            base_backoff_ms: 1,
            max_backoff_ms: 2,
            ..Default::default()
        };
        DynamoFeatureStore::with_client(Client::from_conf(conf), &aws, FeatureConfig::default())
            .with_batch_writer(flaky)
    }

    fn batch(users: usize, products: usize) -> FlushBatch {
        FlushBatch {
            users: (0..users)
                .map(|i| UserFeatures {
                    user_id: format!("u{i}"),
                    counts: EventCounts {
                        view: i as u64,
                        ..Default::default()
                    },
                    last_ts: 1_000 + i as i64,
                    ..Default::default()
                })
                .collect(),
            products: (0..products)
                .map(|i| ProductFeatures {
                    product_id: format!("p{i}"),
                    category: Some("c".into()),
                    ..Default::default()
                })
                .collect(),
            trending: TopList {
                at: 5,
                items: vec![("p0".into(), 1.0)],
            },
            categories: vec![(
                "c".into(),
                TopList {
                    at: 5,
                    items: vec![("p0".into(), 1.0)],
                },
            )],
            watermark: 5,
        }
    }

    #[tokio::test]
    async fn unprocessed_items_and_throttling_are_retried_until_written() {
        let flaky = Arc::new(Flaky {
            throttle: 2,
            partial: 5,
            ..Default::default()
        });
        let store = store(flaky.clone(), 20);
        let b = batch(60, 30);
        store.write(&ShardId::new("shard-0"), &b).await.unwrap();
        let stored = flaky.stored.lock().unwrap();
        // 60 users + 30 products + trending + 1 category list.
        assert_eq!(stored.len(), 92);
        assert!(flaky.calls.load(Ordering::SeqCst) > 4 + 2);
        assert!(flaky.max_requests.load(Ordering::SeqCst) <= WRITE_CHUNK);
        let u7 = &stored[&("t-users".to_string(), "u7".to_string())];
        let back: UserFeatures = decode_v(u7, "user").unwrap();
        assert_eq!(back, b.users[7]);
        assert_eq!(u7["views"], AttributeValue::N("7".into()));
        assert!(stored.contains_key(&("t-products".into(), "p3@shard-0".into())));
        assert!(stored.contains_key(&("t-top-lists".into(), "category:c@shard-0".into())));
        assert!(stored.contains_key(&("t-top-lists".into(), "trending@shard-0".into())));
    }

    #[tokio::test]
    async fn gives_up_after_the_attempt_limit_with_a_retriable_error() {
        let flaky = Arc::new(Flaky {
            partial: usize::MAX / 2,
            ..Default::default()
        });
        let err = store(flaky.clone(), 3)
            .write(&ShardId::new("s"), &batch(3, 0))
            .await
            .unwrap_err();
        assert!(err.retriable(), "{err}");
        assert!(err.to_string().contains("unprocessed"), "{err}");
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 3);

        let flaky = Arc::new(Flaky {
            throttle: usize::MAX / 2,
            ..Default::default()
        });
        let err = store(flaky.clone(), 4)
            .write(&ShardId::new("s"), &batch(3, 0))
            .await
            .unwrap_err();
        assert!(
            err.retriable() && err.to_string().contains("Throughput"),
            "{err}"
        );
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn non_retriable_errors_fail_fast() {
        let flaky = Arc::new(Flaky {
            non_retriable: true,
            ..Default::default()
        });
        let err = store(flaky.clone(), 8)
            .write(&ShardId::new("s"), &batch(1, 0))
            .await
            .unwrap_err();
        assert!(!err.retriable(), "{err}");
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn duplicate_keys_in_a_batch_keep_the_last_view() {
        let flaky = Arc::new(Flaky::default());
        let mut b = batch(2, 0);
        let mut newer = b.users[0].clone();
        newer.counts.view = 99;
        b.users.push(newer.clone());
        b.users.push(UserFeatures::default());
        store(flaky.clone(), 2)
            .write(&ShardId::new("s"), &b)
            .await
            .unwrap();
        let stored = flaky.stored.lock().unwrap();
        let u0: UserFeatures = decode_v(&stored[&("t-users".into(), "u0".into())], "user").unwrap();
        assert_eq!(u0, newer);
        assert!(
            !stored.contains_key(&("t-users".into(), String::new())),
            "empty ids are skipped"
        );
        assert_eq!(stored.keys().filter(|(t, _)| t == "t-users").count(), 2);
    }

    #[tokio::test]
    async fn oversized_views_are_truncated_to_fit() {
        let flaky = Arc::new(Flaky::default());
        let mut b = batch(1, 0);
        b.users[0].purchased = (0..40_000).map(|i| format!("product-{i:012}")).collect();
        b.users[0].recent = vec![RecentItem {
            product_id: "p".into(),
            ts: 1,
            action: "view".into(),
        }];
        store(flaky.clone(), 2)
            .write(&ShardId::new("s"), &b)
            .await
            .unwrap();
        let stored = flaky.stored.lock().unwrap();
        let item = &stored[&("t-users".into(), "u0".into())];
        let Some(AttributeValue::B(v)) = item.get("v") else {
            panic!("no v")
        };
        assert!(v.as_ref().len() <= MAX_VIEW_BYTES);
        let u: UserFeatures = decode_v(item, "user").unwrap();
        assert!(u.purchased.len() < 40_000 && u.purchased.len() >= 10_000);
        assert_eq!(u.purchased[..10], b.users[0].purchased[..10]);
        assert_eq!(u.recent, b.users[0].recent);
    }

    #[test]
    fn ttl_cache_expires_and_stays_bounded() {
        let c: TtlCache<u32> = TtlCache::new(Duration::from_millis(30), 3);
        c.put("a".into(), 1);
        assert_eq!(c.get("a"), Some(1));
        for (i, k) in ["b", "c", "d", "e"].into_iter().enumerate() {
            c.put(k.into(), i as u32);
        }
        let inner = c.cache.as_ref().unwrap();
        inner.run_pending_tasks();
        assert!(inner.entry_count() <= 3, "{}", inner.entry_count());
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(c.get("e"), None);
        let off: TtlCache<u32> = TtlCache::new(Duration::ZERO, 3);
        off.put("a".into(), 1);
        assert_eq!(off.get("a"), None);
    }
}
