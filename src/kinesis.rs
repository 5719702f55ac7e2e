//! AWS mode wiring that needs the binary's configuration: the collector's Kinesis sink,
//! `recstream init` (the pipeline's resources plus the commerce table) and bulk puts for
//! `recstream replay --to kinesis`. The Kinesis workers themselves are
//! `recstream_pipeline::kinesis::KinesisWorkers`.
//!
//! ```text
//!  POST /v1/events, commerce ─► KinesisSink ─► KinesisProducer (PutRecords)
//!  `recstream init` ─► AwsParts::init (stream, tables, lease table, bucket) + commerce table
//! ```

use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use recstream_ingest::sink::{EventSink, OutRecord, SinkError};
use recstream_ingest::source::kinesis::KinesisProducer;
use recstream_pipeline::kinesis::AwsParts;

use crate::config::Config;

/// The collector's sink in AWS mode: PutRecords, partition key = user id.
pub struct KinesisSink {
    producer: Arc<KinesisProducer>,
}

impl KinesisSink {
    /// A sink putting records through `producer` (partition key = user id).
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
/// lease table, the bucket and the commerce table. Idempotent.
pub async fn init(cfg: &Config, aws: Option<&AwsParts>) -> anyhow::Result<Vec<String>> {
    let aws = aws
        .context("`recstream init` needs mode = \"aws\" (the embedded stores create themselves)")?;
    let mut done = aws.init(&cfg.aws).await?;
    let commerce = recstream_commerce::DynamoStore::from_env(&cfg.aws).await;
    commerce.create_table_if_missing().await?;
    done.push(format!("commerce table {}", commerce.table()));
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
