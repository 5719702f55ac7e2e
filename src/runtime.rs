//! Wiring: builds the stores behind the seams (embedded or AWS), starts the shard
//! processors of `recstream-pipeline` and serves HTTP.
//!
//! ```text
//!  mode = embedded   redb (features, checkpoints) · local bucket dir · in-process cold start
//!                    collector ─► in-process channel shard
//!  mode = aws        DynamoDB (features) · lease table (checkpoints) · S3 · Redis
//!                    collector ─► Kinesis PutRecords; shards ◄─ KinesisWorkers (recstream-pipeline)
//!  both              models/CURRENT in the object store ─► ModelHandle (hot reload)
//!                    ─► ranking, similar products, segments, cold-start lists
//!                    served lists ─► the collector's sink; feedback/ (the processors'
//!                    join) ─► FeedbackFeed ─► the online learner
//! ```

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use recstream_commerce::{CommerceState, Secrets, StoreKind};
use recstream_features::{EmbeddedStore, FeatureStore, StateStore};
use recstream_ingest::EventSink;
use recstream_ingest::source::channel::ChannelSender;
use recstream_ingest::{
    CheckpointStore, IngestError, LocalObjectStore, ObjectStore, SeqNo, ShardId, Source,
};
use recstream_model::{ModelArtifact, ModelHandle};
use recstream_pipeline::kinesis::{AwsParts, KinesisWorkers};
use recstream_pipeline::{Pipeline, ProductCatalog, ShardStats, ShardTask, Sinks};
use recstream_scoring::cold_start::redis::RedisColdStartCache;
use recstream_scoring::feedback::FeedbackFeed;
use recstream_scoring::{ColdStartCache, ColdStartList, InProcessCache, Recommender};
use recstream_serving::segments::SegmentsState;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, Mode};
use crate::kinesis::KinesisSink;

/// The stores of one process, behind their traits.
#[derive(Clone)]
pub struct Runtime {
    /// The configuration the runtime was opened with.
    pub cfg: Config,
    /// The feature, checkpoint and object stores the shard processors write to.
    pub sinks: Sinks,
    /// The cold-start cache (in process, or Redis in AWS mode).
    pub cold: Arc<dyn ColdStartCache>,
    /// The recommender the HTTP API answers with.
    pub recommender: Arc<Recommender>,
    /// The model in use (none until `recstream train` wrote one); hot-reloaded.
    pub model: Arc<ModelHandle>,
    /// The user segmentation the marketing endpoints serve (from the model in use).
    pub segments: SegmentsState,
    /// Set in AWS mode.
    pub aws: Option<AwsParts>,
}

impl Runtime {
    /// The implementations `cfg.mode` names.
    pub async fn open(cfg: Config) -> anyhow::Result<Runtime> {
        match cfg.mode {
            Mode::Embedded => Runtime::embedded(cfg),
            Mode::Aws => Runtime::aws(cfg).await,
        }
    }

    /// The embedded set: redb feature store and checkpoints, a local object store, an
    /// in-process cold-start cache — all under `embedded.data_dir`.
    pub fn embedded(cfg: Config) -> anyhow::Result<Runtime> {
        let dir = cfg.embedded.data_dir.clone();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let store = Arc::new(
            EmbeddedStore::open(dir.join("features.redb"), cfg.features.clone())
                .context("opening the embedded feature store")?,
        );
        let objects: Arc<dyn ObjectStore> = Arc::new(LocalObjectStore::new(dir.join("bucket")));
        let cold: Arc<dyn ColdStartCache> = Arc::new(InProcessCache::new());
        let checkpoints: Arc<dyn CheckpointStore> = Arc::new(
            store
                .checkpoints()
                .context("opening the embedded checkpoint store")?,
        );
        let state: Arc<dyn StateStore> = store.clone();
        let features: Arc<dyn FeatureStore> = store;
        Ok(Runtime::assemble(
            cfg,
            Sinks {
                features,
                state,
                checkpoints,
                objects,
                // The collector checks product ids against the shop it serves; the
                // files a replay reads are the operator's own.
                catalog: None,
            },
            cold,
            None,
        ))
    }

    /// The AWS set: DynamoDB features, checkpoints in the Kinesis lease table, S3 for the
    /// archive, snapshots and models, Redis for cold start. Endpoints and credentials come
    /// from the SDK's environment (`AWS_ENDPOINT_URL`, `AWS_REGION`, …).
    pub async fn aws(cfg: Config) -> anyhow::Result<Runtime> {
        let parts = AwsParts::from_env(&cfg.aws, &cfg.kinesis, cfg.features.clone()).await;
        let cold: Arc<dyn ColdStartCache> = Arc::new(
            RedisColdStartCache::connect(&cfg.aws.redis_url)
                .await
                .context("setting up the redis cold-start cache")?,
        );
        let mut sinks = parts.sinks();
        sinks.catalog = catalog_check(&cfg).await;
        Ok(Runtime::assemble(cfg, sinks, cold, Some(parts)))
    }

    fn assemble(
        cfg: Config,
        sinks: Sinks,
        cold: Arc<dyn ColdStartCache>,
        aws: Option<AwsParts>,
    ) -> Runtime {
        let model = Arc::new(ModelHandle::new());
        let recommender = Arc::new(
            Recommender::new(sinks.features.clone(), cold.clone(), cfg.scoring.clone())
                .with_model(model.clone()),
        );
        Runtime {
            cfg,
            sinks,
            cold,
            recommender,
            model,
            segments: SegmentsState::default(),
            aws,
        }
    }

    /// The shard processors' stores and settings.
    pub fn pipeline(&self) -> Pipeline {
        Pipeline::new(
            self.sinks.clone(),
            self.cfg.features.clone(),
            self.cfg.processor.clone(),
        )
    }

    /// Starts a processor for one shard; `make_source` gets the position to resume after.
    pub async fn spawn_shard<F>(
        &self,
        shard: ShardId,
        make_source: F,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<(Arc<ShardStats>, ShardTask)>
    where
        F: FnOnce(Option<SeqNo>) -> Result<Box<dyn Source>, IngestError>,
    {
        self.pipeline()
            .spawn_shard(shard.clone(), make_source, shutdown)
            .await
            .with_context(|| format!("starting shard {shard}"))
    }

    /// Runs the Kinesis workers (AWS mode) until `shutdown`.
    pub async fn run_workers(self, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let aws = self
            .aws
            .clone()
            .context("the Kinesis workers need mode = \"aws\"")?;
        KinesisWorkers::new(
            self.pipeline(),
            aws,
            &self.cfg.aws,
            self.cfg.kinesis.consumer.clone(),
        )
        .run(shutdown)
        .await
        .context("kinesis workers")
    }

    /// Where `POST /v1/events` (and the commerce flows) put events: the in-process
    /// collector shard (embedded; its task is returned) or Kinesis (AWS).
    pub async fn spawn_collector(
        &self,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<(Arc<dyn EventSink>, Option<ShardTask>)> {
        if let Some(aws) = &self.aws {
            return Ok((Arc::new(KinesisSink::new(aws.producer.clone())), None));
        }
        let (tx, handle) = self.spawn_channel_collector(shutdown).await?;
        Ok((Arc::new(tx), Some(handle)))
    }

    /// Starts the in-process collector shard and returns its sender.
    pub async fn spawn_channel_collector(
        &self,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<(ChannelSender, ShardTask)> {
        self.pipeline()
            .spawn_channel_shard(
                ShardId::new("collector"),
                self.cfg.server.collector_queue,
                shutdown,
            )
            .await
            .context("starting the collector shard")
    }

    /// Publishes popularity from the feature store as the overall cold-start list while no
    /// model is loaded (a loaded model's lists are published by [`Runtime::reload_model`]).
    pub async fn refresh_cold_start(&self) -> anyhow::Result<()> {
        if self.model.get().is_some() {
            return Ok(());
        }
        let trending = self.sinks.features.trending().await?;
        let list = ColdStartList {
            items: trending.items.clone(),
            source: "popularity".into(),
        };
        self.cold
            .put(recstream_scoring::cold_start::OVERALL, &list)
            .await?;
        Ok(())
    }

    /// Loads `models/CURRENT` if it changed; publishes the new model's segments and
    /// cold-start lists. Returns the new model, if any.
    pub async fn reload_model(&self) -> anyhow::Result<Option<Arc<ModelArtifact>>> {
        let Some(m) = self.model.refresh(self.sinks.objects.as_ref()).await? else {
            return Ok(None);
        };
        self.recommender.sync_model();
        self.segments.set(m.segments.clone());
        crate::cmd_model::publish_cold_start(&m, self.cold.as_ref()).await?;
        Ok(Some(m))
    }

    /// A second server over the same stores, stream and cold-start cache, with its own
    /// recommender, model handle and online learner: what another `recstream run`
    /// process is in AWS mode. An embedded store is opened once per process, so this is
    /// how two servers share one (the two-server tests).
    pub fn another_server(&self) -> Runtime {
        Runtime::assemble(
            self.cfg.clone(),
            self.sinks.clone(),
            self.cold.clone(),
            self.aws.clone(),
        )
    }

    /// Feeds the online learner the feedback the shard processors joined to served lists
    /// (`feedback/` in the object store), every `scoring.feedback_poll_ms` until
    /// `shutdown`. Nothing to do without online learning.
    pub fn spawn_feedback_feed(
        &self,
        mut shutdown: watch::Receiver<bool>,
    ) -> Option<JoinHandle<()>> {
        let learner = self.recommender.learner()?.clone();
        let feed = FeedbackFeed::new(self.sinks.objects.clone(), learner);
        let every = Duration::from_millis(self.cfg.scoring.feedback_poll_ms);
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.wait_for(|s| *s) => return,
                    _ = tick.tick() => {}
                }
                match feed.poll().await {
                    Ok(l) if l.positives + l.negatives > 0 => {
                        tracing::debug!(
                            positives = l.positives,
                            negatives = l.negatives,
                            "online model learned joined feedback"
                        );
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "feedback not read; retrying"),
                }
            }
        }))
    }

    /// Checks for a new model every `model.reload_interval_ms` until `shutdown`, and feeds
    /// its live model the joined feedback ([`Runtime::spawn_feedback_feed`]).
    pub fn spawn_model_reloader(&self, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        let rt = self.clone();
        let every = Duration::from_millis(self.cfg.model.reload_interval_ms);
        let feed = self.spawn_feedback_feed(shutdown.clone());
        tokio::spawn(async move {
            if every.is_zero() {
                if let Some(f) = feed {
                    let _ = f.await;
                }
                return;
            }
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = shutdown.wait_for(|s| *s) => return,
                    _ = tick.tick() => {}
                }
                if let Err(e) = rt.reload_model().await {
                    tracing::warn!(error = %e, "model reload failed; keeping the current model");
                }
            }
        })
    }

    /// The commerce handlers' state over the configured store (embedded redb under
    /// `commerce.data_dir`, or DynamoDB), with secrets from the environment. `None` (with
    /// a warning) when no way to authenticate callers is configured: the commerce
    /// endpoints are then not served, everything else is.
    pub async fn commerce(
        &self,
        sink: Arc<dyn EventSink>,
    ) -> anyhow::Result<Option<CommerceState>> {
        let secrets = Secrets::from_env();
        let auth = &self.cfg.commerce.auth;
        if secrets.jwt_hs256.is_none() && auth.jwks_path.is_none() && auth.jwks_url.is_none() {
            tracing::warn!(
                "commerce endpoints disabled: set commerce.auth.jwks_url or jwks_path (RS256, e.g. Cognito) or {} (HS256)",
                Secrets::JWT_HS256_ENV
            );
            return Ok(None);
        }
        let mut cfg = self.cfg.commerce.clone();
        if self.cfg.mode == Mode::Aws && cfg.store == StoreKind::Embedded {
            tracing::info!("mode = aws: commerce state in DynamoDB");
            cfg.store = StoreKind::Dynamodb;
        }
        let aws = (cfg.store == StoreKind::Dynamodb).then(|| self.cfg.aws.clone());
        CommerceState::open(cfg, secrets, sink, aws)
            .await
            .map(Some)
            .context("opening the commerce state")
    }

    /// The HTTP API as every front door serves it (this process's listener, the Lambda
    /// http-api function): recommendations, the collector, segments and, when given,
    /// the commerce handlers, with the catalog filter, the credentials and the
    /// hardening layers (JSON errors, URI limit, request timeout, catch-panic).
    pub fn app(
        &self,
        collector: Arc<dyn EventSink>,
        commerce: Option<CommerceState>,
        ready: Arc<AtomicBool>,
    ) -> axum::Router {
        // One catalog: with a shop, only what it can sell is recommended.
        if let Some(c) = &commerce {
            self.recommender.set_availability(Arc::new(
                recstream_serving::catalog::CatalogAvailability::new(c.catalog_arc()),
            ));
        }
        // Shoppers, marketing and admins by commerce's JWT verifier; services by API key.
        let access = Arc::new(recstream_serving::Access::new(
            &self.cfg.server.auth,
            commerce.as_ref().map(CommerceState::authenticator),
        ));
        // Served lists go where the collector's events go (one stream), off the request path.
        let served = self.cfg.server.served_lists.enabled.then(|| {
            recstream_serving::publish::ServedLists::spawn(
                collector.clone(),
                &self.cfg.server.served_lists,
                self.cfg.processor.max_record_bytes,
            )
            .0
        });
        let state = recstream_serving::AppState {
            recommender: self.recommender.clone(),
            served,
            collector,
            access,
            ready,
            max_record_bytes: self.cfg.processor.max_record_bytes,
            event_time: recstream_serving::EventTimeBounds {
                max_future_skew_ms: self.cfg.processor.max_future_skew_ms,
                max_event_age_ms: self.cfg.processor.max_event_age_ms,
            },
        };
        recstream_serving::server::harden(
            recstream_serving::api(state, self.segments.clone(), commerce),
            &self.cfg.server.limits,
        )
    }

    /// Serves the HTTP API ([`Runtime::app`]) on `listener` until `shutdown` turns true,
    /// with the connection limits of `server.limits`.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        collector: Arc<dyn EventSink>,
        commerce: Option<CommerceState>,
        ready: Arc<AtomicBool>,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let app = self.app(collector, commerce, ready);
        let limits = self.cfg.server.limits.clone();
        recstream_serving::server::serve(listener, app, limits, shutdown)
            .await
            .context("http server")
    }
}

/// Serves `GET /metrics` on the internal listener `addr` until `shutdown`; returns the
/// bound address (the port may be 0 in the configuration).
pub async fn serve_metrics(
    addr: std::net::SocketAddr,
    handle: metrics_exporter_prometheus::PrometheusHandle,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics listener {addr}"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        let app = recstream_serving::metrics_router(handle);
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|s| *s).await;
            })
            .await
        {
            tracing::warn!(error = %e, "metrics listener failed");
        }
    });
    Ok(bound)
}

/// Installs the Prometheus recorder once per process.
pub fn install_metrics() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .ok()
}

/// Turns true on Ctrl-C / SIGTERM, or after `exit_after`.
pub fn shutdown_signal(
    exit_after: Option<Duration>,
) -> (watch::Sender<bool>, watch::Receiver<bool>) {
    let (tx, rx) = watch::channel(false);
    let t = tx.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        #[cfg(unix)]
        let terminate = term.recv();
        #[cfg(not(unix))]
        let terminate = std::future::pending::<Option<()>>();
        let timer = async {
            match exit_after {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = ctrl_c => tracing::info!("ctrl-c: shutting down"),
            _ = terminate => tracing::info!("SIGTERM: shutting down"),
            _ = timer => tracing::info!("exit-after elapsed: shutting down"),
        }
        let _ = t.send(true);
    });
    (tx, rx)
}

/// Removes a directory tree if it exists (demo runs start clean).
pub fn reset_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

/// The catalog the Kinesis shard processors check product ids against, when
/// `processor.catalog_check` is on: commerce's catalog in its DynamoDB table (existence
/// cached; see [`recstream_serving::catalog::KnownProducts`]).
pub async fn catalog_check(cfg: &Config) -> Option<Arc<dyn ProductCatalog>> {
    if !cfg.processor.catalog_check {
        return None;
    }
    let store: Arc<dyn recstream_commerce::CommerceStore> =
        Arc::new(recstream_commerce::DynamoStore::from_env(&cfg.aws).await);
    let catalog = Arc::new(recstream_commerce::StoreCatalog::new(store));
    Some(Arc::new(CatalogCheck(
        recstream_serving::catalog::KnownProducts::new(catalog, 1_000_000),
    )))
}

/// [`ProductCatalog`] over commerce's catalog: a product is known when the catalog holds
/// it, sellable or not; `product` events become [`recstream_commerce::StoreCatalog::upsert`]s.
struct CatalogCheck(recstream_serving::catalog::KnownProducts);

#[async_trait::async_trait]
impl ProductCatalog for CatalogCheck {
    async fn known(&self, ids: &[&str]) -> Result<Vec<bool>, String> {
        self.0.known(ids).await
    }

    async fn write(
        &self,
        products: &[&recstream_ingest::Event],
    ) -> Result<Vec<Option<String>>, String> {
        use recstream_commerce::CommerceError;
        let mut out = Vec::with_capacity(products.len());
        for e in products {
            let (Some(id), Some(p), Some(price)) = (&e.product_id, &e.product, &e.price) else {
                out.push(Some(
                    "a product event needs product_id, product and price".into(),
                ));
                continue;
            };
            let entry = recstream_commerce::catalog::SeedProduct {
                id: id.to_string(),
                name: p.title.clone(),
                category: e.category.as_ref().map(ToString::to_string),
                price: price.clone(),
                stock: p.stock,
                active: p.active,
            };
            match self.0.catalog().upsert(&entry).await {
                Ok(_) => {
                    self.0.remember(id);
                    out.push(None);
                }
                // The entry itself is refused; a store failure or a write conflict with
                // a concurrent update is retried with the batch.
                Err(
                    CommerceError::BadRequest(m) | CommerceError::Unprocessable { message: m, .. },
                ) => out.push(Some(m)),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(out)
    }
}
