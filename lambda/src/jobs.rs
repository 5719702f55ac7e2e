//! The scheduled and table-driven functions: the order saga, the cart availability sweep
//! and the training job, each a call into the crate that owns the work (no second
//! implementation here).
//!
//! ```text
//!  commerce table stream (outbox INSERTs) ─┐
//!  EventBridge schedule (rate(1 minute))  ─┴► saga ─► CommerceState::run_saga_pass
//!        timers ─► relay outbox ─► inventory, payment, delivery, orders consumers … until idle
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
use std::time::Duration;

use aws_lambda_events::event::dynamodb;
use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use recstream::cmd_model::{self, TrainSource};
use recstream::config::{Config, Mode};
use recstream::runtime::Runtime;
use recstream_commerce::{CommerceState, SagaPass, Secrets, StoreKind};
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

/// The commerce state of the saga and cart-sweep functions: the configured store
/// (DynamoDB in AWS mode), its events to `sink`. They serve no requests, so the state is
/// headless: no JWT settings are needed (and every token would be refused).
pub async fn commerce_state(
    cfg: &Config,
    sink: Arc<dyn EventSink>,
) -> Result<CommerceState, LambdaError> {
    let mut c = cfg.commerce.clone();
    if cfg.mode == Mode::Aws && c.store == StoreKind::Embedded {
        c.store = StoreKind::Dynamodb;
    }
    let mut b = CommerceState::builder(c.clone(), sink)
        .secrets(Secrets::from_env())
        .headless();
    if c.store == StoreKind::Dynamodb {
        b = b.aws(cfg.aws.clone());
    }
    Ok(b.build().await?)
}

/// One availability sweep over every cart.
pub async fn sweep_carts(state: &CommerceState) -> Result<SweepSummary, LambdaError> {
    let carts_changed = state.sweep_carts().await?;
    tracing::info!(carts_changed, "cart sweep done");
    Ok(SweepSummary { carts_changed })
}

/// What wakes the saga function. The payload only says *that* something happened: the
/// work is found from the store (outbox rows, the log after each consumer's cursor,
/// due timers), so a lost, repeated or reordered wake-up changes nothing.
#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
pub enum SagaTrigger {
    /// A batch from the commerce table's DynamoDB stream (filtered to outbox inserts).
    Stream(dynamodb::Event),
    /// The EventBridge schedule that drives the timers (reservation expiry, delivery)
    /// and picks up rows whose destination failed in an earlier pass.
    Schedule(EventBridgeEvent),
}

impl SagaTrigger {
    /// For the log line: the source and how many records woke the function.
    pub fn describe(&self) -> (&'static str, usize) {
        match self {
            SagaTrigger::Stream(e) => ("dynamodb-stream", e.records.len()),
            SagaTrigger::Schedule(_) => ("schedule", 0),
        }
    }
}

/// Time kept back from the invocation's deadline for the response and the log flush.
const DEADLINE_MARGIN: Duration = Duration::from_secs(5);

/// One saga pass, ending well before the invocation's `deadline` (epoch ms, the Lambda
/// context's) and within `max_budget`. A pass cut off by the budget is not an error: the
/// cursors keep its progress and the next wake-up carries on. Store failures are: the
/// function fails and Lambda retries the stream batch.
pub async fn saga_pass(
    state: &CommerceState,
    trigger: &SagaTrigger,
    deadline_ms: u64,
    max_budget: Duration,
) -> Result<SagaPass, LambdaError> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let left = Duration::from_millis(deadline_ms.saturating_sub(now_ms));
    let budget = left.saturating_sub(DEADLINE_MARGIN).min(max_budget);
    let (source, records) = trigger.describe();
    let pass = state.run_saga_pass(budget).await?;
    tracing::info!(
        source,
        records,
        relayed = pass.relayed,
        consumed = pass.consumed,
        rounds = pass.rounds,
        drained = pass.drained,
        outbox_retrying = pass.outbox_retrying,
        "saga pass done"
    );
    Ok(pass)
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
