//! Kinesis: the production event stream — producer, per-shard consumer, KPL
//! de-aggregation and the DynamoDB lease table that lets N processes share one stream.
//!
//! ```text
//!  collector / replay ─► KinesisProducer::put ─► PutRecords (≤ 500 rec, ≤ 5 MiB; failed entries resent)
//!                                                    │
//!                                         Kinesis stream (shards, reshards)
//!                                                    │
//!  LeaseCoordinator (one per process, table `<prefix>leases`, one item per shard)
//!    sync:    ListShards ─► put missing lease items (parents recorded)
//!    acquire: every lease_duration / 3: Scan ─► lease::plan (pure) ─► take free / expired
//!             leases up to the fair share, never a child before all its parents are
//!             finished; steal one from a worker holding two more
//!    renew:   every lease_duration / 3, conditional on (owner, token); failure ─► lost signal
//!         │ LeaseHandle { shard, checkpoint, lost: watch }
//!         ▼
//!  KinesisShardSource (one per held shard) ── Source::next_batch ──► ShardProcessor
//!    GetShardIterator AFTER_SEQUENCE_NUMBER checkpoint (TRIM_HORIZON without one)
//!    GetRecords loop (≤ 5/s, idle backoff, throttling ─► retry helper,
//!                     ExpiredIterator ─► new iterator after the last record seen)
//!    KPL aggregates ─► user records (sub_seq), corrupt ones ─► dead letter
//!    NextShardIterator = null ─► last records, then None (ChildShards registered)
//!         │
//!  ShardProcessor ─► CheckpointStore::save_checkpoint ─► LeaseCoordinator::save_checkpoint
//!                     (conditional on owner + token: a zombie gets LeaseLost, never moves it)
//! ```
//!
//! This folder owns everything Kinesis-specific: [`config`] (settings and Kinesis'
//! limits), [`producer`], [`consumer`], [`kpl`], [`lease`], and the emulator tests in
//! `tests`. The calls that tests need to fail on purpose (PutRecords, GetRecords,
//! GetShardIterator, ListShards) go through the small [`KinesisApi`] trait; [`SdkKinesis`]
//! is the real implementation. Every AWS call goes through [`crate::aws::retry`].
//!
//! # What the code does not rely on (emulators differ from AWS)
//!
//! - Sequence numbers are compared numerically as decimal strings of any length (moto
//!   uses `1, 2, 3…` per shard, AWS 56-digit numbers); nothing assumes a width.
//! - The end of a closed shard is a null `NextShardIterator` (AWS); moto never returns one
//!   nor `ChildShards`, so an idle consumer also asks ListShards whether its shard is
//!   closed and read up to its `EndingSequenceNumber` (never true on AWS before the null
//!   iterator, because AWS's ending number is the end of the range, not the last record).
//!   Children are discovered by the lease coordinator's ListShards as well.
//! - Iterator expiry, throttling and partial PutRecords failures never happen on moto;
//!   the tests inject them through [`KinesisApi`].
//! - Lease expiry is judged by watching a lease's counter stand still for the lease
//!   duration on this process' monotonic clock (the KCL's rule), not by comparing
//!   `expires_at_ms` with the wall clock, so clock skew between hosts cannot make two
//!   workers hold one shard.

pub mod config;
pub mod consumer;
pub mod kpl;
pub mod lease;
pub mod producer;

#[cfg(test)]
mod tests;

use std::error::Error as StdError;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_kinesis::config::http::HttpResponse;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::operation::get_records::GetRecordsOutput;
use aws_sdk_kinesis::operation::list_shards::ListShardsOutput;
use aws_sdk_kinesis::operation::put_records::PutRecordsOutput;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType, StreamStatus};

use crate::aws::{AwsConfig, RetryPolicy, describe, is_retriable, retry, sdk_config};
use crate::error::IngestError;
use crate::record::{SeqNo, ShardId};

pub use config::{ConsumerConfig, InitialPosition, KinesisConfig, LeaseConfig, ProducerConfig};
pub use consumer::{ChildShardInfo, KinesisShardSource};
pub use kpl::{KplError, UserRecord};
pub use lease::{Lease, LeaseCoordinator, LeaseHandle};
pub use producer::{KinesisProducer, PutSummary};

/// The service name in errors and retry metrics.
pub const SERVICE: &str = "kinesis";

/// Metric names of this module (emitted per batch or per lease round, label `shard` at
/// most — bounded by the shard count).
pub mod metrics {
    /// GetRecords calls (label: `shard`).
    pub const GET_RECORDS_CALLS_TOTAL: &str = "recstream_ingest_kinesis_get_records_calls_total";
    /// Kinesis records read, before KPL expansion (label: `shard`).
    pub const KINESIS_RECORDS_TOTAL: &str = "recstream_ingest_kinesis_records_total";
    /// KPL aggregates expanded (label: `shard`).
    pub const AGGREGATES_TOTAL: &str = "recstream_ingest_kinesis_aggregates_total";
    /// Corrupt KPL aggregates sent to the dead letters (label: `shard`).
    pub const CORRUPT_AGGREGATES_TOTAL: &str = "recstream_ingest_kinesis_corrupt_aggregates_total";
    /// ExpiredIteratorException renewals (label: `shard`).
    pub const ITERATOR_RENEWALS_TOTAL: &str = "recstream_ingest_kinesis_iterator_renewals_total";
    /// MillisBehindLatest of the last GetRecords (label: `shard`).
    pub const MILLIS_BEHIND_LATEST: &str = "recstream_ingest_kinesis_millis_behind_latest";
    /// Records accepted by PutRecords.
    pub const PUT_RECORDS_TOTAL: &str = "recstream_ingest_kinesis_put_records_total";
    /// PutRecords calls.
    pub const PUT_CALLS_TOTAL: &str = "recstream_ingest_kinesis_put_calls_total";
    /// Records resent after a partial PutRecords failure.
    pub const PUT_RESENT_TOTAL: &str = "recstream_ingest_kinesis_put_resent_total";
    /// Records given up on after the retry policy's attempts.
    pub const PUT_FAILED_TOTAL: &str = "recstream_ingest_kinesis_put_failed_total";
    /// Leases this worker holds.
    pub const LEASES_HELD: &str = "recstream_ingest_leases_held";
    /// Leases taken (label: `how` = free | expired | stolen).
    pub const LEASES_TAKEN_TOTAL: &str = "recstream_ingest_leases_taken_total";
    /// Leases lost (label: `how` = taken | not_renewed | checkpoint).
    pub const LEASES_LOST_TOTAL: &str = "recstream_ingest_leases_lost_total";
}

/// A failed Kinesis call, reduced to what the callers decide on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{operation}: {message}")]
pub struct ApiError {
    /// The Kinesis operation that failed, e.g. `GetRecords`.
    pub operation: &'static str,
    /// The service's error code (`ProvisionedThroughputExceededException`, …).
    pub code: Option<String>,
    /// Human-readable description from the service or the transport.
    pub message: String,
    /// Whether a retry can help (throttling, timeouts, 5xx).
    pub retriable: bool,
}

impl ApiError {
    /// Reduces an SDK error of `operation` to the code, message and retriability.
    pub fn from_sdk<E>(operation: &'static str, e: &SdkError<E, HttpResponse>) -> ApiError
    where
        E: ProvideErrorMetadata + StdError + 'static,
    {
        ApiError {
            operation,
            code: e.code().map(str::to_string),
            message: describe(e),
            retriable: is_retriable(e),
        }
    }

    /// An error with a service code, as the service would answer it (for tests and fakes).
    pub fn service(operation: &'static str, code: &str, retriable: bool) -> ApiError {
        ApiError {
            operation,
            code: Some(code.to_string()),
            message: format!("{code}: injected"),
            retriable,
        }
    }

    /// The iterator is older than 5 minutes: take a new one at the last position.
    pub fn is_expired_iterator(&self) -> bool {
        self.code.as_deref() == Some("ExpiredIteratorException")
    }

    /// The stream or shard does not exist (deleted, or not yet created).
    pub fn is_not_found(&self) -> bool {
        self.code.as_deref() == Some("ResourceNotFoundException")
    }
}

impl From<ApiError> for IngestError {
    fn from(e: ApiError) -> IngestError {
        IngestError::Aws {
            service: SERVICE,
            operation: e.operation,
            message: e.message,
            retriable: e.retriable,
        }
    }
}

/// Where a shard iterator starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IteratorPosition {
    /// The oldest record still in the stream.
    TrimHorizon,
    /// Only records put after the iterator was taken.
    Latest,
    /// The record after this sequence number (resume after a checkpoint).
    AfterSequence(SeqNo),
    /// The record with this sequence number.
    AtSequence(SeqNo),
}

/// The Kinesis calls of the data path, behind a trait so that tests can inject the
/// failures an emulator never produces. Implementations do not retry: callers wrap each
/// call in [`crate::aws::retry`].
#[async_trait]
pub trait KinesisApi: Send + Sync + 'static {
    /// PutRecords: puts `entries` into `stream`; per-record failures are in the output.
    async fn put_records(
        &self,
        stream: &str,
        entries: &[PutRecordsRequestEntry],
    ) -> Result<PutRecordsOutput, ApiError>;

    /// GetShardIterator: an iterator of `shard` at `position`.
    async fn get_shard_iterator(
        &self,
        stream: &str,
        shard: &str,
        position: &IteratorPosition,
    ) -> Result<String, ApiError>;

    /// GetRecords: at most `limit` records after `iterator`, and the next iterator.
    async fn get_records(&self, iterator: &str, limit: i32) -> Result<GetRecordsOutput, ApiError>;

    /// One page of ListShards: the first with `next_token = None`, then by token.
    async fn list_shards(
        &self,
        stream: &str,
        next_token: Option<&str>,
    ) -> Result<ListShardsOutput, ApiError>;
}

#[async_trait]
impl<T: KinesisApi + ?Sized> KinesisApi for std::sync::Arc<T> {
    async fn put_records(
        &self,
        stream: &str,
        entries: &[PutRecordsRequestEntry],
    ) -> Result<PutRecordsOutput, ApiError> {
        (**self).put_records(stream, entries).await
    }

    async fn get_shard_iterator(
        &self,
        stream: &str,
        shard: &str,
        position: &IteratorPosition,
    ) -> Result<String, ApiError> {
        (**self).get_shard_iterator(stream, shard, position).await
    }

    async fn get_records(&self, iterator: &str, limit: i32) -> Result<GetRecordsOutput, ApiError> {
        (**self).get_records(iterator, limit).await
    }

    async fn list_shards(
        &self,
        stream: &str,
        next_token: Option<&str>,
    ) -> Result<ListShardsOutput, ApiError> {
        (**self).list_shards(stream, next_token).await
    }
}

/// [`KinesisApi`] over the AWS SDK client.
#[derive(Debug, Clone)]
pub struct SdkKinesis(pub aws_sdk_kinesis::Client);

impl SdkKinesis {
    /// A client from the standard SDK environment (`AWS_ENDPOINT_URL[_KINESIS]`,
    /// `AWS_REGION`, credentials), SDK retries off (see [`crate::aws::sdk_config`]).
    pub async fn from_env(aws: &AwsConfig) -> SdkKinesis {
        let sdk = sdk_config(aws.region.as_deref()).await;
        SdkKinesis(aws_sdk_kinesis::Client::new(&sdk))
    }

    /// The underlying SDK client.
    pub fn client(&self) -> &aws_sdk_kinesis::Client {
        &self.0
    }
}

#[async_trait]
impl KinesisApi for SdkKinesis {
    async fn put_records(
        &self,
        stream: &str,
        entries: &[PutRecordsRequestEntry],
    ) -> Result<PutRecordsOutput, ApiError> {
        self.0
            .put_records()
            .stream_name(stream)
            .set_records(Some(entries.to_vec()))
            .send()
            .await
            .map_err(|e| ApiError::from_sdk("PutRecords", &e))
    }

    async fn get_shard_iterator(
        &self,
        stream: &str,
        shard: &str,
        position: &IteratorPosition,
    ) -> Result<String, ApiError> {
        let req = self
            .0
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(shard);
        let req = match position {
            IteratorPosition::TrimHorizon => {
                req.shard_iterator_type(ShardIteratorType::TrimHorizon)
            }
            IteratorPosition::Latest => req.shard_iterator_type(ShardIteratorType::Latest),
            IteratorPosition::AfterSequence(s) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(s.as_str()),
            IteratorPosition::AtSequence(s) => req
                .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                .starting_sequence_number(s.as_str()),
        };
        let out = req
            .send()
            .await
            .map_err(|e| ApiError::from_sdk("GetShardIterator", &e))?;
        out.shard_iterator.ok_or_else(|| ApiError {
            operation: "GetShardIterator",
            code: None,
            message: format!("no iterator returned for shard {shard}"),
            retriable: true,
        })
    }

    async fn get_records(&self, iterator: &str, limit: i32) -> Result<GetRecordsOutput, ApiError> {
        self.0
            .get_records()
            .shard_iterator(iterator)
            .limit(limit)
            .send()
            .await
            .map_err(|e| ApiError::from_sdk("GetRecords", &e))
    }

    async fn list_shards(
        &self,
        stream: &str,
        next_token: Option<&str>,
    ) -> Result<ListShardsOutput, ApiError> {
        // ListShards takes either the stream name or a token, never both.
        let req = match next_token {
            Some(t) => self.0.list_shards().next_token(t),
            None => self.0.list_shards().stream_name(stream),
        };
        req.send()
            .await
            .map_err(|e| ApiError::from_sdk("ListShards", &e))
    }
}

/// A shard as ListShards describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    /// The shard id.
    pub id: ShardId,
    /// `ParentShardId` and `AdjacentParentShardId` (after a merge), when present.
    pub parents: Vec<ShardId>,
    /// First sequence number of the shard.
    pub starting_seq: Option<SeqNo>,
    /// Present once the shard is closed (after a split or merge).
    pub ending_seq: Option<SeqNo>,
}

impl ShardInfo {
    /// The shard was closed by a reshard: it has an ending sequence number.
    pub fn is_closed(&self) -> bool {
        self.ending_seq.is_some()
    }
}

/// All shards of `stream` (ListShards with pagination), in the service's order.
pub async fn list_all_shards(
    api: &dyn KinesisApi,
    stream: &str,
    policy: &RetryPolicy,
) -> Result<Vec<ShardInfo>, IngestError> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = retry(
            policy,
            SERVICE,
            "ListShards",
            |e: &ApiError| e.retriable,
            || api.list_shards(stream, token.as_deref()),
        )
        .await?;
        for s in page.shards() {
            let range = s.sequence_number_range();
            out.push(ShardInfo {
                id: ShardId::new(s.shard_id()),
                parents: [s.parent_shard_id(), s.adjacent_parent_shard_id()]
                    .into_iter()
                    .flatten()
                    .map(ShardId::new)
                    .collect(),
                starting_seq: range.and_then(|r| SeqNo::parse(r.starting_sequence_number())),
                ending_seq: range
                    .and_then(|r| r.ending_sequence_number())
                    .and_then(SeqNo::parse),
            });
        }
        match page.next_token() {
            Some(t) if !t.is_empty() && !page.shards().is_empty() => token = Some(t.to_string()),
            _ => break,
        }
    }
    Ok(out)
}

/// Creates `stream` with `shards` shards unless it exists, and waits until it is ACTIVE
/// (`recstream init`; idempotent). Returns whether it was created.
pub async fn ensure_stream(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    shards: u32,
    policy: &RetryPolicy,
) -> Result<bool, IngestError> {
    let mut created = false;
    let status = describe_status(client, stream, policy).await?;
    if status.is_none() {
        let res = retry(policy, SERVICE, "CreateStream", is_retriable, || {
            client
                .create_stream()
                .stream_name(stream)
                .shard_count(shards as i32)
                .send()
        })
        .await;
        match res {
            Ok(_) => {
                created = true;
                tracing::info!(stream, shards, "created kinesis stream");
            }
            Err(SdkError::ServiceError(e)) if e.err().is_resource_in_use_exception() => {}
            Err(e) => return Err(ApiError::from_sdk("CreateStream", &e).into()),
        }
    }
    // A new stream is CREATING for some seconds on AWS (ACTIVE at once on emulators).
    for _ in 0..120 {
        match describe_status(client, stream, policy).await? {
            Some(StreamStatus::Active) | Some(StreamStatus::Updating) => return Ok(created),
            _ => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
    Err(IngestError::Aws {
        service: SERVICE,
        operation: "DescribeStreamSummary",
        message: format!("stream {stream} did not become ACTIVE within 120 s"),
        retriable: true,
    })
}

async fn describe_status(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    policy: &RetryPolicy,
) -> Result<Option<StreamStatus>, IngestError> {
    let res = retry(
        policy,
        SERVICE,
        "DescribeStreamSummary",
        is_retriable,
        || client.describe_stream_summary().stream_name(stream).send(),
    )
    .await;
    match res {
        Ok(out) => Ok(out
            .stream_description_summary()
            .map(|s| s.stream_status().clone())),
        Err(SdkError::ServiceError(e)) if e.err().is_resource_not_found_exception() => Ok(None),
        Err(e) => Err(ApiError::from_sdk("DescribeStreamSummary", &e).into()),
    }
}
