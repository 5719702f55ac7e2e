//! recstream-commerce: cart, catalog, checkout, payments, the order saga and
//! notifications — thin handlers that must stay correct under retries, concurrency and
//! crashes, and that feed the clickstream. serving mounts [`routes`] beside its own.
//!
//! ```text
//!  auth        Bearer JWT (RS256 via JWKS | HS256) ─► Principal      webhook  Stripe-Signature HMAC
//!  cart        per-user carts, availability sweep                    catalog  products, prices, stock
//!  checkout    idempotent order creation (idempotency keys)          payment  simulated | Stripe
//!  saga        outbox ─► relay ─► saga log ─► consumers              notify   notifications.jsonl
//!  store       CommerceStore: EmbeddedStore (redb) | DynamoStore     http     the axum router
//! ```
//!
//! ```text
//!  storefront ── Bearer JWT ──► /v1/carts/{user}…  ─► cart ─┐        (add_to_cart, remove_from_cart)
//!                               /v1/checkout        ─► order ┤ one store transaction each:
//!                               /v1/orders/{id}              │ state + outbox rows
//!  Stripe ── Stripe-Signature ─► /v1/payments/webhook        │
//!                                                            ▼
//!  relay: outbox ─► saga log ─► inventory · payment · delivery · orders (consumers, dedup)
//!                ─► Notifier (notifications.jsonl)   ─► EventSink (clickstream: purchase, …)
//!  store: EmbeddedStore (redb, default) | DynamoStore (TransactWriteItems)
//! ```
//!
//! Wiring: build a [`CommerceState`] ([`CommerceState::open`] or
//! [`CommerceState::builder`]), start its background work with
//! [`CommerceState::spawn_workers`], and merge [`routes`] into the API router.

pub mod api_error;
pub mod auth;
pub mod cart;
pub mod catalog;
pub mod checkout;
pub mod config;
pub mod error;
mod http;
pub mod idempotency;
pub mod notify;
pub mod payment;
pub mod saga;
pub mod store;
pub mod webhook;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use recstream_ingest::Money;
use recstream_ingest::aws::AwsConfig;
use tokio::sync::{Notify, watch};

pub use api_error::{ApiError, ErrorBody, ErrorDetail};
pub use auth::{Authenticator, Principal};
pub use catalog::{Catalog, Product, ProductView, StoreCatalog};
pub use config::{CommerceConfig, ProviderKind, Secret, Secrets, StoreKind};
pub use error::CommerceError;
pub use http::{openapi_routes, routes};
pub use notify::{FileNotifier, Notification, Notifier};
pub use payment::{PaymentProvider, SimulatedProvider, StripeClient};
pub use saga::orders::{Order, OrderStatus};
pub use saga::{SagaPass, Workers};
pub use store::{CommerceStore, DynamoStore, EmbeddedStore};

use recstream_ingest::sink::EventSink;

/// Time, injectable so tests can move it.
pub trait Clock: Send + Sync + 'static {
    /// Now, epoch ms.
    fn now_ms(&self) -> i64;
}

/// The wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to.
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock standing at `now_ms`.
    pub fn new(now_ms: i64) -> ManualClock {
        ManualClock(AtomicI64::new(now_ms))
    }
    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Wake-ups between the writers, the relay and the consumers.
pub(crate) struct Signals {
    /// Something was written to the outbox.
    pub outbox: Notify,
    /// The saga log's head sequence.
    pub log: watch::Sender<u64>,
}

/// Everything the handlers and services share.
pub(crate) struct Ctx {
    pub store: Arc<dyn CommerceStore>,
    pub catalog: Arc<StoreCatalog>,
    pub provider: Arc<dyn PaymentProvider>,
    pub notifier: Arc<dyn Notifier>,
    pub sink: Arc<dyn EventSink>,
    pub clock: Arc<dyn Clock>,
    pub cfg: CommerceConfig,
    pub auth: Arc<Authenticator>,
    pub webhook_secret: Option<Secret>,
    pub signals: Signals,
    pub consumer_names: Vec<String>,
}

/// The commerce state: cheap to clone, shared by handlers and workers.
#[derive(Clone)]
pub struct CommerceState {
    pub(crate) ctx: Arc<Ctx>,
}

/// Builds a [`CommerceState`]; every part not given is made from the configuration.
pub struct CommerceBuilder {
    cfg: CommerceConfig,
    sink: Arc<dyn EventSink>,
    secrets: Secrets,
    aws: Option<AwsConfig>,
    store: Option<Arc<dyn CommerceStore>>,
    provider: Option<Arc<dyn PaymentProvider>>,
    notifier: Option<Arc<dyn Notifier>>,
    clock: Option<Arc<dyn Clock>>,
    jwks: Option<jsonwebtoken::jwk::JwkSet>,
    seed: Option<Vec<catalog::SeedProduct>>,
    headless: bool,
}

impl CommerceBuilder {
    /// The secrets (default: none).
    pub fn secrets(mut self, s: Secrets) -> Self {
        self.secrets = s;
        self
    }
    /// Needed for `store = "dynamodb"`: table prefix, region, retry policy.
    pub fn aws(mut self, aws: AwsConfig) -> Self {
        self.aws = Some(aws);
        self
    }
    /// The commerce store to use instead of the configured one.
    pub fn store(mut self, s: Arc<dyn CommerceStore>) -> Self {
        self.store = Some(s);
        self
    }
    /// The payment provider to use instead of the configured one.
    pub fn provider(mut self, p: Arc<dyn PaymentProvider>) -> Self {
        self.provider = Some(p);
        self
    }
    /// The notifier to use instead of the notifications file.
    pub fn notifier(mut self, n: Arc<dyn Notifier>) -> Self {
        self.notifier = Some(n);
        self
    }
    /// The clock to use instead of the wall clock (tests).
    pub fn clock(mut self, c: Arc<dyn Clock>) -> Self {
        self.clock = Some(c);
        self
    }
    /// An in-memory JWKS instead of `auth.jwks_path`.
    pub fn jwks(mut self, jwks: jsonwebtoken::jwk::JwkSet) -> Self {
        self.jwks = Some(jwks);
        self
    }
    /// For a host that serves no requests (background work only: the saga, the cart
    /// sweep): no JWT keys are needed or loaded, and every token is refused.
    pub fn headless(mut self) -> Self {
        self.headless = true;
        self
    }
    /// Products to seed instead of `catalog_seed` / the demo catalog.
    pub fn seed(mut self, products: Vec<catalog::SeedProduct>) -> Self {
        self.seed = Some(products);
        self
    }

    /// Opens whatever was not given (store, provider, notifier, authenticator), seeds the
    /// catalog, and returns the state. `Err` for an invalid configuration or a part that
    /// cannot be opened.
    pub async fn build(self) -> Result<CommerceState, CommerceError> {
        let cfg = self.cfg;
        cfg.validate().map_err(CommerceError::BadRequest)?;
        let jwks = match (self.jwks, &cfg.auth.jwks_url) {
            _ if self.headless => None,
            (Some(j), _) => Some(j),
            (None, Some(url)) => Some(
                auth::fetch_jwks(url)
                    .await
                    .map_err(CommerceError::BadRequest)?,
            ),
            (None, None) => None,
        };
        let auth = match jwks {
            _ if self.headless => Ok(Authenticator::refuse_all(&cfg.auth)),
            Some(j) => {
                Authenticator::with_jwks(&cfg.auth, self.secrets.jwt_hs256.as_ref(), Some(j))
            }
            None => Authenticator::new(&cfg.auth, self.secrets.jwt_hs256.as_ref()),
        }
        .map_err(CommerceError::BadRequest)?;
        let store: Arc<dyn CommerceStore> = match self.store {
            Some(s) => s,
            None => match cfg.store {
                StoreKind::Embedded => {
                    Arc::new(EmbeddedStore::open(cfg.data_dir.join("commerce.redb"))?)
                }
                StoreKind::Dynamodb => {
                    let aws = self.aws.unwrap_or_default();
                    let s = DynamoStore::from_env(&aws).await;
                    s.create_table_if_missing().await?;
                    Arc::new(s)
                }
            },
        };
        let provider: Arc<dyn PaymentProvider> = match self.provider {
            Some(p) => p,
            None => match cfg.payments.provider {
                ProviderKind::Simulated => Arc::new(SimulatedProvider::new()),
                ProviderKind::Stripe => {
                    let key = self.secrets.stripe_secret_key.clone().ok_or_else(|| {
                        CommerceError::BadRequest(format!(
                            "payments.provider = \"stripe\" needs {}",
                            Secrets::STRIPE_KEY_ENV
                        ))
                    })?;
                    Arc::new(
                        StripeClient::new(
                            &cfg.payments.stripe_api_base,
                            key,
                            Duration::from_millis(cfg.payments.timeout_ms),
                        )
                        .map_err(CommerceError::BadRequest)?,
                    )
                }
            },
        };
        let notifier: Arc<dyn Notifier> = match self.notifier {
            Some(n) => n,
            None => Arc::new(
                FileNotifier::open(cfg.data_dir.join("notifications.jsonl"))
                    .map_err(|e| CommerceError::Unavailable(e.to_string()))?,
            ),
        };
        let catalog = Arc::new(StoreCatalog::new(store.clone()));
        let seed = match (self.seed, &cfg.catalog_seed) {
            (Some(s), _) => s,
            (None, Some(path)) => catalog::load_feed(path).map_err(CommerceError::BadRequest)?,
            (None, None) => catalog::demo_seed(),
        };
        let added = catalog.seed(&seed).await?;
        tracing::info!(
            store = store.name(),
            provider = provider.name(),
            added,
            "commerce ready"
        );
        let (log, _) = watch::channel(0);
        let ctx = Ctx {
            store,
            catalog,
            provider,
            notifier,
            sink: self.sink,
            clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
            webhook_secret: self.secrets.stripe_webhook_secret,
            cfg,
            auth: Arc::new(auth),
            signals: Signals {
                outbox: Notify::new(),
                log,
            },
            consumer_names: ["inventory", "payment", "delivery", "orders"]
                .map(String::from)
                .to_vec(),
        };
        Ok(CommerceState { ctx: Arc::new(ctx) })
    }
}

impl CommerceState {
    /// A builder from `cfg`, writing clickstream events to `sink`.
    pub fn builder(cfg: CommerceConfig, sink: Arc<dyn EventSink>) -> CommerceBuilder {
        CommerceBuilder {
            cfg,
            sink,
            secrets: Secrets::default(),
            aws: None,
            store: None,
            provider: None,
            notifier: None,
            clock: None,
            jwks: None,
            seed: None,
            headless: false,
        }
    }

    /// From configuration, secrets (usually [`Secrets::from_env`]) and the clickstream sink.
    pub async fn open(
        cfg: CommerceConfig,
        secrets: Secrets,
        sink: Arc<dyn EventSink>,
        aws: Option<AwsConfig>,
    ) -> Result<CommerceState, CommerceError> {
        let mut b = CommerceState::builder(cfg, sink).secrets(secrets);
        if let Some(aws) = aws {
            b = b.aws(aws);
        }
        b.build().await
    }

    /// Starts the relay, the saga consumers and timers, the cart sweep and the expiry
    /// purge. Keep the handle: dropping it stops them.
    pub fn spawn_workers(&self) -> Workers {
        let (stop, rx) = watch::channel(false);
        let ctx = self.ctx.clone();
        let mut tasks = vec![tokio::spawn(saga::outbox::run_relay(
            ctx.clone(),
            rx.clone(),
        ))];
        let (consumers, timers) = self.saga_services();
        for s in consumers {
            tasks.push(tokio::spawn(saga::run_consumer(ctx.clone(), s, rx.clone())));
        }
        for s in timers {
            tasks.push(tokio::spawn(saga::run_ticker(ctx.clone(), s, rx.clone())));
        }
        tasks.push(tokio::spawn(run_sweeper(ctx.clone(), rx.clone())));
        tasks.push(tokio::spawn(run_purger(ctx, rx)));
        Workers::new(stop, tasks)
    }

    /// The saga's participants: every consumer, and those of them with timers.
    fn saga_services(&self) -> (Services, Services) {
        let ctx = &self.ctx;
        let inventory: Arc<dyn saga::Service> =
            Arc::new(saga::inventory::Inventory::new(ctx.clone()));
        let delivery: Arc<dyn saga::Service> = Arc::new(saga::delivery::Delivery::new(ctx.clone()));
        let consumers: Services = vec![
            inventory.clone(),
            Arc::new(saga::payments::Payments::new(ctx.clone())),
            delivery.clone(),
            Arc::new(saga::orders::Orders::new(ctx.clone())),
        ];
        (consumers, vec![inventory, delivery])
    }

    /// Runs the saga once instead of as background tasks — for a host that cannot keep
    /// tasks running between requests (the `saga` Lambda function): the timers, then
    /// relay and consumers in rounds until nothing moves or `budget` is spent, then the
    /// log trim and the expiry purge. Safe to run concurrently with itself and with
    /// [`CommerceState::spawn_workers`]: progress is kept in the store (cursors,
    /// processed markers, conditional log head), never in the process.
    pub async fn run_saga_pass(&self, budget: Duration) -> Result<SagaPass, CommerceError> {
        let (consumers, timers) = self.saga_services();
        let pass = saga::run_pass(&self.ctx, &consumers, &timers, budget).await?;
        if let Err(e) = self
            .ctx
            .store
            .purge_expired(self.ctx.clock.now_ms() / 1000)
            .await
        {
            tracing::warn!(error = %e, "expiry purge failed");
        }
        Ok(pass)
    }

    /// The product catalog.
    pub fn catalog(&self) -> &StoreCatalog {
        &self.ctx.catalog
    }

    /// The catalog, shared (the recommendation filter holds it).
    pub fn catalog_arc(&self) -> Arc<StoreCatalog> {
        self.ctx.catalog.clone()
    }

    /// The one JWT verifier: serving authenticates shoppers, marketing and admins with it.
    pub fn authenticator(&self) -> Arc<Authenticator> {
        self.ctx.auth.clone()
    }

    /// The commerce store.
    pub fn store(&self) -> Arc<dyn CommerceStore> {
        self.ctx.store.clone()
    }

    /// The configuration the state was built with.
    pub fn config(&self) -> &CommerceConfig {
        &self.ctx.cfg
    }

    /// Where the embedded notifier writes (`<data_dir>/notifications.jsonl`).
    pub fn notifications_path(&self) -> PathBuf {
        self.ctx.cfg.data_dir.join("notifications.jsonl")
    }

    /// The order `order_id`, as `GET /v1/orders/{id}` shows it; `None` if unknown.
    pub async fn order(&self, order_id: &str) -> Result<Option<Order>, CommerceError> {
        checkout::order(&self.ctx, order_id).await
    }

    /// One availability sweep over every cart now (the workers run it on an interval).
    pub async fn sweep_carts(&self) -> Result<usize, CommerceError> {
        cart::Carts::new(self.ctx.clone()).sweep().await
    }
}

/// Saga participants, shared by their consumer and timer tasks.
type Services = Vec<Arc<dyn saga::Service>>;

async fn run_sweeper(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_millis(ctx.cfg.sweep_interval_ms);
    let carts = cart::Carts::new(ctx.clone());
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
        match carts.sweep().await {
            Ok(n) if n > 0 => tracing::info!(changed = n, "cart availability sweep"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cart availability sweep failed"),
        }
    }
}

async fn run_purger(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
        if let Err(e) = ctx.store.purge_expired(ctx.clock.now_ms() / 1000).await {
            tracing::warn!(error = %e, "expiry purge failed");
        }
    }
}

/// Ids (user, product, event): 1 to 128 printable characters, not blank, no bidi
/// controls (the decoder's rule, [`recstream_ingest::decode::id_problem`]).
pub(crate) fn check_id(what: &str, id: &str) -> Result<(), CommerceError> {
    match recstream_ingest::decode::id_problem(id) {
        Some(problem) => Err(CommerceError::BadRequest(format!(
            "{what} {problem} (1 to 128 printable characters)"
        ))),
        None => Ok(()),
    }
}

/// Money: a non-negative amount and a three-letter upper-case currency.
pub(crate) fn check_money(m: &Money) -> Result<(), CommerceError> {
    if m.amount < 0 || m.amount > 100_000_000_000 {
        return Err(CommerceError::BadRequest("amount out of range".into()));
    }
    if m.currency.len() != 3 || !m.currency.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(CommerceError::BadRequest(
            "currency must be an ISO 4217 code like USD".into(),
        ));
    }
    Ok(())
}
