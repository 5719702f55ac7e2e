//! The per-shard Kinesis consumer: a [`Source`] over GetRecords.
//!
//! ```text
//!  new(after = checkpoint.committed)
//!   next_batch(max):
//!     lease lost? ─► Err(LeaseLost)                       (the processor stops)
//!     ready records? ─► whole Kinesis records, ≤ max user records (one aggregate may exceed)
//!     shard ended? ─► register ChildShards with the lease table ─► None
//!     wait for the poll slot (≥ 200 ms between calls; idle: doubling up to 1 s)
//!     iterator? ─ none ─► GetShardIterator AFTER_SEQUENCE_NUMBER last seen
//!                          (TRIM_HORIZON / LATEST before any record)
//!     GetRecords(limit = max) ─┬─ throttling, 5xx ─► retry helper (backoff + jitter)
//!                              ├─ ExpiredIterator ─► drop iterator, take a new one, again
//!                              └─ ok ─► each record: kpl::deaggregate
//!                                         plain ─► RawRecord sub_seq 0
//!                                         aggregate ─► RawRecord per user record (sub_seq)
//!                                         corrupt ─► RawRecord rejected (dead letter)
//!                                       NextShardIterator null ─► shard ended (ChildShards kept)
//!     idle and closed per ListShards (emulators) ─► shard ended
//! ```
//!
//! This file owns reading one shard. Positions: `last_seq` is the last Kinesis record
//! handed to the buffer; an iterator renewal restarts after it, so nothing is skipped and
//! nothing before it is read again. Records already covered by the checkpoint can still
//! arrive after a renewal at the checkpoint; the processor skips `seq <= committed`.
//! `next_batch` is cancel-safe: state changes only after an await has completed.

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_kinesis::operation::get_records::GetRecordsOutput;
use compact_str::CompactString;
use tokio::time::Instant;

use super::config::{ConsumerConfig, InitialPosition, MAX_GET_RECORDS};
use super::kpl;
use super::lease::LeaseHandle;
use super::metrics as km;
use super::{ApiError, IteratorPosition, KinesisApi, SERVICE, list_all_shards};
use crate::aws::{RetryPolicy, retry};
use crate::decode::DecodeError;
use crate::error::IngestError;
use crate::event::Timestamp;
use crate::record::{RawRecord, SeqNo, ShardId};
use crate::source::Source;

/// A child of a closed shard, from GetRecords' `ChildShards`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildShardInfo {
    /// The child shard.
    pub shard: ShardId,
    /// Its parents (two after a merge).
    pub parents: Vec<ShardId>,
}

/// Reads one shard of one stream.
pub struct KinesisShardSource {
    api: Arc<dyn KinesisApi>,
    stream: String,
    shard: ShardId,
    shard_label: String,
    policy: RetryPolicy,
    cfg: ConsumerConfig,
    iterator: Option<String>,
    /// The last Kinesis record read (or the checkpoint we started after).
    last_seq: Option<SeqNo>,
    ready: VecDeque<RawRecord>,
    ended: bool,
    children: Vec<ChildShardInfo>,
    children_registered: bool,
    next_call_at: Instant,
    idle_polls: u32,
    last_probe: Option<Instant>,
    lease: Option<LeaseHandle>,
}

impl KinesisShardSource {
    /// A source for `shard` that resumes after `after` (the checkpoint's `committed`), or
    /// starts at `cfg.initial_position` when there is none.
    pub fn new(
        api: Arc<dyn KinesisApi>,
        stream: impl Into<String>,
        shard: ShardId,
        after: Option<SeqNo>,
        cfg: ConsumerConfig,
        policy: RetryPolicy,
    ) -> KinesisShardSource {
        KinesisShardSource {
            api,
            stream: stream.into(),
            shard_label: shard.to_string(),
            shard,
            policy,
            cfg,
            iterator: None,
            last_seq: after,
            ready: VecDeque::new(),
            ended: false,
            children: Vec::new(),
            children_registered: false,
            next_call_at: Instant::now(),
            idle_polls: 0,
            last_probe: None,
            lease: None,
        }
    }

    /// Ties the source to a lease: `next_batch` fails with `LeaseLost` once the lease is
    /// lost, `close` releases it, and the children of a closed shard are registered in
    /// the lease table as soon as GetRecords names them.
    pub fn with_lease(mut self, lease: LeaseHandle) -> KinesisShardSource {
        self.lease = Some(lease);
        self
    }

    /// The children named by the last GetRecords of a closed shard (empty before the end,
    /// and on emulators that do not return them).
    pub fn child_shards(&self) -> &[ChildShardInfo] {
        &self.children
    }

    /// Whether the shard has been read to its end (the buffer may still hold records).
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// The last Kinesis sequence number read from the shard.
    pub fn last_sequence(&self) -> Option<&SeqNo> {
        self.last_seq.as_ref()
    }

    fn check_lease(&self) -> Result<(), IngestError> {
        match &self.lease {
            Some(l) if l.is_lost() => Err(IngestError::LeaseLost {
                shard: self.shard.to_string(),
                owner: l.lost_to(),
            }),
            _ => Ok(()),
        }
    }

    /// Takes whole Kinesis records (all their user records) up to `max` user records;
    /// at least one Kinesis record.
    fn take_batch(&mut self, max: usize) -> Vec<RawRecord> {
        let mut out: Vec<RawRecord> = Vec::with_capacity(max.min(self.ready.len()));
        while let Some(first) = self.ready.front() {
            let group = self.ready.iter().take_while(|r| r.seq == first.seq).count();
            if !out.is_empty() && out.len() + group > max {
                break;
            }
            out.extend(self.ready.drain(..group));
        }
        out
    }

    fn start_position(&self) -> IteratorPosition {
        match (&self.last_seq, self.cfg.initial_position) {
            (Some(seq), _) => IteratorPosition::AfterSequence(seq.clone()),
            (None, InitialPosition::TrimHorizon) => IteratorPosition::TrimHorizon,
            (None, InitialPosition::Latest) => IteratorPosition::Latest,
        }
    }

    async fn new_iterator(&self) -> Result<String, IngestError> {
        let position = self.start_position();
        Ok(retry(
            &self.policy,
            SERVICE,
            "GetShardIterator",
            |e: &ApiError| e.retriable,
            || {
                self.api
                    .get_shard_iterator(&self.stream, self.shard.as_str(), &position)
            },
        )
        .await?)
    }

    /// One GetRecords, renewing an expired iterator.
    #[tracing::instrument(skip(self), fields(shard = %self.shard))]
    async fn fetch(&mut self, limit: i32) -> Result<GetRecordsOutput, IngestError> {
        let mut renewals = 0;
        loop {
            let iterator = match &self.iterator {
                Some(it) => it.clone(),
                None => {
                    let it = self.new_iterator().await?;
                    self.iterator = Some(it.clone());
                    it
                }
            };
            let res = retry(
                &self.policy,
                SERVICE,
                "GetRecords",
                |e: &ApiError| e.retriable,
                || self.api.get_records(&iterator, limit),
            )
            .await;
            metrics::counter!(km::GET_RECORDS_CALLS_TOTAL, "shard" => self.shard_label.clone())
                .increment(1);
            match res {
                Ok(out) => return Ok(out),
                Err(e) if e.is_expired_iterator() && renewals < self.cfg.max_iterator_renewals => {
                    renewals += 1;
                    metrics::counter!(km::ITERATOR_RENEWALS_TOTAL, "shard" => self.shard_label.clone())
                        .increment(1);
                    tracing::debug!(after = ?self.last_seq, "shard iterator expired, taking a new one");
                    self.iterator = None;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Turns one GetRecords answer into buffered records (synchronous: cancel-safe).
    fn absorb(&mut self, out: GetRecordsOutput) -> usize {
        let GetRecordsOutput {
            records,
            next_shard_iterator,
            millis_behind_latest,
            child_shards,
            ..
        } = out;
        let (mut aggregates, mut corrupt) = (0u64, 0u64);
        let n = records.len();
        for rec in records {
            let Some(seq) = SeqNo::parse(&rec.sequence_number) else {
                // Kinesis sequence numbers are always decimal; a record without a usable
                // position cannot be checkpointed, so it is logged loudly, not processed.
                tracing::error!(seq = %rec.sequence_number, "record with an unparsable sequence number skipped");
                continue;
            };
            let arrival = rec
                .approximate_arrival_timestamp
                .and_then(|t| t.to_millis().ok())
                .map(Timestamp)
                .unwrap_or_else(|| Timestamp(chrono::Utc::now().timestamp_millis()));
            let data = bytes::Bytes::from(rec.data.into_inner());
            let partition_key = CompactString::from(rec.partition_key);
            match kpl::deaggregate(&data) {
                Ok(None) => self.ready.push_back(RawRecord {
                    shard: self.shard.clone(),
                    seq: seq.clone(),
                    sub_seq: 0,
                    partition_key,
                    arrival,
                    data,
                    rejected: None,
                }),
                Ok(Some(users)) => {
                    aggregates += 1;
                    for u in users {
                        self.ready.push_back(RawRecord {
                            shard: self.shard.clone(),
                            seq: seq.clone(),
                            sub_seq: u.sub_seq,
                            partition_key: u.partition_key,
                            arrival,
                            data: u.data,
                            rejected: None,
                        });
                    }
                }
                Err(e) => {
                    corrupt += 1;
                    tracing::warn!(seq = %seq, error = %e, "corrupt KPL aggregate sent to the dead letters");
                    self.ready.push_back(RawRecord {
                        shard: self.shard.clone(),
                        seq: seq.clone(),
                        sub_seq: 0,
                        partition_key,
                        arrival,
                        data,
                        rejected: Some(DecodeError::Unmappable(format!("kpl aggregate: {e}"))),
                    });
                }
            }
            self.last_seq = Some(seq);
        }
        let label = self.shard_label.clone();
        metrics::counter!(km::KINESIS_RECORDS_TOTAL, "shard" => label.clone()).increment(n as u64);
        if aggregates > 0 {
            metrics::counter!(km::AGGREGATES_TOTAL, "shard" => label.clone()).increment(aggregates);
        }
        if corrupt > 0 {
            metrics::counter!(km::CORRUPT_AGGREGATES_TOTAL, "shard" => label.clone())
                .increment(corrupt);
        }
        if let Some(ms) = millis_behind_latest {
            metrics::gauge!(km::MILLIS_BEHIND_LATEST, "shard" => label).set(ms as f64);
        }
        let now = Instant::now();
        match next_shard_iterator {
            Some(it) => self.iterator = Some(it),
            None => {
                self.iterator = None;
                self.ended = true;
                self.children = child_shards
                    .unwrap_or_default()
                    .iter()
                    .map(|c| ChildShardInfo {
                        shard: ShardId::new(c.shard_id()),
                        parents: c.parent_shards().iter().map(|p| ShardId::new(p)).collect(),
                    })
                    .collect();
                tracing::info!(shard = %self.shard, children = self.children.len(), "shard closed and read to its end");
            }
        }
        let caught_up = millis_behind_latest.unwrap_or(0) == 0;
        if n == 0 && caught_up {
            self.idle_polls = self.idle_polls.saturating_add(1);
            let wait = self
                .cfg
                .poll_interval()
                .saturating_mul(1 << (self.idle_polls - 1).min(8))
                .min(self.cfg.idle_poll_max());
            self.next_call_at = now + wait;
        } else {
            self.idle_polls = 0;
            self.next_call_at = now + self.cfg.poll_interval();
        }
        n
    }

    /// For emulators that never return a null iterator: is the shard closed and read up
    /// to its ending sequence number? (On AWS the ending number is the end of the shard's
    /// range, never reached by a record, so this is never true there.)
    async fn probe_closed(&mut self) -> Result<bool, IngestError> {
        let Some(every) = self.cfg.closed_probe_interval() else {
            return Ok(false);
        };
        if self.last_probe.is_some_and(|t| t.elapsed() < every) {
            return Ok(false);
        }
        self.last_probe = Some(Instant::now());
        let shards = list_all_shards(self.api.as_ref(), &self.stream, &self.policy).await?;
        let Some(me) = shards.iter().find(|s| s.id == self.shard) else {
            return Ok(false);
        };
        let Some(end) = &me.ending_seq else {
            return Ok(false);
        };
        let done = match &self.last_seq {
            Some(last) => last >= end,
            None => me.starting_seq.as_ref().is_some_and(|s| s >= end),
        };
        Ok(done)
    }
}

#[async_trait]
impl Source for KinesisShardSource {
    fn shard(&self) -> &ShardId {
        &self.shard
    }

    async fn next_batch(&mut self, max: usize) -> Result<Option<Vec<RawRecord>>, IngestError> {
        let max = max.max(1);
        self.check_lease()?;
        if !self.ready.is_empty() {
            return Ok(Some(self.take_batch(max)));
        }
        if self.ended {
            return self.end_of_shard().await;
        }
        tokio::time::sleep_until(self.next_call_at).await;
        self.check_lease()?;
        let limit = max.min(MAX_GET_RECORDS) as i32;
        let out = self.fetch(limit).await?;
        let n = self.absorb(out);
        if n == 0 && self.idle_polls > 0 && !self.ended && self.probe_closed().await? {
            tracing::info!(shard = %self.shard, last = ?self.last_seq, "shard closed (per ListShards) and read to its end");
            self.ended = true;
            self.iterator = None;
        }
        if self.ready.is_empty() {
            if self.ended {
                return self.end_of_shard().await;
            }
            return Ok(Some(Vec::new()));
        }
        Ok(Some(self.take_batch(max)))
    }

    async fn close(&mut self) -> Result<(), IngestError> {
        if let Some(lease) = self.lease.take()
            && !lease.is_lost()
        {
            if self.ended && self.ready.is_empty() {
                // Read to its end and checkpointed (close follows the final checkpoint).
                // A shard that never held a record has no checkpoint to carry the
                // `finished` flag, so it is set here.
                lease.finish().await?;
            } else {
                lease.release().await?;
            }
        }
        Ok(())
    }
}

impl KinesisShardSource {
    /// The shard is read to its end and the buffer is empty: register the children (once,
    /// idempotent in the table) and say `None`.
    async fn end_of_shard(&mut self) -> Result<Option<Vec<RawRecord>>, IngestError> {
        if !self.children_registered {
            if let Some(lease) = &self.lease
                && !self.children.is_empty()
            {
                lease.register_children(&self.children).await?;
            }
            self.children_registered = true;
        }
        Ok(None)
    }
}
