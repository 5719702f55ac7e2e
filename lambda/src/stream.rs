//! The Kinesis handler: one event source mapping batch through the workers' shard
//! processor (`recstream_pipeline::ShardProcessor`), reporting `batchItemFailures`.
//!
//! ```text
//!  KinesisEvent (one shard's records, in sequence order)
//!    ─► per record: base64 data ─► kpl::deaggregate ─► RawRecord (sub_seq per user record;
//!                                   a corrupt aggregate ─► dead letter with its reason)
//!    ─► resume: checkpoint (ConditionalCheckpoints) ─► state delta it names (S3)
//!               ─► the shard's product rows (DynamoDB `<prefix>state`) ─► Aggregator;
//!               each user's row is read when the batch first names them
//!    ─► ShardProcessor::process_batch   records <= committed are skipped (redelivery);
//!                                       served lists (`recommendation` events) wait in the
//!                                       join state, clicks naming them become feedback rows
//!    ─► pending roll point beyond the batch? read ahead from Kinesis up to it
//!    ─► ShardProcessor::commit          intent ─► archive roll + feedback/ ─► feature flush
//!                                       ─► state delta (what changed) and join state (S3)
//!                                       ─► checkpoint (conditional on the position loaded)
//!                                       ─► the delta's rows ─► `<prefix>state`
//!    ─► ok: {"batchItemFailures": []}
//!       error: the first record after the committed position ─► Lambda retries from there
//! ```
//!
//! # Effectively once on Lambda
//!
//! Lambda keeps nothing between invocations that can be relied on, so every invocation
//! rebuilds the shard's state from what is durable: the checkpoint item, the state delta it
//! names and the state table (products at once, users as their records arrive), so an
//! invocation reads what it needs, not the whole shard's state. Kinesis and the event source mapping deliver at least
//! once (a retry after an error or a timeout redelivers records that may already have been
//! applied); the processor skips every record at or before the committed position, so a
//! redelivered batch changes nothing. A crash between the steps of a commit leaves either
//! the old checkpoint (the retry replays from the old snapshot and rewrites the same
//! absolute feature values, the same archive object names and the same feedback objects) or an announced roll point
//! (`pending_end`): the retry then rolls at exactly that sequence number — reading ahead
//! from the stream if the retried batch is shorter (bisected) — so the archive object it
//! overwrites has the same name and the same rows. The checkpoint write is conditional on
//! the position the invocation loaded ([`crate::checkpoint`]), so an invocation Lambda
//! abandoned can never move the checkpoint under its retry.
//!
//! A malformed, oversized or hostile record is not a failure: it goes to the dead letters
//! with its reason and the batch succeeds. Failures reported to Lambda are
//! infrastructure errors (DynamoDB, S3 unavailable past the retry policy), and the
//! reported item is the first record the checkpoint does not cover.
//!
//! The aggregation state is per shard, so the mapping must run one batch per shard at a
//! time: `ParallelizationFactor: 1` (scale with shards instead; see docs/operations.md).

use std::sync::Arc;

use async_trait::async_trait;
use aws_lambda_events::event::kinesis::{KinesisEvent, KinesisEventRecord};
use aws_lambda_events::event::streams::KinesisEventResponse;
use bytes::Bytes;
use compact_str::CompactString;
use recstream_ingest::aws::RetryPolicy;
use recstream_ingest::source::kinesis::{ConsumerConfig, KinesisApi, KinesisShardSource, kpl};
use recstream_ingest::{DecodeError, IngestError, RawRecord, SeqNo, ShardId, Source, Timestamp};
use recstream_pipeline::{Pipeline, ProcessorError, ShardProcessor, resume};

use crate::error::LambdaError;

/// Reading a shard past the delivered batch, up to a previous invocation's roll point.
#[derive(Clone)]
pub struct ReadAhead {
    /// The Kinesis client (GetShardIterator, GetRecords).
    pub api: Arc<dyn KinesisApi>,
    /// Stream name and GetRecords limits.
    pub consumer: ConsumerConfig,
    /// Retries of throttled or failed reads.
    pub policy: RetryPolicy,
}

/// Empty GetRecords answers tolerated while reading ahead before giving up (the records
/// up to the roll point exist: a previous invocation read them).
const READ_AHEAD_EMPTY_POLLS: u32 = 25;

/// The stream-processor function's state: built once per cold start.
#[derive(Clone)]
pub struct StreamProcessor {
    pipeline: Pipeline,
    read_ahead: Option<ReadAhead>,
}

/// One shard's records of an event, in delivery order.
struct ShardBatch {
    shard: ShardId,
    stream: String,
    /// (sequence number, the record) of every Kinesis record, in order.
    records: Vec<(SeqNo, KinesisEventRecord)>,
}

impl StreamProcessor {
    /// A processor over `pipeline` (its sinks' checkpoint store should be
    /// [`crate::checkpoint::ConditionalCheckpoints`]); `read_ahead` lets it finish a roll
    /// point a previous invocation announced beyond the batch it is given.
    pub fn new(pipeline: Pipeline, read_ahead: Option<ReadAhead>) -> StreamProcessor {
        StreamProcessor {
            pipeline,
            read_ahead,
        }
    }

    /// Handles one event: every shard's records are applied and committed, or the first
    /// uncommitted record of a shard is reported as failed.
    pub async fn handle(&self, event: KinesisEvent) -> Result<KinesisEventResponse, LambdaError> {
        let mut response = KinesisEventResponse::default();
        for batch in group(event)? {
            let shard = batch.shard.clone();
            if let Err((failed, e)) = self.shard_batch(batch).await {
                tracing::error!(%shard, error = %e, first_failed = ?failed, "batch not committed; Lambda retries from the first uncommitted record");
                if let Some(seq) = failed {
                    response.add_failure(seq.as_str());
                }
            }
        }
        Ok(response)
    }

    /// Applies and commits one shard's records. On error: the first record not covered by
    /// the checkpoint (None when all are), and the error.
    async fn shard_batch(&self, batch: ShardBatch) -> Result<(), (Option<SeqNo>, ProcessorError)> {
        let first_after = |committed: Option<&SeqNo>| {
            batch
                .records
                .iter()
                .map(|(seq, _)| seq)
                .find(|seq| committed.is_none_or(|c| *seq > c))
                .cloned()
        };
        let Some(last) = batch.records.last().map(|(seq, _)| seq.clone()) else {
            return Ok(());
        };
        let p = &self.pipeline;
        let r = resume(&p.sinks, &batch.shard, &p.features)
            .await
            .map_err(|e| (first_after(None), e))?;
        if r.checkpoint.finished {
            // A finished shard (read to its end before) gets no more records.
            return Ok(());
        }
        let source = Box::new(Delivered(batch.shard.clone()));
        let mut proc = ShardProcessor::new(source, r, p.sinks.clone(), p.processor.clone());
        let raw: Vec<RawRecord> = batch
            .records
            .iter()
            .flat_map(|(seq, rec)| expand(&batch.shard, seq, rec))
            .collect();
        let result = async {
            proc.process_batch(raw).await?;
            self.read_to_pending(&mut proc, &batch).await?;
            let committed = proc.commit().await?;
            if committed.as_ref().is_none_or(|c| *c < last) {
                return Err(ProcessorError::Task(format!(
                    "committed {committed:?} short of the batch's last record {last}"
                )));
            }
            Ok(())
        }
        .await;
        result.map_err(|e| (first_after(proc.committed()), e))
    }

    /// A previous invocation announced a roll point beyond this batch (it crashed after
    /// writing the archive object ending there, and this retry was bisected): read the
    /// shard on up to it so the roll happens at exactly the same sequence number.
    async fn read_to_pending(
        &self,
        proc: &mut ShardProcessor,
        batch: &ShardBatch,
    ) -> Result<(), ProcessorError> {
        let Some(pending) = proc.pending_end().cloned() else {
            return Ok(());
        };
        if proc.last_applied().is_some_and(|l| *l >= pending) {
            return Ok(());
        }
        let Some(ra) = &self.read_ahead else {
            return Err(ProcessorError::Task(format!(
                "roll point {pending} lies beyond the batch and reading ahead is not configured"
            )));
        };
        tracing::info!(shard = %batch.shard, %pending, "reading ahead to a previous invocation's roll point");
        let mut source = KinesisShardSource::new(
            ra.api.clone(),
            batch.stream.clone(),
            batch.shard.clone(),
            proc.last_applied().cloned(),
            ra.consumer.clone(),
            ra.policy,
        );
        let mut empty = 0;
        while proc.last_applied().is_none_or(|l| *l < pending) {
            match source
                .next_batch(self.pipeline.processor.batch_size)
                .await?
            {
                Some(records) if records.is_empty() => {
                    empty += 1;
                    if empty >= READ_AHEAD_EMPTY_POLLS {
                        return Err(ProcessorError::Task(format!(
                            "shard {} has no records up to the roll point {pending}",
                            batch.shard
                        )));
                    }
                }
                Some(records) => {
                    // Only up to the roll point: what follows is the next batches' work.
                    let upto: Vec<RawRecord> =
                        records.into_iter().filter(|r| r.seq <= pending).collect();
                    let reached = upto.is_empty();
                    proc.process_batch(upto).await?;
                    if reached {
                        break;
                    }
                }
                None => break,
            }
        }
        Ok(())
    }
}

/// The Source of a processor fed by the event source mapping: the batch is handed to
/// `process_batch`, so nothing is ever asked of it.
struct Delivered(ShardId);

#[async_trait]
impl Source for Delivered {
    fn shard(&self) -> &ShardId {
        &self.0
    }

    async fn next_batch(&mut self, _max: usize) -> Result<Option<Vec<RawRecord>>, IngestError> {
        Ok(None)
    }
}

/// Splits an event by shard (an event source mapping sends one shard per invocation; more
/// are handled in order all the same), checking every record's identity.
fn group(event: KinesisEvent) -> Result<Vec<ShardBatch>, LambdaError> {
    let mut out: Vec<ShardBatch> = Vec::new();
    for rec in event.records {
        let bad = |what: &str| LambdaError::BadEvent(format!("kinesis record: {what}"));
        let event_id = rec.event_id.as_deref().ok_or_else(|| bad("no eventID"))?;
        let (shard, _) = event_id
            .split_once(':')
            .ok_or_else(|| bad("eventID is not <shard>:<sequence number>"))?;
        let arn = rec.event_source_arn.as_deref().unwrap_or_default();
        let stream = arn
            .split_once(":stream/")
            .map(|(_, s)| s.to_string())
            .unwrap_or_default();
        let seq = SeqNo::parse(&rec.kinesis.sequence_number)
            .ok_or_else(|| bad("sequenceNumber is not a decimal sequence number"))?;
        let shard = ShardId::new(shard);
        match out.iter_mut().find(|b| b.shard == shard) {
            Some(b) => b.records.push((seq, rec)),
            None => out.push(ShardBatch {
                shard,
                stream,
                records: vec![(seq, rec)],
            }),
        }
    }
    Ok(out)
}

/// One Kinesis record as the processor's raw records: a KPL aggregate becomes one record
/// per user record (same sequence number, its sub-sequence number), as in the workers'
/// consumer.
fn expand(shard: &ShardId, seq: &SeqNo, rec: &KinesisEventRecord) -> Vec<RawRecord> {
    let k = &rec.kinesis;
    let arrival = Timestamp(k.approximate_arrival_timestamp.0.timestamp_millis());
    let data = Bytes::from(k.data.0.clone());
    let partition_key = CompactString::from(k.partition_key.as_str());
    let raw = |sub_seq, partition_key, data, rejected| RawRecord {
        shard: shard.clone(),
        seq: seq.clone(),
        sub_seq,
        partition_key,
        arrival,
        data,
        rejected,
    };
    match kpl::deaggregate(&data) {
        Ok(None) => vec![raw(0, partition_key, data, None)],
        Ok(Some(users)) => users
            .into_iter()
            .map(|u| raw(u.sub_seq, u.partition_key, u.data, None))
            .collect(),
        Err(e) => {
            tracing::warn!(%shard, %seq, error = %e, "corrupt KPL aggregate sent to the dead letters");
            let err = DecodeError::Unmappable(format!("kpl aggregate: {e}"));
            vec![raw(0, partition_key, data, Some(err))]
        }
    }
}
