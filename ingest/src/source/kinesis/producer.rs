//! The Kinesis producer behind `recstream replay --to kinesis` and the collector in AWS
//! mode.
//!
//! ```text
//!  put(records) ─► check each (1..=256 char key, key + data ≤ 1 MiB) ─► Err before any call
//!        │
//!        ├─► lanes by hash(partition key)   (one lane when everything fits one call;
//!        │     │                             records of one key stay in one lane, in order)
//!        │     └─► chunks ≤ 500 records, ≤ 5 MiB (keys counted) ─► sequential per lane
//!        │            └─► PutRecords  [semaphore: ≤ max_in_flight calls per producer]
//!        │                  ├─ call error ──► retry helper (throttling, 5xx, timeouts)
//!        │                  └─ FailedRecordCount > 0 ─► backoff ─► resend only the failed
//!        │                                             entries (up to max_attempts)
//!        └─► PutSummary { records, calls, resent }
//! ```
//!
//! Ordering: records of one partition key are sent in order, one call at a time per lane.
//! A partial failure resends the failed entries after the ones of the same call that
//! succeeded, as every PutRecords client does; the stream's sequence order is the order
//! the processor applies, so every consumer still sees one order.
//!
//! Errors: a record over the limits fails the whole `put` before anything is sent (the
//! collector answers 413); a call that keeps failing fails `put` after the retry policy
//! is used up, and records of other lanes or earlier chunks may have been delivered
//! (the caller's retry can duplicate them; events carry `event_id`).

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use bytes::Bytes;
use tokio::sync::Semaphore;

use super::config::{MAX_PARTITION_KEY_CHARS, MAX_RECORD_BYTES, ProducerConfig};
use super::metrics as km;
use super::{ApiError, KinesisApi, SERVICE, SdkKinesis};
use crate::aws::{AwsConfig, RetryPolicy, retry};
use crate::error::IngestError;

/// What one `put` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PutSummary {
    /// Records Kinesis accepted.
    pub records: usize,
    /// PutRecords calls made (retries of a whole call by the retry helper not counted).
    pub calls: usize,
    /// Records resent after a partial failure.
    pub resent: usize,
}

impl PutSummary {
    fn add(&mut self, o: PutSummary) {
        self.records += o.records;
        self.calls += o.calls;
        self.resent += o.resent;
    }
}

/// Puts records into one stream with PutRecords.
#[derive(Clone)]
pub struct KinesisProducer {
    api: Arc<dyn KinesisApi>,
    stream: String,
    policy: RetryPolicy,
    cfg: ProducerConfig,
    in_flight: Arc<Semaphore>,
}

impl std::fmt::Debug for KinesisProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KinesisProducer")
            .field("stream", &self.stream)
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl KinesisProducer {
    /// A producer over any [`KinesisApi`] (tests inject failures through it).
    pub fn new(
        api: Arc<dyn KinesisApi>,
        stream: impl Into<String>,
        policy: RetryPolicy,
        cfg: ProducerConfig,
    ) -> KinesisProducer {
        let permits = cfg.max_in_flight.max(1);
        KinesisProducer {
            api,
            stream: stream.into(),
            policy,
            cfg,
            in_flight: Arc::new(Semaphore::new(permits)),
        }
    }

    /// A producer for `aws.stream` with a client from the standard SDK environment.
    pub async fn from_env(aws: &AwsConfig, cfg: ProducerConfig) -> KinesisProducer {
        let api = Arc::new(SdkKinesis::from_env(aws).await);
        KinesisProducer::new(api, aws.stream.clone(), aws.retry_policy(), cfg)
    }

    /// The stream records are put into.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Puts `(partition key, data)` records; returns once every record is accepted.
    #[tracing::instrument(skip(self, records), fields(stream = %self.stream, records = records.len()))]
    pub async fn put(&self, records: Vec<(String, Bytes)>) -> Result<PutSummary, IngestError> {
        if records.is_empty() {
            return Ok(PutSummary::default());
        }
        for (i, (key, data)) in records.iter().enumerate() {
            check_record(key, data.len()).map_err(|m| IngestError::Aws {
                service: SERVICE,
                operation: "PutRecords",
                message: format!("record {i} rejected: {m}"),
                retriable: false,
            })?;
        }
        let sizes: Vec<usize> = records.iter().map(|(k, d)| k.len() + d.len()).collect();
        let calls = chunk_ends(
            &sizes,
            self.cfg.max_records_per_call,
            self.cfg.max_bytes_per_call,
        )
        .len();
        let lanes = calls.min(self.cfg.max_in_flight).max(1);
        let mut lane_entries: Vec<Vec<(usize, PutRecordsRequestEntry)>> = vec![Vec::new(); lanes];
        for (key, data) in records {
            let lane = if lanes == 1 { 0 } else { lane_of(&key, lanes) };
            let size = key.len() + data.len();
            let entry = PutRecordsRequestEntry::builder()
                .partition_key(key)
                .data(Blob::new(Vec::<u8>::from(data)))
                .build()
                .map_err(|e| IngestError::Aws {
                    service: SERVICE,
                    operation: "PutRecords",
                    message: format!("building a request entry: {e}"),
                    retriable: false,
                })?;
            lane_entries[lane].push((size, entry));
        }
        let results =
            futures::future::join_all(lane_entries.into_iter().map(|l| self.send_lane(l))).await;
        let mut summary = PutSummary::default();
        let mut first_err = None;
        for r in results {
            match r {
                Ok(s) => summary.add(s),
                Err((s, e)) => {
                    summary.add(s);
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            None => Ok(summary),
            Some(IngestError::Aws {
                service,
                operation,
                message,
                retriable,
            }) => Err(IngestError::Aws {
                service,
                operation,
                message: format!("{message} ({} records delivered before)", summary.records),
                retriable,
            }),
            Some(e) => Err(e),
        }
    }

    /// Sends one lane's entries chunk after chunk.
    async fn send_lane(
        &self,
        entries: Vec<(usize, PutRecordsRequestEntry)>,
    ) -> Result<PutSummary, (PutSummary, IngestError)> {
        let sizes: Vec<usize> = entries.iter().map(|(s, _)| *s).collect();
        let mut entries = entries.into_iter().map(|(_, e)| e);
        let mut summary = PutSummary::default();
        let mut start = 0;
        for end in chunk_ends(
            &sizes,
            self.cfg.max_records_per_call,
            self.cfg.max_bytes_per_call,
        ) {
            let chunk: Vec<PutRecordsRequestEntry> = entries.by_ref().take(end - start).collect();
            start = end;
            match self.send_chunk(chunk).await {
                Ok(s) => summary.add(s),
                Err((s, e)) => {
                    summary.add(s);
                    return Err((summary, e));
                }
            }
        }
        Ok(summary)
    }

    /// One PutRecords chunk, resending failed entries until none is left.
    #[tracing::instrument(skip_all, fields(records = pending.len()))]
    async fn send_chunk(
        &self,
        mut pending: Vec<PutRecordsRequestEntry>,
    ) -> Result<PutSummary, (PutSummary, IngestError)> {
        let mut summary = PutSummary::default();
        let mut attempt = 1u32;
        loop {
            let out = {
                let _permit = self.in_flight.acquire().await.map_err(|_| {
                    (
                        summary,
                        IngestError::Aws {
                            service: SERVICE,
                            operation: "PutRecords",
                            message: "producer closed".into(),
                            retriable: false,
                        },
                    )
                })?;
                retry(
                    &self.policy,
                    SERVICE,
                    "PutRecords",
                    |e: &ApiError| e.retriable,
                    || self.api.put_records(&self.stream, &pending),
                )
                .await
            };
            summary.calls += 1;
            metrics::counter!(km::PUT_CALLS_TOTAL).increment(1);
            let out = match out {
                Ok(out) => out,
                Err(e) => {
                    metrics::counter!(km::PUT_FAILED_TOTAL).increment(pending.len() as u64);
                    return Err((summary, e.into()));
                }
            };
            let results = out.records();
            if results.len() != pending.len() {
                metrics::counter!(km::PUT_FAILED_TOTAL).increment(pending.len() as u64);
                return Err((
                    summary,
                    IngestError::Aws {
                        service: SERVICE,
                        operation: "PutRecords",
                        message: format!(
                            "answered {} results for {} records",
                            results.len(),
                            pending.len()
                        ),
                        retriable: true,
                    },
                ));
            }
            let any_failed = out.failed_record_count().unwrap_or(0) > 0
                || results.iter().any(|r| r.error_code().is_some());
            if !any_failed {
                summary.records += pending.len();
                metrics::counter!(km::PUT_RECORDS_TOTAL).increment(pending.len() as u64);
                return Ok(summary);
            }
            let mut last_code = String::new();
            let mut failed = Vec::new();
            for (r, entry) in results.iter().zip(pending) {
                match r.error_code() {
                    Some(code) => {
                        if last_code.is_empty() {
                            last_code = format!("{code}: {}", r.error_message().unwrap_or(""));
                        }
                        failed.push(entry);
                    }
                    None => summary.records += 1,
                }
            }
            metrics::counter!(km::PUT_RECORDS_TOTAL)
                .increment((results.len() - failed.len()) as u64);
            if attempt >= self.policy.max_attempts {
                metrics::counter!(km::PUT_FAILED_TOTAL).increment(failed.len() as u64);
                return Err((
                    summary,
                    IngestError::Aws {
                        service: SERVICE,
                        operation: "PutRecords",
                        message: format!(
                            "{} records still failing after {attempt} attempts (last: {last_code})",
                            failed.len()
                        ),
                        retriable: true,
                    },
                ));
            }
            summary.resent += failed.len();
            metrics::counter!(km::PUT_RESENT_TOTAL).increment(failed.len() as u64);
            let wait = self.policy.backoff(attempt);
            tracing::debug!(failed = failed.len(), attempt, ?wait, code = %last_code, "resending failed records");
            tokio::time::sleep(wait).await;
            attempt += 1;
            pending = failed;
        }
    }
}

/// Checks one record against Kinesis' limits: a partition key of 1..=256 characters, and
/// key plus data at most 1 MiB.
pub fn check_record(partition_key: &str, data_len: usize) -> Result<(), String> {
    let chars = partition_key.chars().count();
    if chars == 0 || chars > MAX_PARTITION_KEY_CHARS {
        return Err(format!(
            "partition key has {chars} characters, Kinesis takes 1..={MAX_PARTITION_KEY_CHARS}"
        ));
    }
    let size = partition_key.len() + data_len;
    if size > MAX_RECORD_BYTES {
        return Err(format!(
            "record is {size} bytes (data + partition key), over Kinesis' limit of {MAX_RECORD_BYTES} (1 MiB)"
        ));
    }
    Ok(())
}

/// Splits records of the given sizes, in order, into calls of at most `max_records`
/// records and `max_bytes` bytes; returns each call's end index. A record larger than
/// `max_bytes` gets a call of its own (the caller rejects those before).
pub fn chunk_ends(sizes: &[usize], max_records: usize, max_bytes: usize) -> Vec<usize> {
    let mut ends = Vec::new();
    let (mut count, mut bytes) = (0usize, 0usize);
    for (i, &size) in sizes.iter().enumerate() {
        if count > 0 && (count == max_records || bytes + size > max_bytes) {
            ends.push(i);
            count = 0;
            bytes = 0;
        }
        count += 1;
        bytes += size;
    }
    if count > 0 {
        ends.push(sizes.len());
    }
    ends
}

fn lane_of(key: &str, lanes: usize) -> usize {
    let mut h = rustc_hash::FxHasher::default();
    key.hash(&mut h);
    (h.finish() % lanes as u64) as usize
}

#[cfg(test)]
mod unit {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn oversized_and_bad_keys_are_rejected_with_a_reason() {
        assert!(check_record("u1", 10).is_ok());
        assert!(check_record("u1", MAX_RECORD_BYTES - 2).is_ok());
        let e = check_record("u1", MAX_RECORD_BYTES - 1).unwrap_err();
        assert!(e.contains("1 MiB"), "{e}");
        assert!(check_record("", 1).unwrap_err().contains("partition key"));
        assert!(check_record(&"é".repeat(256), 1).is_ok());
        assert!(check_record(&"k".repeat(257), 1).is_err());
    }

    proptest! {
        /// Chunks cover every record once, in order, within both bounds.
        #[test]
        fn chunks_respect_both_bounds(sizes in prop::collection::vec(1usize..=MAX_RECORD_BYTES, 0..1500)) {
            let ends = chunk_ends(&sizes, 500, 5 * 1024 * 1024);
            let mut start = 0;
            for &end in &ends {
                prop_assert!(end > start);
                prop_assert!(end - start <= 500);
                prop_assert!(sizes[start..end].iter().sum::<usize>() <= 5 * 1024 * 1024);
                // greedy: the next record would not have fitted
                if end < sizes.len() {
                    prop_assert!(end - start == 500 || sizes[start..=end].iter().sum::<usize>() > 5 * 1024 * 1024);
                }
                start = end;
            }
            prop_assert_eq!(start, sizes.len());
        }
    }
}
