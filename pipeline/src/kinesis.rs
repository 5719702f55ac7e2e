//! AWS mode: the Kinesis parts of `ingest` joined to the shard processor.
//!
//! ```text
//!  LeaseCoordinator::spawn ─► LeaseHandle per taken shard
//!        └─► KinesisWorkers::run: resume (checkpoint in the lease, snapshot in S3)
//!              ─► KinesisShardSource (with the lease) ─► ShardProcessor ─► DynamoDB / S3
//!              ─► checkpoints through the LeaseCoordinator (its CheckpointStore:
//!                 conditional on holding the lease)
//!              ─► lease lost or shutdown: the processor stops after its batch
//!              ─► shard read to its end: lease finished, children taken next round
//!  AwsParts::init ─► stream, feature tables, lease table, bucket (idempotent)
//! ```

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use recstream_features::FeatureConfig;
use recstream_features::store::dynamodb::DynamoFeatureStore;
use recstream_ingest::aws::{AwsConfig, RetryPolicy};
use recstream_ingest::object_store::s3::S3ObjectStore;
use recstream_ingest::source::kinesis::{
    ConsumerConfig, KinesisApi, KinesisConfig, KinesisProducer, KinesisShardSource,
    LeaseCoordinator, LeaseHandle, SdkKinesis, ensure_stream,
};
use recstream_ingest::{ShardId, Source};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::processor::{ProcessorError, Sinks};
use crate::runner::Pipeline;

/// The AWS clients of a process in AWS mode.
#[derive(Clone)]
pub struct AwsParts {
    /// Kinesis reads (GetRecords, ListShards …).
    pub kinesis: Arc<dyn KinesisApi>,
    /// The lease table: which worker reads which shard, and each shard's checkpoint.
    pub coordinator: LeaseCoordinator,
    /// PutRecords (the collector, replays, the commerce outbox).
    pub producer: Arc<KinesisProducer>,
    /// The DynamoDB feature store.
    pub dynamo: Arc<DynamoFeatureStore>,
    /// The archive, dead letters, snapshots and models.
    pub s3: Arc<S3ObjectStore>,
}

impl AwsParts {
    /// Clients configured from the SDK's environment (`AWS_ENDPOINT_URL`, `AWS_REGION`,
    /// the default credential chain) and the resource names in `aws`.
    pub async fn from_env(
        aws: &AwsConfig,
        kinesis: &KinesisConfig,
        features: FeatureConfig,
    ) -> AwsParts {
        let api: Arc<dyn KinesisApi> = Arc::new(SdkKinesis::from_env(aws).await);
        let coordinator = LeaseCoordinator::from_env(aws, &kinesis.lease).await;
        let producer = Arc::new(KinesisProducer::new(
            api.clone(),
            aws.stream.clone(),
            aws.retry_policy(),
            kinesis.producer.clone(),
        ));
        AwsParts {
            kinesis: api,
            coordinator,
            producer,
            dynamo: Arc::new(DynamoFeatureStore::from_env(aws, features).await),
            s3: Arc::new(S3ObjectStore::from_env(aws).await),
        }
    }

    /// The processor's stores in AWS mode: DynamoDB features, checkpoints in the lease
    /// table, S3 objects; no catalog check (the caller sets [`Sinks::catalog`]).
    pub fn sinks(&self) -> Sinks {
        Sinks {
            features: self.dynamo.clone(),
            state: self.dynamo.clone(),
            checkpoints: Arc::new(self.coordinator.clone()),
            objects: self.s3.clone(),
            catalog: None,
        }
    }

    /// Creates what the pipeline needs unless it exists: the stream (with `aws.shards`
    /// shards), the feature tables, the lease table and the bucket. Idempotent; returns
    /// one line per resource for the operator.
    pub async fn init(&self, aws: &AwsConfig) -> Result<Vec<String>, ProcessorError> {
        let mut done = Vec::new();
        let kinesis = SdkKinesis::from_env(aws).await;
        let created = ensure_stream(
            kinesis.client(),
            &aws.stream,
            aws.shards,
            &aws.retry_policy(),
        )
        .await?;
        done.push(format!(
            "stream {} ({})",
            aws.stream,
            if created { "created" } else { "exists" }
        ));
        self.dynamo.create_tables_if_missing().await?;
        done.push(format!("tables {}", self.dynamo.table_names().join(", ")));
        self.coordinator.create_table_if_missing().await?;
        done.push(format!("lease table {}", self.coordinator.table()));
        self.s3.create_bucket_if_missing().await?;
        done.push(format!("bucket {}", self.s3.bucket()));
        Ok(done)
    }
}

/// The long-running Kinesis consumer of one process: takes leases through the
/// coordinator and runs one shard processor per lease held.
#[derive(Clone)]
pub struct KinesisWorkers {
    pipeline: Pipeline,
    parts: AwsParts,
    stream: String,
    consumer: ConsumerConfig,
    policy: RetryPolicy,
}

impl KinesisWorkers {
    /// Workers over `parts`, processing with `pipeline` (whose sinks should be
    /// [`AwsParts::sinks`], so that checkpoints are conditional on the lease).
    pub fn new(
        pipeline: Pipeline,
        parts: AwsParts,
        aws: &AwsConfig,
        consumer: ConsumerConfig,
    ) -> KinesisWorkers {
        KinesisWorkers {
            pipeline,
            parts,
            stream: aws.stream.clone(),
            consumer,
            policy: aws.retry_policy(),
        }
    }

    /// Processes every shard this worker holds a lease for until `shutdown`: one
    /// shard processor per lease, stopped when the lease is lost. Leases are released on
    /// the way out.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> Result<(), ProcessorError> {
        let coordinator = self.parts.coordinator.clone();
        coordinator.create_table_if_missing().await?;
        tracing::info!(
            worker = coordinator.worker_id(),
            stream = coordinator.stream(),
            "kinesis worker started"
        );
        let (mut leases, background) = coordinator.spawn(shutdown.clone());
        let mut tasks: JoinSet<(ShardId, Result<(), ProcessorError>)> = JoinSet::new();
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
                    let (me, shutdown) = (self.clone(), shutdown.clone());
                    tasks.spawn(async move {
                        let r = me.process_lease(lease, shutdown).await;
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
        coordinator.release().await?;
        tracing::info!(worker = coordinator.worker_id(), "kinesis worker stopped");
        Ok(())
    }

    /// One lease: resume from its checkpoint, process until the shard ends, the lease is
    /// lost or the process shuts down.
    async fn process_lease(
        &self,
        lease: LeaseHandle,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), ProcessorError> {
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
        let (api, stream) = (self.parts.kinesis.clone(), self.stream.clone());
        let (consumer, policy) = (self.consumer.clone(), self.policy);
        let l = lease.clone();
        let result = async {
            let (_, handle) = self
                .pipeline
                .spawn_shard(
                    shard.clone(),
                    move |after| {
                        let src = KinesisShardSource::new(
                            api,
                            stream,
                            l.shard().clone(),
                            after,
                            consumer,
                            policy,
                        )
                        .with_lease(l);
                        Ok(Box::new(src) as Box<dyn Source>)
                    },
                    stop_rx,
                )
                .await?;
            let summary = handle
                .await
                .map_err(|e| ProcessorError::Task(e.to_string()))??;
            tracing::info!(%shard, records = summary.records, finished = summary.finished, "shard processor stopped");
            Ok::<(), ProcessorError>(())
        }
        .await;
        watcher.abort();
        if let Err(e) = &result
            && !e.is_lease_lost()
            && !lease.is_lost()
        {
            // Give the shard back so that a later acquisition round (here or in another
            // worker) restarts it from its checkpoint, after a pause against a hot loop.
            tracing::warn!(%shard, error = %e, "releasing the lease of a failed shard processor");
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Err(r) = lease.release().await {
                tracing::warn!(%shard, error = %r, "could not release the lease; it expires instead");
            }
        }
        result
    }
}

fn finished(
    done: Result<(ShardId, Result<(), ProcessorError>), tokio::task::JoinError>,
    running: &mut HashSet<ShardId>,
) {
    match done {
        Ok((shard, Ok(()))) => {
            running.remove(&shard);
        }
        Ok((shard, Err(e))) => {
            if e.is_lease_lost() {
                tracing::info!(%shard, "lease lost; another worker carries on from the checkpoint");
            } else {
                tracing::error!(%shard, error = %e, "shard processor failed; its lease was released and is retaken on a later round");
            }
            running.remove(&shard);
        }
        Err(e) => tracing::error!(error = %e, "shard task panicked"),
    }
}
