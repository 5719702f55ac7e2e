//! AWS mode: the glue between the Kinesis parts of `ingest` and the shard processor.
//!
//! ```text
//!  LeaseCoordinator::spawn ─► LeaseHandle per taken shard
//!        └─► run_workers: resume(checkpoint in the lease, snapshot in S3)
//!              ─► KinesisShardSource (with the lease) ─► ShardProcessor ─► DynamoDB / S3
//!              ─► checkpoints via LeaseCheckpoints (conditional on holding the lease)
//!              ─► shard read to its end: lease finished, children taken next round
//!  POST /v1/events, commerce ─► KinesisSink ─► KinesisProducer (PutRecords)
//!  `recstream init` ─► init(): stream, tables, lease table, bucket (idempotent)
//! ```

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use recstream_features::{CheckpointStore, StoreError};
use recstream_ingest::sink::{EventSink, OutRecord, SinkError};
use recstream_ingest::source::kinesis::{
    KinesisProducer, KinesisShardSource, LeaseCoordinator, LeaseHandle, ensure_stream,
};
use recstream_ingest::{IngestError, ShardCheckpoint, ShardId, Source};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::runtime::{AwsParts, Runtime};

/// The checkpoint store of AWS mode: the checkpoint lives in the shard's lease item and
/// is written only while this worker holds the lease (same tenure).
pub struct LeaseCheckpoints(pub LeaseCoordinator);

fn store_error(e: IngestError) -> StoreError {
    match e {
        IngestError::LeaseLost { shard, owner } => StoreError::LeaseLost { shard, owner },
        IngestError::Aws {
            operation,
            message,
            retriable,
            ..
        } => StoreError::Dynamo {
            operation,
            message,
            retriable,
        },
        other => StoreError::Corrupt {
            what: "lease",
            message: other.to_string(),
        },
    }
}

#[async_trait]
impl CheckpointStore for LeaseCheckpoints {
    async fn load_checkpoint(
        &self,
        shard: &ShardId,
    ) -> Result<Option<ShardCheckpoint>, StoreError> {
        self.0.load_checkpoint(shard).await.map_err(store_error)
    }

    async fn save_checkpoint(
        &self,
        shard: &ShardId,
        cp: &ShardCheckpoint,
    ) -> Result<(), StoreError> {
        self.0.save_checkpoint(shard, cp).await.map_err(store_error)
    }
}

/// The collector's sink in AWS mode: PutRecords, partition key = user id.
pub struct KinesisSink {
    producer: Arc<KinesisProducer>,
}

impl KinesisSink {
    pub fn new(producer: Arc<KinesisProducer>) -> KinesisSink {
        KinesisSink { producer }
    }
}

#[async_trait]
impl EventSink for KinesisSink {
    async fn send(&self, records: Vec<OutRecord>) -> Result<(), SinkError> {
        let records = records
            .into_iter()
            .map(|r| (r.partition_key, r.data))
            .collect();
        match self.producer.put(records).await {
            Ok(_) => Ok(()),
            Err(e) if e.retriable() => Err(SinkError::Busy(e.to_string())),
            Err(e) => Err(SinkError::Unavailable(e.to_string())),
        }
    }
}

/// Creates what AWS mode needs unless it exists: the stream, the feature tables, the
/// lease table, the commerce table and the bucket. Idempotent.
pub async fn init(rt: &Runtime) -> anyhow::Result<Vec<String>> {
    let aws = rt
        .aws
        .as_ref()
        .context("`recstream init` needs mode = \"aws\" (the embedded stores create themselves)")?;
    let cfg = &rt.cfg.aws;
    let mut done = Vec::new();
    let kinesis = recstream_ingest::source::kinesis::SdkKinesis::from_env(cfg).await;
    let created = ensure_stream(
        kinesis.client(),
        &cfg.stream,
        cfg.shards,
        &cfg.retry_policy(),
    )
    .await?;
    done.push(format!(
        "stream {} ({})",
        cfg.stream,
        if created { "created" } else { "exists" }
    ));
    aws.dynamo.create_tables_if_missing().await?;
    done.push(format!("tables {}", aws.dynamo.table_names().join(", ")));
    aws.coordinator.create_table_if_missing().await?;
    done.push(format!("lease table {}", aws.coordinator.table()));
    let commerce = recstream_commerce::DynamoStore::from_env(cfg).await;
    commerce.create_table_if_missing().await?;
    done.push(format!("commerce table {}", commerce.table()));
    aws.s3.create_bucket_if_missing().await?;
    done.push(format!("bucket {}", aws.s3.bucket()));
    Ok(done)
}

/// Puts events into the stream with PutRecords, in chunks (partition key = user id).
pub async fn put_events(
    producer: &KinesisProducer,
    records: Vec<(String, Bytes)>,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<u64> {
    let mut sent = 0u64;
    let chunk = 5_000;
    let mut it = records.into_iter().peekable();
    while it.peek().is_some() {
        let part: Vec<(String, Bytes)> = it.by_ref().take(chunk).collect();
        let n = part.len() as u64;
        producer.put(part).await.context("PutRecords")?;
        sent += n;
        progress(sent);
    }
    Ok(sent)
}

/// Processes every shard this worker holds a lease for until `shutdown`: one
/// [`crate::pipeline::ShardProcessor`] per lease, stopped when the lease is lost.
pub async fn run_workers(rt: Runtime, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let aws: AwsParts = rt
        .aws
        .clone()
        .context("the Kinesis workers need mode = \"aws\"")?;
    let coordinator = aws.coordinator.clone();
    coordinator
        .create_table_if_missing()
        .await
        .context("lease table")?;
    tracing::info!(
        worker = coordinator.worker_id(),
        stream = coordinator.stream(),
        "kinesis worker started"
    );
    let (mut leases, background) = coordinator.spawn(shutdown.clone());
    let mut tasks: JoinSet<(ShardId, anyhow::Result<()>)> = JoinSet::new();
    let mut running: HashSet<ShardId> = HashSet::new();
    let mut stop = shutdown.clone();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            lease = leases.recv() => {
                let Some(lease) = lease else { break };
                let shard = lease.shard().clone();
                if !running.insert(shard.clone()) {
                    continue;
                }
                let (rt, aws, shutdown) = (rt.clone(), aws.clone(), shutdown.clone());
                tasks.spawn(async move {
                    let r = process_lease(&rt, &aws, lease, shutdown).await;
                    (shard, r)
                });
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                finished(done, &mut running);
            }
        }
    }
    while let Some(done) = tasks.join_next().await {
        finished(done, &mut running);
    }
    let _ = background.await;
    coordinator.release().await.context("releasing leases")?;
    tracing::info!(worker = coordinator.worker_id(), "kinesis worker stopped");
    Ok(())
}

fn finished(
    done: Result<(ShardId, anyhow::Result<()>), tokio::task::JoinError>,
    running: &mut HashSet<ShardId>,
) {
    match done {
        Ok((shard, Ok(()))) => {
            running.remove(&shard);
        }
        Ok((shard, Err(e))) => {
            if is_lease_lost(&e) {
                tracing::info!(%shard, "lease lost; another worker carries on from the checkpoint");
            } else {
                tracing::error!(%shard, error = format!("{e:#}"), "shard processor failed; its lease was released and is retaken on a later round");
            }
            running.remove(&shard);
        }
        Err(e) => tracing::error!(error = %e, "shard task panicked"),
    }
}

/// One lease: resume from its checkpoint, process until the shard ends, the lease is lost
/// or the process shuts down.
async fn process_lease(
    rt: &Runtime,
    aws: &AwsParts,
    lease: LeaseHandle,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let shard = lease.shard().clone();
    tracing::info!(%shard, checkpoint = ?lease.checkpoint().and_then(|c| c.committed.clone()), "lease taken");
    // The processor stops on shutdown or when the lease is lost.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut lost = lease.lost_signal();
    let watcher = tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => {}
            _ = lost.wait_for(|l| *l) => {}
        }
        let _ = stop_tx.send(true);
    });
    let consumer = rt.cfg.kinesis.consumer.clone();
    let policy = rt.cfg.aws.retry_policy();
    let stream = rt.cfg.aws.stream.clone();
    let api = aws.kinesis.clone();
    let l = lease.clone();
    let result = async {
        let (_, handle) = rt
            .spawn_shard(
                shard.clone(),
                move |after| {
                    let src = KinesisShardSource::new(api, stream, l.shard().clone(), after, consumer, policy)
                        .with_lease(l);
                    Ok(Box::new(src) as Box<dyn Source>)
                },
                stop_rx,
            )
            .await?;
        let summary = handle.await.context("shard task")??;
        tracing::info!(%shard, records = summary.records, finished = summary.finished, "shard processor stopped");
        anyhow::Ok(())
    }
    .await;
    watcher.abort();
    if let Err(e) = &result
        && !is_lease_lost(e)
        && !lease.is_lost()
    {
        // Give the shard back so that a later acquisition round (here or in another
        // worker) restarts it from its checkpoint, after a pause against a hot loop.
        tracing::warn!(%shard, error = format!("{e:#}"), "releasing the lease of a failed shard processor");
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        if let Err(r) = lease.release().await {
            tracing::warn!(%shard, error = %r, "could not release the lease; it expires instead");
        }
    }
    result
}

fn is_lease_lost(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<StoreError>(),
            Some(StoreError::LeaseLost { .. })
        ) || matches!(
            c.downcast_ref::<IngestError>(),
            Some(IngestError::LeaseLost { .. })
        )
    })
}
