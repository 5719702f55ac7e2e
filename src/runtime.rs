//! Wiring: builds the stores behind the seams, runs shard processors and the HTTP server.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use recstream_features::{CheckpointStore, EmbeddedStore, FeatureStore};
use recstream_ingest::source::channel::{ChannelSender, ChannelSource};
use recstream_ingest::{LocalObjectStore, ObjectStore, ShardId, Source};
use recstream_scoring::{ColdStartCache, ColdStartList, InProcessCache, Recommender};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::pipeline::{ShardProcessor, ShardStats, ShardSummary, Sinks, resume};

/// The stores of one process, behind their traits.
#[derive(Clone)]
pub struct Runtime {
    pub cfg: Config,
    pub sinks: Sinks,
    pub cold: Arc<dyn ColdStartCache>,
    pub recommender: Arc<Recommender>,
}

impl Runtime {
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
        let features: Arc<dyn FeatureStore> = store.clone();
        let checkpoints: Arc<dyn CheckpointStore> = store;
        let recommender = Arc::new(Recommender::new(
            features.clone(),
            cold.clone(),
            cfg.scoring.clone(),
        ));
        Ok(Runtime {
            cfg,
            sinks: Sinks {
                features,
                checkpoints,
                objects,
            },
            cold,
            recommender,
        })
    }

    /// Starts a processor for one shard; `make_source` gets the position to resume after.
    pub async fn spawn_shard<F>(
        &self,
        shard: ShardId,
        make_source: F,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<(Arc<ShardStats>, JoinHandle<anyhow::Result<ShardSummary>>)>
    where
        F: FnOnce(Option<recstream_ingest::SeqNo>) -> anyhow::Result<Box<dyn Source>>,
    {
        let r = resume(&self.sinks, &shard, &self.cfg.features)
            .await
            .with_context(|| format!("resuming shard {shard}"))?;
        let source = make_source(r.checkpoint.committed.clone())?;
        let processor =
            ShardProcessor::new(source, r, self.sinks.clone(), self.cfg.processor.clone());
        let stats = processor.stats();
        let handle = tokio::spawn(async move {
            processor
                .run(shutdown)
                .await
                .with_context(|| format!("processing shard {shard}"))
        });
        Ok((stats, handle))
    }

    /// Starts the in-process collector shard and returns its sender.
    pub async fn spawn_collector(
        &self,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<(ChannelSender, JoinHandle<anyhow::Result<ShardSummary>>)> {
        let mut sender = None;
        let queue = self.cfg.server.collector_queue;
        let (_, handle) = self
            .spawn_shard(
                ShardId::new("collector"),
                |after| {
                    let (tx, source) = ChannelSource::new(queue, after);
                    sender = Some(tx);
                    Ok(Box::new(source) as Box<dyn Source>)
                },
                shutdown,
            )
            .await?;
        Ok((sender.expect("set by the factory"), handle))
    }

    /// Recomputes the cold-start lists (popular overall) from the feature store.
    pub async fn refresh_cold_start(&self) -> anyhow::Result<()> {
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

    /// Serves the HTTP API on `listener` until `shutdown` turns true.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        collector: Arc<dyn recstream_serving::EventSink>,
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
        ready: Arc<AtomicBool>,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let state = recstream_serving::AppState {
            recommender: self.recommender.clone(),
            collector,
            metrics,
            ready,
            max_record_bytes: self.cfg.processor.max_record_bytes,
        };
        axum::serve(listener, recstream_serving::router(state))
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|s| *s).await;
            })
            .await
            .context("http server")
    }
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
