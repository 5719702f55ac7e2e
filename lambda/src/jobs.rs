//! The scheduled functions: the cart availability sweep and the training job, each a
//! call into the crate that owns the work (no second implementation here).
//!
//! ```text
//!  EventBridge schedule (rate(15 minutes)) ─► cart-sweep ─► CommerceState::sweep_carts
//!  EventBridge schedule (cron, nightly)    ─► train      ─► recstream::cmd_model::train
//!        archive events/ in S3 ─► models/<version>/ + models/CURRENT ─► cold-start lists (Redis)
//! ```
//!
//! Training is CPU- and memory-bound and its run time grows with the archive: on Lambda it
//! fits while a training run stays under the 15-minute limit (the template gives the
//! function 10 GB, 6 vCPUs). Past that, the same `train` binary runs as an ECS/Fargate
//! scheduled task (docs/operations.md) — the entry point is the same.

use std::sync::Arc;

use recstream::cmd_model::{self, TrainSource};
use recstream::config::{Config, Mode};
use recstream::runtime::Runtime;
use recstream_commerce::{CommerceState, Secrets, StoreKind};
use recstream_ingest::EventSink;
use serde::Serialize;
use tokio::sync::watch;

use crate::error::LambdaError;

/// What a sweep did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SweepSummary {
    /// Carts changed (lines removed or flagged because the product is gone or out of stock).
    pub carts_changed: usize,
}

/// The commerce state of the cart-sweep function: the configured store (DynamoDB in AWS
/// mode), its events to `sink`. The sweep authenticates nobody, so no JWT settings are
/// needed here.
pub async fn commerce_state(
    cfg: &Config,
    sink: Arc<dyn EventSink>,
) -> Result<CommerceState, LambdaError> {
    let mut c = cfg.commerce.clone();
    if cfg.mode == Mode::Aws && c.store == StoreKind::Embedded {
        c.store = StoreKind::Dynamodb;
    }
    let aws = (c.store == StoreKind::Dynamodb).then(|| cfg.aws.clone());
    Ok(CommerceState::open(c, Secrets::from_env(), sink, aws).await?)
}

/// One availability sweep over every cart.
pub async fn sweep_carts(state: &CommerceState) -> Result<SweepSummary, LambdaError> {
    let carts_changed = state.sweep_carts().await?;
    tracing::info!(carts_changed, "cart sweep done");
    Ok(SweepSummary { carts_changed })
}

/// Opens the runtime for a job and the sink commerce writes its events to (Kinesis in
/// AWS mode, the in-process collector shard otherwise).
pub async fn open_runtime(
    cfg: Config,
) -> Result<(Runtime, Arc<dyn EventSink>, watch::Sender<bool>), LambdaError> {
    let rt = Runtime::open(cfg).await.map_err(LambdaError::startup)?;
    let (tx, rx) = watch::channel(false);
    let (sink, _task) = rt.spawn_collector(rx).await.map_err(LambdaError::startup)?;
    Ok((rt, sink, tx))
}

/// What a training run did.
#[derive(Debug, Clone, Serialize)]
pub struct TrainOutcome {
    /// The model version written (`models/<version>/`, now `CURRENT`).
    pub version: String,
    /// Archived events trained on.
    pub events: u64,
    /// Cold-start lists published to the cold-start cache.
    pub cold_start_lists: usize,
    /// Wall time of the run, seconds.
    pub wall_seconds: f64,
}

/// Trains on the archive in the configured object store (`events/`), writes
/// `models/<version>/` and moves `models/CURRENT`, then publishes the cold-start lists
/// to the cold-start cache — `recstream train` in AWS mode, as a function.
pub async fn train(rt: &Runtime) -> Result<TrainOutcome, LambdaError> {
    let train_err = |e: anyhow::Error| LambdaError::Train(format!("{e:#}"));
    let (summary, artifact) = cmd_model::train(
        TrainSource::Archive {
            store: rt.sinks.objects.clone(),
            prefix: "events/".into(),
        },
        rt.sinks.objects.clone(),
        Default::default(),
        false,
    )
    .await
    .map_err(train_err)?;
    let lists = cmd_model::publish_cold_start(&artifact, rt.cold.as_ref())
        .await
        .map_err(train_err)?;
    tracing::info!(version = %summary.version, events = summary.meta.events, lists, "model trained and published");
    Ok(TrainOutcome {
        version: summary.version,
        events: summary.meta.events,
        cold_start_lists: lists,
        wall_seconds: summary.wall_seconds,
    })
}
