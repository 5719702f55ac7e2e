//! Tests of the Kinesis module.
//!
//! ```text
//!  in-memory FakeKinesis ──┐                     (always run: consumer and producer logic,
//!                          ├─► Injecting wrapper   time paused)
//!  moto_server (SDK) ──────┘   (partial PutRecords failures, ExpiredIterator, throttling —
//!                               what an emulator never produces)
//!  moto_server ─► LeaseCoordinator (DynamoDB), KPL records from `aws-kinesis-agg` (Python)
//! ```
//!
//! The emulator tests read the endpoint from `AWS_ENDPOINT_URL` (scripts/test starts
//! moto_server and sets it). Without it they fail under `CI=true` and announce loudly that
//! they did not run otherwise. Every test uses its own stream and table names, so they run
//! in parallel against one emulator.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_kinesis::operation::get_records::GetRecordsOutput;
use aws_sdk_kinesis::operation::list_shards::ListShardsOutput;
use aws_sdk_kinesis::operation::put_records::PutRecordsOutput;
use aws_sdk_kinesis::primitives::{Blob, DateTime};
use aws_sdk_kinesis::types::{
    ChildShard, HashKeyRange, PutRecordsRequestEntry, PutRecordsResultEntry, Record,
    SequenceNumberRange, Shard,
};
use bytes::Bytes;

use super::config::{ConsumerConfig, LeaseConfig, ProducerConfig};
use super::*;
use crate::aws::{AwsConfig, RetryPolicy};
use crate::decode::DecodeError;
use crate::record::{RawRecord, SeqNo, ShardCheckpoint, ShardId};
use crate::source::Source;

// ---------------------------------------------------------------------------------------
// helpers

fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 8,
        base: Duration::from_millis(2),
        max: Duration::from_millis(20),
    }
}

fn fast_consumer() -> ConsumerConfig {
    ConsumerConfig {
        poll_interval_ms: 10,
        idle_poll_max_ms: 50,
        closed_probe_interval_ms: 100,
        ..Default::default()
    }
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A stream / table name no other test (or earlier run) uses.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "rs-{prefix}-{}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000,
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    )
}

/// The emulator's SDK configuration, or `None` (after a loud message) when no endpoint is
/// set outside CI. Under `CI=true` a missing endpoint fails the test.
pub(crate) async fn emulator(test: &str) -> Option<aws_config::SdkConfig> {
    if std::env::var("AWS_ENDPOINT_URL").is_err() {
        let msg = format!(
            "{test}: AWS_ENDPOINT_URL is not set, so this AWS emulator test cannot run; \
             run the suite with `scripts/test`, which starts moto_server and sets it"
        );
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("{msg}");
        }
        eprintln!("\n!!!!!!!!!! NOT RUN: {msg}\n");
        return None;
    }
    Some(crate::aws::sdk_config(Some("us-east-1")).await)
}

fn test_aws(tag: &str) -> AwsConfig {
    AwsConfig {
        stream: unique(tag),
        table_prefix: format!("{}-", unique(tag)),
        lease_duration_ms: 1_500,
        max_attempts: 6,
        base_backoff_ms: 5,
        max_backoff_ms: 100,
        ..Default::default()
    }
}

/// Reads `source` until `want` records arrived, the shard ended, or `timeout` passed.
async fn read_n(
    source: &mut KinesisShardSource,
    max: usize,
    want: usize,
    timeout: Duration,
) -> (Vec<Vec<RawRecord>>, bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut batches = Vec::new();
    let mut n = 0;
    while n < want && tokio::time::Instant::now() < deadline {
        match source.next_batch(max).await.expect("next_batch") {
            None => return (batches, true),
            Some(b) if b.is_empty() => {}
            Some(b) => {
                n += b.len();
                batches.push(b);
            }
        }
    }
    (batches, false)
}

/// Reads until the source says the shard ended.
async fn read_to_end(
    source: &mut KinesisShardSource,
    max: usize,
    timeout: Duration,
) -> Vec<RawRecord> {
    let (batches, ended) = read_n(source, max, usize::MAX, timeout).await;
    assert!(
        ended,
        "shard {} did not end within {timeout:?}",
        source.shard()
    );
    batches.into_iter().flatten().collect()
}

fn event(user: usize, n: usize) -> Bytes {
    Bytes::from(format!(r#"{{"user":"user-{user}","n":{n}}}"#))
}

fn parse_event(data: &[u8]) -> (String, usize) {
    let v: serde_json::Value = serde_json::from_slice(data).expect("test event json");
    (
        v["user"].as_str().unwrap().to_string(),
        v["n"].as_u64().unwrap() as usize,
    )
}

/// Checks that every user's events came back once each, in the order put.
fn assert_per_user_order(records: &[RawRecord], expected_per_user: &BTreeMap<String, usize>) {
    let mut seen: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for r in records {
        let (user, n) = parse_event(&r.data);
        seen.entry(user).or_default().push(n);
    }
    assert_eq!(seen.len(), expected_per_user.len(), "users seen");
    for (user, ns) in &seen {
        let want: Vec<usize> = (0..expected_per_user[user]).collect();
        assert_eq!(
            ns, &want,
            "events of {user} out of order, missing or doubled"
        );
    }
}

// ---------------------------------------------------------------------------------------
// an in-memory Kinesis

const SEQ_BASE: &str = "49590338271490256608559692538361";

struct FakeShard {
    id: String,
    parents: Vec<String>,
    records: Vec<Record>,
    closed: bool,
    children: Vec<String>,
}

/// Kinesis in memory: open shards take records by partition key hash; closed shards end
/// with a null iterator and `ChildShards`, like AWS. Sequence numbers are 52 digits.
#[derive(Default)]
pub(crate) struct FakeKinesis {
    shards: Mutex<Vec<FakeShard>>,
    seq: AtomicU64,
    put_calls: Mutex<Vec<(usize, usize)>>,
}

impl FakeKinesis {
    pub(crate) fn new(shards: usize) -> FakeKinesis {
        let f = FakeKinesis::default();
        {
            let mut s = f.shards.lock().unwrap();
            for i in 0..shards {
                s.push(FakeShard {
                    id: format!("shardId-{i:012}"),
                    parents: vec![],
                    records: vec![],
                    closed: false,
                    children: vec![],
                });
            }
        }
        f
    }

    fn next_seq(&self) -> String {
        format!(
            "{SEQ_BASE}{:020}",
            self.seq.fetch_add(1, Ordering::Relaxed) + 1
        )
    }

    /// Appends a record to shard `ix` directly.
    pub(crate) fn append(&self, ix: usize, pk: &str, data: &[u8]) -> String {
        let seq = self.next_seq();
        let rec = Record::builder()
            .sequence_number(&seq)
            .partition_key(pk)
            .data(Blob::new(data.to_vec()))
            .approximate_arrival_timestamp(DateTime::from_millis(1_700_000_000_000))
            .build()
            .unwrap();
        self.shards.lock().unwrap()[ix].records.push(rec);
        seq
    }

    /// Closes shard `ix` and opens `n` children of it.
    fn split(&self, ix: usize, n: usize) -> Vec<String> {
        let mut s = self.shards.lock().unwrap();
        let parent = s[ix].id.clone();
        let first = s.len();
        let ids: Vec<String> = (first..first + n)
            .map(|i| format!("shardId-{i:012}"))
            .collect();
        for id in &ids {
            s.push(FakeShard {
                id: id.clone(),
                parents: vec![parent.clone()],
                records: vec![],
                closed: false,
                children: vec![],
            });
        }
        s[ix].closed = true;
        s[ix].children = ids.clone();
        ids
    }

    fn shard_ix(&self, id: &str) -> Option<usize> {
        self.shards.lock().unwrap().iter().position(|s| s.id == id)
    }
}

fn iterator(shard: &str, pos: usize) -> String {
    format!("{shard}|{pos}")
}

#[async_trait]
impl KinesisApi for FakeKinesis {
    async fn put_records(
        &self,
        _stream: &str,
        entries: &[PutRecordsRequestEntry],
    ) -> Result<PutRecordsOutput, ApiError> {
        let bytes = entries
            .iter()
            .map(|e| e.partition_key().len() + e.data().as_ref().len())
            .sum();
        self.put_calls.lock().unwrap().push((entries.len(), bytes));
        let mut results = Vec::new();
        for e in entries {
            let open: Vec<usize> = {
                let s = self.shards.lock().unwrap();
                (0..s.len()).filter(|&i| !s[i].closed).collect()
            };
            let h = e
                .partition_key()
                .bytes()
                .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
            let ix = open[(h % open.len() as u64) as usize];
            let seq = self.append(ix, e.partition_key(), e.data().as_ref());
            let shard = self.shards.lock().unwrap()[ix].id.clone();
            results.push(
                PutRecordsResultEntry::builder()
                    .sequence_number(seq)
                    .shard_id(shard)
                    .build(),
            );
        }
        Ok(PutRecordsOutput::builder()
            .set_records(Some(results))
            .failed_record_count(0)
            .build()
            .unwrap())
    }

    async fn get_shard_iterator(
        &self,
        _stream: &str,
        shard: &str,
        position: &IteratorPosition,
    ) -> Result<String, ApiError> {
        let s = self.shards.lock().unwrap();
        let sh = s.iter().find(|x| x.id == shard).ok_or_else(|| {
            ApiError::service("GetShardIterator", "ResourceNotFoundException", false)
        })?;
        let seq_of = |r: &Record| SeqNo::parse(r.sequence_number()).unwrap();
        let pos = match position {
            IteratorPosition::TrimHorizon => 0,
            IteratorPosition::Latest => sh.records.len(),
            IteratorPosition::AfterSequence(after) => sh
                .records
                .iter()
                .position(|r| seq_of(r) > *after)
                .unwrap_or(sh.records.len()),
            IteratorPosition::AtSequence(at) => sh
                .records
                .iter()
                .position(|r| seq_of(r) >= *at)
                .unwrap_or(sh.records.len()),
        };
        Ok(iterator(shard, pos))
    }

    async fn get_records(&self, it: &str, limit: i32) -> Result<GetRecordsOutput, ApiError> {
        let (shard, pos) = it
            .split_once('|')
            .ok_or_else(|| ApiError::service("GetRecords", "InvalidArgumentException", false))?;
        let pos: usize = pos.parse().unwrap();
        let s = self.shards.lock().unwrap();
        let sh = s.iter().find(|x| x.id == shard).unwrap();
        let end = (pos + limit as usize).min(sh.records.len());
        let records = sh.records[pos..end].to_vec();
        let at_end = end == sh.records.len();
        let mut out = GetRecordsOutput::builder()
            .set_records(Some(records))
            .millis_behind_latest(if at_end { 0 } else { 5_000 });
        if sh.closed && at_end {
            for c in &sh.children {
                out = out.child_shards(
                    ChildShard::builder()
                        .shard_id(c)
                        .parent_shards(&sh.id)
                        .hash_key_range(
                            HashKeyRange::builder()
                                .starting_hash_key("0")
                                .ending_hash_key("1")
                                .build()
                                .unwrap(),
                        )
                        .build()
                        .unwrap(),
                );
            }
        } else {
            out = out.next_shard_iterator(iterator(shard, end));
        }
        Ok(out.build().unwrap())
    }

    async fn list_shards(
        &self,
        _stream: &str,
        _next_token: Option<&str>,
    ) -> Result<ListShardsOutput, ApiError> {
        let s = self.shards.lock().unwrap();
        let shards = s
            .iter()
            .map(|x| {
                let mut b = Shard::builder()
                    .shard_id(&x.id)
                    .hash_key_range(
                        HashKeyRange::builder()
                            .starting_hash_key("0")
                            .ending_hash_key("1")
                            .build()
                            .unwrap(),
                    )
                    .sequence_number_range({
                        let r = SequenceNumberRange::builder()
                            .starting_sequence_number(format!("{SEQ_BASE}{:020}", 0));
                        // Like AWS: the ending number of a closed shard is the end of its
                        // range, above any record.
                        if x.closed {
                            r.ending_sequence_number(format!("{SEQ_BASE}{:020}", u64::MAX / 2))
                        } else {
                            r
                        }
                        .build()
                        .unwrap()
                    });
                if let Some(p) = x.parents.first() {
                    b = b.parent_shard_id(p);
                }
                b.build().unwrap()
            })
            .collect();
        Ok(ListShardsOutput::builder().set_shards(Some(shards)).build())
    }
}

// ---------------------------------------------------------------------------------------
// fault injection around any KinesisApi

/// Wraps a [`KinesisApi`] and injects what emulators never produce.
pub(crate) struct Injecting<A> {
    inner: A,
    /// Fail (once each) the PutRecords entries whose running index is a multiple of this.
    put_fail_every: usize,
    /// Answer every n-th GetRecords with ExpiredIteratorException.
    expire_every: usize,
    /// Answer every n-th GetRecords with ProvisionedThroughputExceededException.
    throttle_every: usize,
    put_entries: AtomicUsize,
    failed_once: Mutex<HashSet<Vec<u8>>>,
    gets: AtomicUsize,
    pub(crate) expired: AtomicUsize,
    pub(crate) throttled: AtomicUsize,
    pub(crate) put_failed: AtomicUsize,
}

impl<A: KinesisApi> Injecting<A> {
    pub(crate) fn new(inner: A) -> Injecting<A> {
        Injecting {
            inner,
            put_fail_every: 0,
            expire_every: 0,
            throttle_every: 0,
            put_entries: AtomicUsize::new(0),
            failed_once: Mutex::new(HashSet::new()),
            gets: AtomicUsize::new(0),
            expired: AtomicUsize::new(0),
            throttled: AtomicUsize::new(0),
            put_failed: AtomicUsize::new(0),
        }
    }
    fn put_fail_every(mut self, n: usize) -> Self {
        self.put_fail_every = n;
        self
    }
    fn expire_every(mut self, n: usize) -> Self {
        self.expire_every = n;
        self
    }
    fn throttle_every(mut self, n: usize) -> Self {
        self.throttle_every = n;
        self
    }
}

#[async_trait]
impl<A: KinesisApi> KinesisApi for Injecting<A> {
    async fn put_records(
        &self,
        stream: &str,
        entries: &[PutRecordsRequestEntry],
    ) -> Result<PutRecordsOutput, ApiError> {
        // Decide which entries fail; forward only the others, so that the stream holds
        // exactly what a real partial failure would have left in it.
        let mut fail = vec![false; entries.len()];
        if self.put_fail_every > 0 {
            let mut once = self.failed_once.lock().unwrap();
            for (i, e) in entries.iter().enumerate() {
                let k = self.put_entries.fetch_add(1, Ordering::Relaxed);
                if k.is_multiple_of(self.put_fail_every) && once.insert(e.data().as_ref().to_vec())
                {
                    fail[i] = true;
                }
            }
        }
        let forward: Vec<PutRecordsRequestEntry> = entries
            .iter()
            .zip(&fail)
            .filter(|(_, f)| !**f)
            .map(|(e, _)| e.clone())
            .collect();
        let real = if forward.is_empty() {
            Vec::new()
        } else {
            self.inner
                .put_records(stream, &forward)
                .await?
                .records()
                .to_vec()
        };
        let mut real = real.into_iter();
        let mut results = Vec::with_capacity(entries.len());
        let mut failed = 0;
        for f in fail {
            if f {
                failed += 1;
                results.push(
                    PutRecordsResultEntry::builder()
                        .error_code("ProvisionedThroughputExceededException")
                        .error_message("Rate exceeded for shard (injected)")
                        .build(),
                );
            } else {
                results.push(real.next().expect("one result per forwarded entry"));
            }
        }
        self.put_failed.fetch_add(failed, Ordering::Relaxed);
        Ok(PutRecordsOutput::builder()
            .set_records(Some(results))
            .failed_record_count(failed as i32)
            .build()
            .unwrap())
    }

    async fn get_shard_iterator(
        &self,
        stream: &str,
        shard: &str,
        position: &IteratorPosition,
    ) -> Result<String, ApiError> {
        self.inner.get_shard_iterator(stream, shard, position).await
    }

    async fn get_records(&self, it: &str, limit: i32) -> Result<GetRecordsOutput, ApiError> {
        let k = self.gets.fetch_add(1, Ordering::Relaxed) + 1;
        if self.expire_every > 0 && k.is_multiple_of(self.expire_every) {
            self.expired.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::service(
                "GetRecords",
                "ExpiredIteratorException",
                false,
            ));
        }
        if self.throttle_every > 0 && k.is_multiple_of(self.throttle_every) {
            self.throttled.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::service(
                "GetRecords",
                "ProvisionedThroughputExceededException",
                true,
            ));
        }
        self.inner.get_records(it, limit).await
    }

    async fn list_shards(
        &self,
        stream: &str,
        next_token: Option<&str>,
    ) -> Result<ListShardsOutput, ApiError> {
        self.inner.list_shards(stream, next_token).await
    }
}

// ---------------------------------------------------------------------------------------
// consumer and producer logic on the in-memory Kinesis (always run)

fn source(api: Arc<dyn KinesisApi>, shard: &str, after: Option<SeqNo>) -> KinesisShardSource {
    KinesisShardSource::new(
        api,
        "s",
        ShardId::new(shard),
        after,
        fast_consumer(),
        fast_policy(),
    )
}

#[tokio::test(start_paused = true)]
async fn consumer_renews_expired_iterators_and_rides_out_throttling() {
    let fake = FakeKinesis::new(1);
    for i in 0..95 {
        fake.append(0, "u", &event(0, i));
    }
    let api = Arc::new(Injecting::new(fake).expire_every(3).throttle_every(4));
    let mut src = source(api.clone(), "shardId-000000000000", None);
    let (batches, _) = read_n(&mut src, 10, 95, Duration::from_secs(60)).await;
    let records: Vec<RawRecord> = batches.into_iter().flatten().collect();
    assert_eq!(records.len(), 95);
    assert_per_user_order(&records, &BTreeMap::from([("user-0".to_string(), 95)]));
    assert!(
        api.expired.load(Ordering::Relaxed) >= 3,
        "expiry was exercised"
    );
    assert!(
        api.throttled.load(Ordering::Relaxed) >= 2,
        "throttling was exercised"
    );
    let seqs: Vec<&SeqNo> = records.iter().map(|r| &r.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing positions"
    );
    assert_eq!(
        records[0].arrival.0, 1_700_000_000_000,
        "arrival = ApproximateArrivalTimestamp"
    );
}

#[tokio::test(start_paused = true)]
async fn consumer_resumes_after_the_checkpoint() {
    let fake = FakeKinesis::new(1);
    let seqs: Vec<String> = (0..20).map(|i| fake.append(0, "u", &event(0, i))).collect();
    let api: Arc<dyn KinesisApi> = Arc::new(fake);
    let after = SeqNo::parse(&seqs[11]).unwrap();
    let mut src = source(api, "shardId-000000000000", Some(after));
    let (batches, _) = read_n(&mut src, 100, 8, Duration::from_secs(10)).await;
    let got: Vec<usize> = batches
        .iter()
        .flatten()
        .map(|r| parse_event(&r.data).1)
        .collect();
    assert_eq!(got, (12..20).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn closed_shard_ends_after_its_last_record_and_names_its_children() {
    let fake = Arc::new(FakeKinesis::new(1));
    for i in 0..7 {
        fake.append(0, "u", &event(0, i));
    }
    let children = fake.split(0, 2);
    let api: Arc<dyn KinesisApi> = fake.clone();
    let mut src = source(api.clone(), "shardId-000000000000", None);
    let records = read_to_end(&mut src, 3, Duration::from_secs(10)).await;
    assert_eq!(records.len(), 7);
    let named: Vec<&str> = src
        .child_shards()
        .iter()
        .map(|c| c.shard.as_str())
        .collect();
    assert_eq!(
        named,
        children.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert!(
        src.child_shards()
            .iter()
            .all(|c| c.parents == [ShardId::new("shardId-000000000000")])
    );
    // later calls keep saying the shard is finished
    assert!(src.next_batch(3).await.unwrap().is_none());
    // the children take new records and are read normally
    let ix = fake.shard_ix(&children[1]).unwrap();
    fake.append(ix, "u", &event(0, 7));
    let mut child = source(api, &children[1], None);
    let (b, ended) = read_n(&mut child, 10, 1, Duration::from_secs(5)).await;
    assert!(!ended);
    assert_eq!(parse_event(&b[0][0].data), ("user-0".to_string(), 7));
}

#[tokio::test(start_paused = true)]
async fn aggregates_are_expanded_whole_and_corrupt_ones_dead_lettered() {
    let fake = FakeKinesis::new(1);
    fake.append(0, "p", b"{\"plain\":1}");
    let users: Vec<(String, Bytes)> = (0..5).map(|i| (format!("user-{i}"), event(i, 0))).collect();
    let agg = kpl::aggregate(users.iter().map(|(k, d)| (k.as_str(), None, &d[..])));
    let agg_seq = fake.append(0, "user-0", &agg);
    let mut corrupt = agg.to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xFF;
    let corrupt_seq = fake.append(0, "user-0", &corrupt);
    fake.append(0, "p", b"{\"plain\":2}");
    let api: Arc<dyn KinesisApi> = Arc::new(fake);
    let mut src = source(api, "shardId-000000000000", None);
    let (batches, _) = read_n(&mut src, 3, 8, Duration::from_secs(10)).await;
    // max 3: [plain], [aggregate of 5: one batch, over max], [corrupt], [plain]
    let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
    assert_eq!(sizes, [1, 5, 1, 1]);
    let agg_batch = &batches[1];
    assert!(agg_batch.iter().all(|r| r.seq.as_str() == agg_seq));
    assert_eq!(
        agg_batch.iter().map(|r| r.sub_seq).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
    assert_eq!(agg_batch[3].partition_key, "user-3");
    assert_eq!(agg_batch[3].data, event(3, 0));
    let dead = &batches[2][0];
    assert_eq!(dead.seq.as_str(), corrupt_seq);
    assert_eq!(
        &dead.data[..],
        &corrupt[..],
        "raw bytes kept for the dead letter"
    );
    match &dead.rejected {
        Some(DecodeError::Unmappable(m)) => assert!(m.contains("kpl"), "{m}"),
        other => panic!("expected a dead letter, got {other:?}"),
    }
    assert!(batches[3][0].rejected.is_none());
}

#[tokio::test(start_paused = true)]
async fn producer_resends_only_failed_entries_and_respects_call_limits() {
    let fake = Arc::new(FakeKinesis::new(4));
    let api = Arc::new(Injecting::new(fake.clone()).put_fail_every(7));
    let producer = KinesisProducer::new(api.clone(), "s", fast_policy(), ProducerConfig::default());
    // 1,300 records of ~4 KiB: the byte bound (5 MiB) cuts calls before the count bound.
    let mut records = Vec::new();
    let mut per_user = BTreeMap::new();
    for i in 0..1_300 {
        let u = i % 37;
        let n = per_user.entry(format!("user-{u}")).or_insert(0usize);
        let mut data = event(u, *n).to_vec();
        *n += 1;
        data.extend(std::iter::repeat_n(b' ', 4_000));
        records.push((format!("user-{u}"), Bytes::from(data)));
    }
    let summary = producer.put(records).await.unwrap();
    assert_eq!(summary.records, 1_300);
    let failed = api.put_failed.load(Ordering::Relaxed);
    assert!(failed >= 180, "partial failures injected: {failed}");
    assert_eq!(
        summary.resent, failed,
        "exactly the failed entries were resent"
    );
    for &(n, bytes) in fake.put_calls.lock().unwrap().iter() {
        assert!(
            n <= 500 && bytes <= 5 * 1024 * 1024,
            "call of {n} records / {bytes} bytes"
        );
    }
    // every record is in the stream exactly once
    let all: Vec<RawRecord> = {
        let mut v = Vec::new();
        for ix in 0..4 {
            let mut src = source(fake.clone(), &format!("shardId-{ix:012}"), None);
            let (b, _) = read_n(&mut src, 10_000, 1_300, Duration::from_secs(5)).await;
            v.extend(b.into_iter().flatten());
        }
        v
    };
    assert_eq!(all.len(), 1_300);
    let mut seen = HashSet::new();
    for r in &all {
        assert!(
            seen.insert(parse_event(&r.data[..r.data.len() - 4_000])),
            "duplicate"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn producer_keeps_per_key_order_without_failures_and_rejects_oversized_records() {
    let fake = Arc::new(FakeKinesis::new(3));
    let producer = KinesisProducer::new(
        fake.clone(),
        "s",
        fast_policy(),
        ProducerConfig {
            max_in_flight: 4,
            ..Default::default()
        },
    );
    let mut records = Vec::new();
    let mut per_user = BTreeMap::new();
    for i in 0..2_500 {
        let u = (i * 7) % 53;
        let n = per_user.entry(format!("user-{u}")).or_insert(0usize);
        records.push((format!("user-{u}"), event(u, *n)));
        *n += 1;
    }
    let s = producer.put(records).await.unwrap();
    assert_eq!((s.records, s.resent), (2_500, 0));
    assert!(s.calls >= 5);
    let mut all = Vec::new();
    for ix in 0..3 {
        let mut src = source(fake.clone(), &format!("shardId-{ix:012}"), None);
        let (b, _) = read_n(&mut src, 10_000, 2_500, Duration::from_secs(5)).await;
        all.extend(b.into_iter().flatten());
    }
    assert_per_user_order(&all, &per_user);

    let calls_before = fake.put_calls.lock().unwrap().len();
    let too_big = vec![
        ("ok".to_string(), Bytes::from_static(b"x")),
        ("big".to_string(), Bytes::from(vec![0u8; 1024 * 1024])),
    ];
    let err = producer.put(too_big).await.unwrap_err().to_string();
    assert!(err.contains("record 1") && err.contains("1 MiB"), "{err}");
    assert_eq!(
        fake.put_calls.lock().unwrap().len(),
        calls_before,
        "nothing sent"
    );
}

#[tokio::test(start_paused = true)]
async fn producer_gives_up_after_the_retry_policy_with_a_clear_error() {
    struct AlwaysThrottled;
    #[async_trait]
    impl KinesisApi for AlwaysThrottled {
        async fn put_records(
            &self,
            _: &str,
            e: &[PutRecordsRequestEntry],
        ) -> Result<PutRecordsOutput, ApiError> {
            let results = e
                .iter()
                .map(|_| {
                    PutRecordsResultEntry::builder()
                        .error_code("ProvisionedThroughputExceededException")
                        .build()
                })
                .collect();
            Ok(PutRecordsOutput::builder()
                .set_records(Some(results))
                .failed_record_count(e.len() as i32)
                .build()
                .unwrap())
        }
        async fn get_shard_iterator(
            &self,
            _: &str,
            _: &str,
            _: &IteratorPosition,
        ) -> Result<String, ApiError> {
            unreachable!()
        }
        async fn get_records(&self, _: &str, _: i32) -> Result<GetRecordsOutput, ApiError> {
            unreachable!()
        }
        async fn list_shards(
            &self,
            _: &str,
            _: Option<&str>,
        ) -> Result<ListShardsOutput, ApiError> {
            unreachable!()
        }
    }
    let producer = KinesisProducer::new(
        Arc::new(AlwaysThrottled),
        "s",
        fast_policy(),
        ProducerConfig::default(),
    );
    let err = producer
        .put(vec![("k".into(), Bytes::from_static(b"x")); 3])
        .await
        .unwrap_err();
    assert!(err.retriable());
    let msg = err.to_string();
    assert!(
        msg.contains("3 records still failing after 8 attempts")
            && msg.contains("ProvisionedThroughputExceeded"),
        "{msg}"
    );
}

// ---------------------------------------------------------------------------------------
// against the emulator (moto_server)

/// Producer settings for the emulator: one PutRecords at a time. moto 5.1 numbers a
/// shard's records without a lock, so concurrent PutRecords into one shard can hand out
/// one sequence number twice and silently overwrite an acknowledged record (seen here:
/// 8 threads × 500 records → 11 lost). AWS has no such race; production keeps
/// `max_in_flight` > 1.
fn moto_producer() -> ProducerConfig {
    ProducerConfig {
        max_in_flight: 1,
        ..Default::default()
    }
}

async fn kinesis(sdk: &aws_config::SdkConfig) -> SdkKinesis {
    SdkKinesis(aws_sdk_kinesis::Client::new(sdk))
}

async fn shard_ids(api: &dyn KinesisApi, stream: &str) -> Vec<ShardId> {
    list_all_shards(api, stream, &fast_policy())
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect()
}

#[tokio::test]
async fn emulator_round_trip_on_four_shards_in_order_with_resume() {
    let Some(sdk) = emulator("emulator_round_trip_on_four_shards_in_order_with_resume").await
    else {
        return;
    };
    let k = kinesis(&sdk).await;
    let stream = unique("rt");
    assert!(
        ensure_stream(k.client(), &stream, 4, &fast_policy())
            .await
            .unwrap()
    );
    assert!(
        !ensure_stream(k.client(), &stream, 4, &fast_policy())
            .await
            .unwrap(),
        "idempotent"
    );
    let api: Arc<dyn KinesisApi> = Arc::new(k);
    let producer = KinesisProducer::new(api.clone(), &stream, fast_policy(), moto_producer());
    let mut per_user = BTreeMap::new();
    let mut records = Vec::new();
    for i in 0..1_200 {
        let u = (i * 13) % 41;
        let n = per_user.entry(format!("user-{u}")).or_insert(0usize);
        records.push((format!("user-{u}"), event(u, *n)));
        *n += 1;
    }
    let s = producer.put(records).await.unwrap();
    assert_eq!(s.records, 1_200);

    let shards = shard_ids(api.as_ref(), &stream).await;
    assert_eq!(shards.len(), 4);
    let mut all = Vec::new();
    let mut used = 0;
    for shard in &shards {
        // read part of the shard, then resume after the last record with a new source
        let mut src = KinesisShardSource::new(
            api.clone(),
            &stream,
            shard.clone(),
            None,
            fast_consumer(),
            fast_policy(),
        );
        let (first, _) = read_n(&mut src, 50, 1, Duration::from_secs(10)).await;
        let first: Vec<RawRecord> = first.into_iter().flatten().collect();
        let resume = first.last().map(|r| r.seq.clone());
        let mut src = KinesisShardSource::new(
            api.clone(),
            &stream,
            shard.clone(),
            resume,
            fast_consumer(),
            fast_policy(),
        );
        let mut rest = Vec::new();
        // idle: read until two empty polls in a row after data
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut empties = 0;
        while empties < 3 && tokio::time::Instant::now() < deadline {
            let b = src.next_batch(100).await.unwrap().unwrap();
            assert!(b.len() <= 100);
            if b.is_empty() {
                empties += 1
            } else {
                empties = 0;
                rest.extend(b)
            }
        }
        let n = first.len() + rest.len();
        if n > 0 {
            used += 1;
        }
        let seqs: Vec<SeqNo> = first.iter().chain(&rest).map(|r| r.seq.clone()).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "shard {shard}: positions increase, no overlap on resume"
        );
        all.extend(first);
        all.extend(rest);
    }
    assert!(used >= 3, "records spread over the shards ({used} used)");
    assert_eq!(all.len(), 1_200);
    assert_per_user_order(&all, &per_user);
}

#[tokio::test]
async fn emulator_partial_put_failures_are_resent_once_each() {
    let Some(sdk) = emulator("emulator_partial_put_failures_are_resent_once_each").await else {
        return;
    };
    let k = kinesis(&sdk).await;
    let stream = unique("pf");
    ensure_stream(k.client(), &stream, 2, &fast_policy())
        .await
        .unwrap();
    let inj = Arc::new(Injecting::new(k.clone()).put_fail_every(4));
    let producer = KinesisProducer::new(inj.clone(), &stream, fast_policy(), moto_producer());
    let mut per_user = BTreeMap::new();
    let records: Vec<(String, Bytes)> = (0..600)
        .map(|i| {
            let u = i % 9;
            let n = per_user.entry(format!("user-{u}")).or_insert(0usize);
            *n += 1;
            (format!("user-{u}"), event(u, *n - 1))
        })
        .collect();
    let s = producer.put(records).await.unwrap();
    assert_eq!(s.records, 600);
    assert!(
        s.resent >= 150 && s.resent == inj.put_failed.load(Ordering::Relaxed),
        "{s:?}"
    );
    let api: Arc<dyn KinesisApi> = Arc::new(k);
    let mut all = Vec::new();
    for shard in shard_ids(api.as_ref(), &stream).await {
        let mut src = KinesisShardSource::new(
            api.clone(),
            &stream,
            shard,
            None,
            fast_consumer(),
            fast_policy(),
        );
        let (b, _) = read_n(&mut src, 1_000, 600, Duration::from_secs(3)).await;
        all.extend(b.into_iter().flatten());
    }
    assert_eq!(all.len(), 600, "nothing lost, nothing doubled");
    let distinct: HashSet<(String, usize)> = all.iter().map(|r| parse_event(&r.data)).collect();
    assert_eq!(distinct.len(), 600);
}

#[tokio::test]
async fn emulator_iterator_expiry_and_throttling_lose_and_double_nothing() {
    let Some(sdk) =
        emulator("emulator_iterator_expiry_and_throttling_lose_and_double_nothing").await
    else {
        return;
    };
    let k = kinesis(&sdk).await;
    let stream = unique("ie");
    ensure_stream(k.client(), &stream, 1, &fast_policy())
        .await
        .unwrap();
    let producer =
        KinesisProducer::new(Arc::new(k.clone()), &stream, fast_policy(), moto_producer());
    producer
        .put(
            (0..150)
                .map(|i| ("user-0".to_string(), event(0, i)))
                .collect(),
        )
        .await
        .unwrap();
    let inj = Arc::new(Injecting::new(k).expire_every(2).throttle_every(5));
    let shard = shard_ids(inj.as_ref(), &stream).await.remove(0);
    let mut src = KinesisShardSource::new(
        inj.clone(),
        &stream,
        shard,
        None,
        fast_consumer(),
        fast_policy(),
    );
    let (b, _) = read_n(&mut src, 7, 150, Duration::from_secs(30)).await;
    let all: Vec<RawRecord> = b.into_iter().flatten().collect();
    assert_eq!(all.len(), 150);
    assert_per_user_order(&all, &BTreeMap::from([("user-0".to_string(), 150)]));
    assert!(inj.expired.load(Ordering::Relaxed) >= 10);
    assert!(inj.throttled.load(Ordering::Relaxed) >= 3);
}

#[tokio::test]
async fn emulator_kpl_records_from_aws_kinesis_agg_are_deaggregated() {
    let test = "emulator_kpl_records_from_aws_kinesis_agg_are_deaggregated";
    let Some(sdk) = emulator(test).await else {
        return;
    };
    let Ok(python) = std::env::var("RECSTREAM_PYTHON") else {
        let msg = format!(
            "{test}: RECSTREAM_PYTHON is not set (scripts/test sets it to the venv with aws-kinesis-agg)"
        );
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("{msg}");
        }
        eprintln!("\n!!!!!!!!!! NOT RUN: {msg}\n");
        return;
    };
    let k = kinesis(&sdk).await;
    let stream = unique("kpl");
    ensure_stream(k.client(), &stream, 2, &fast_policy())
        .await
        .unwrap();

    let mut per_user = BTreeMap::new();
    let mut input = String::new();
    for i in 0..400 {
        let u = (i * 3) % 23;
        let n = per_user.entry(format!("user-{u}")).or_insert(0usize);
        input.push_str(&serde_json::json!({"pk": format!("user-{u}"), "data": String::from_utf8(event(u, *n).to_vec()).unwrap()}).to_string());
        input.push('\n');
        *n += 1;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/kpl_put.py");
    let mut child = tokio::process::Command::new(&python)
        .args([
            script,
            "--stream",
            &stream,
            "--per-aggregate",
            "37",
            "--explicit-hash-keys",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{python} {script}: {e}"));
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).await.unwrap();
    }
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "kpl_put.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let puts: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // keyed by shard and sequence number (emulators number each shard from 1)
    let sizes: HashMap<(String, String), usize> = puts
        .iter()
        .map(|p| {
            let shard = p["shard_id"].as_str().unwrap().to_string();
            let seq = p["sequence_number"].as_str().unwrap().to_string();
            ((shard, seq), p["user_records"].as_u64().unwrap() as usize)
        })
        .collect();
    let key = |r: &RawRecord| (r.shard.to_string(), r.seq.to_string());
    assert_eq!(sizes.values().sum::<usize>(), 400);
    assert!(puts.len() >= 11, "several aggregates ({})", puts.len());

    // a plain record and a corrupt aggregate next to them
    let producer =
        KinesisProducer::new(Arc::new(k.clone()), &stream, fast_policy(), moto_producer());
    let mut corrupt = kpl::MAGIC.to_vec();
    corrupt.extend_from_slice(b"not a protobuf, and no digest either");
    producer
        .put(vec![
            ("user-0".into(), Bytes::from(corrupt.clone())),
            ("plain".into(), Bytes::from_static(br#"{"plain":true}"#)),
        ])
        .await
        .unwrap();

    let api: Arc<dyn KinesisApi> = Arc::new(k);
    let mut users = Vec::new();
    let (mut dead, mut plain) = (0, 0);
    for shard in shard_ids(api.as_ref(), &stream).await {
        let mut src = KinesisShardSource::new(
            api.clone(),
            &stream,
            shard,
            None,
            fast_consumer(),
            fast_policy(),
        );
        let (batches, _) = read_n(&mut src, 10, 402, Duration::from_secs(3)).await;
        for b in batches {
            // all user records of one Kinesis record are in one batch
            let first = &b[0];
            let last = &b[b.len() - 1];
            if let Some(n) = sizes.get(&key(first)) {
                assert_eq!(
                    first.sub_seq, 0,
                    "batch starts at a record's first sub-record"
                );
                assert!(b.iter().filter(|r| r.seq == first.seq).count() == *n);
            }
            if let Some(n) = sizes.get(&key(last)) {
                assert_eq!(
                    last.sub_seq as usize,
                    n - 1,
                    "batch ends at a record's last sub-record"
                );
            }
            for r in b {
                match (&r.rejected, sizes.contains_key(&key(&r))) {
                    (Some(DecodeError::Unmappable(m)), false) => {
                        assert!(m.contains("kpl"), "{m}");
                        assert_eq!(&r.data[..], &corrupt[..]);
                        dead += 1;
                    }
                    (None, true) => {
                        assert!(r.partition_key.starts_with("user-"));
                        assert_eq!(
                            parse_event(&r.data).0,
                            r.partition_key.as_str(),
                            "pk table resolved"
                        );
                        users.push(r);
                    }
                    (None, false) => {
                        assert_eq!(r.sub_seq, 0);
                        plain += 1;
                    }
                    (rej, agg) => panic!("unexpected record: rejected {rej:?}, aggregate {agg}"),
                }
            }
        }
    }
    assert_eq!((dead, plain), (1, 1));
    assert_eq!(users.len(), 400);
    assert_per_user_order(&users, &per_user);
}

fn lease_coordinator(
    sdk: &aws_config::SdkConfig,
    aws: &AwsConfig,
    worker: &str,
) -> LeaseCoordinator {
    LeaseCoordinator::new(
        aws_sdk_dynamodb::Client::new(sdk),
        Arc::new(SdkKinesis(aws_sdk_kinesis::Client::new(sdk))),
        aws,
        &LeaseConfig {
            worker_id: Some(worker.into()),
            renew_interval_ms: Some(300),
            ..Default::default()
        },
    )
}

fn cp(committed: u64) -> ShardCheckpoint {
    ShardCheckpoint {
        committed: Some(SeqNo::from_u64(committed)),
        ..Default::default()
    }
}

#[tokio::test]
async fn emulator_two_workers_split_four_shards_and_the_survivor_takes_over() {
    let Some(sdk) =
        emulator("emulator_two_workers_split_four_shards_and_the_survivor_takes_over").await
    else {
        return;
    };
    let aws = test_aws("lease");
    let k = kinesis(&sdk).await;
    ensure_stream(k.client(), &aws.stream, 4, &fast_policy())
        .await
        .unwrap();
    let a = lease_coordinator(&sdk, &aws, "worker-a");
    let b = lease_coordinator(&sdk, &aws, "worker-b");
    assert!(a.create_table_if_missing().await.unwrap());
    assert!(!b.create_table_if_missing().await.unwrap(), "idempotent");
    assert_eq!(a.sync_shards().await.unwrap(), 4);
    assert_eq!(
        b.sync_shards().await.unwrap(),
        0,
        "conditional inserts: each shard once"
    );

    // Both join; A first takes everything, then B steals up to its fair share.
    let mut a_handles: HashMap<ShardId, LeaseHandle> = HashMap::new();
    let mut a_last_renew = tokio::time::Instant::now();
    for round in 0..10 {
        a_last_renew = tokio::time::Instant::now();
        a.renew().await.unwrap();
        b.renew().await.unwrap();
        for h in a.acquire().await.unwrap() {
            a_handles.insert(h.shard().clone(), h);
        }
        b.acquire().await.unwrap();
        if a.held().len() == 2 && b.held().len() == 2 {
            break;
        }
        assert!(round < 9, "no balance: a {:?} b {:?}", a.held(), b.held());
    }
    let (ha, hb) = (a.held(), b.held());
    assert!(
        ha.iter().all(|s| !hb.contains(s)),
        "disjoint: {ha:?} {hb:?}"
    );

    // A stolen lease's handle says so, and its checkpoint write is refused.
    let stolen: Vec<&LeaseHandle> = a_handles
        .values()
        .filter(|h| !ha.contains(h.shard()))
        .collect();
    assert!(!stolen.is_empty());
    for h in &stolen {
        assert!(h.is_lost());
        assert!(*h.lost_signal().borrow());
        let err = a.save_checkpoint(h.shard(), &cp(1)).await.unwrap_err();
        assert!(
            matches!(err, IngestError::LeaseLost { ref owner, .. } if owner == "worker-b"),
            "{err}"
        );
    }

    // Checkpoints by the holders.
    let a_shard = ha[0].clone();
    a.save_checkpoint(&a_shard, &cp(41)).await.unwrap();
    b.save_checkpoint(&hb[0], &cp(7)).await.unwrap();
    assert_eq!(b.load_checkpoint(&a_shard).await.unwrap(), Some(cp(41)));

    // A dies: it stops renewing. B takes A's leases once they stood still a lease duration.
    let died = a_last_renew;
    let mut taken_over = Vec::new();
    while b.held().len() < 4 {
        assert!(
            died.elapsed() < Duration::from_secs(15),
            "no takeover: b holds {:?}",
            b.held()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        b.renew().await.unwrap();
        taken_over.extend(b.acquire().await.unwrap());
    }
    assert!(
        died.elapsed() >= Duration::from_millis(aws.lease_duration_ms),
        "taken only after expiry ({:?})",
        died.elapsed()
    );
    let resumed = taken_over.iter().find(|h| *h.shard() == a_shard).unwrap();
    assert_eq!(
        resumed.checkpoint(),
        Some(&cp(41)),
        "the new owner resumes at A's checkpoint"
    );

    // The zombie: its handle reports the loss, and it cannot move the checkpoint.
    assert!(
        a_handles[&a_shard].is_lost(),
        "not renewed for a lease duration"
    );
    let err = a.save_checkpoint(&a_shard, &cp(99)).await.unwrap_err();
    assert!(
        matches!(err, IngestError::LeaseLost { ref owner, .. } if owner == "worker-b"),
        "{err}"
    );
    assert_eq!(
        b.load_checkpoint(&a_shard).await.unwrap(),
        Some(cp(41)),
        "checkpoint unmoved"
    );
    b.save_checkpoint(&a_shard, &cp(42)).await.unwrap();

    // Clean shutdown frees everything.
    b.release().await.unwrap();
    assert!(b.held().is_empty());
    let leases = b.leases().await.unwrap();
    assert!(leases.iter().all(|l| l.owner.is_none()), "{leases:?}");
    assert_eq!(
        leases
            .iter()
            .find(|l| l.shard == a_shard)
            .unwrap()
            .checkpoint,
        Some(cp(42))
    );
}

#[tokio::test]
async fn emulator_split_parent_is_finished_before_its_children_are_taken() {
    let Some(sdk) =
        emulator("emulator_split_parent_is_finished_before_its_children_are_taken").await
    else {
        return;
    };
    let aws = test_aws("split");
    let k = kinesis(&sdk).await;
    ensure_stream(k.client(), &aws.stream, 1, &fast_policy())
        .await
        .unwrap();
    let api: Arc<dyn KinesisApi> = Arc::new(k.clone());
    let producer = KinesisProducer::new(api.clone(), &aws.stream, fast_policy(), moto_producer());
    producer
        .put(
            (0..25)
                .map(|i| ("user-0".to_string(), event(0, i)))
                .collect(),
        )
        .await
        .unwrap();
    let parent = shard_ids(api.as_ref(), &aws.stream).await.remove(0);
    k.client()
        .split_shard()
        .stream_name(&aws.stream)
        .shard_to_split(parent.as_str())
        .new_starting_hash_key((1u128 << 127).to_string())
        .send()
        .await
        .expect("SplitShard");
    let shards = list_all_shards(api.as_ref(), &aws.stream, &fast_policy())
        .await
        .unwrap();
    assert_eq!(shards.len(), 3);
    assert!(shards[0].is_closed());

    let w = lease_coordinator(&sdk, &aws, "worker-s");
    w.create_table_if_missing().await.unwrap();
    assert_eq!(w.sync_shards().await.unwrap(), 3);
    let leases = w.leases().await.unwrap();
    let children: Vec<ShardId> = leases
        .iter()
        .filter(|l| l.parents == std::slice::from_ref(&parent))
        .map(|l| l.shard.clone())
        .collect();
    assert_eq!(children.len(), 2);

    // Only the parent can be taken while it is unfinished.
    let got = w.acquire().await.unwrap();
    assert_eq!(got.iter().map(|h| h.shard()).collect::<Vec<_>>(), [&parent]);
    assert!(
        w.acquire().await.unwrap().is_empty(),
        "children wait for the parent"
    );

    // Read the parent to its end through its lease, as the processor would.
    let handle = got.into_iter().next().unwrap();
    let mut src = KinesisShardSource::new(
        api.clone(),
        &aws.stream,
        parent.clone(),
        None,
        fast_consumer(),
        fast_policy(),
    )
    .with_lease(handle.clone());
    let records = read_to_end(&mut src, 10, Duration::from_secs(20)).await;
    assert_eq!(records.len(), 25);
    let last = records.last().unwrap().seq.clone();
    w.save_checkpoint(
        &parent,
        &ShardCheckpoint {
            committed: Some(last.clone()),
            finished: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(handle.is_lost(), "a finished lease is given up");
    src.close().await.unwrap();
    assert_eq!(
        w.load_checkpoint(&parent).await.unwrap().unwrap().committed,
        Some(last)
    );

    // Now the children.
    let mut got: Vec<ShardId> = w
        .acquire()
        .await
        .unwrap()
        .iter()
        .map(|h| h.shard().clone())
        .collect();
    got.sort();
    assert_eq!(got, children);
    for c in &children {
        let mut src = KinesisShardSource::new(
            api.clone(),
            &aws.stream,
            c.clone(),
            None,
            fast_consumer(),
            fast_policy(),
        );
        assert_eq!(src.next_batch(10).await.unwrap().map(|b| b.len()), Some(0));
    }
}

#[tokio::test]
async fn emulator_an_empty_closed_shard_is_finished_on_close() {
    let Some(sdk) = emulator("emulator_an_empty_closed_shard_is_finished_on_close").await else {
        return;
    };
    let aws = test_aws("empty");
    let k = kinesis(&sdk).await;
    ensure_stream(k.client(), &aws.stream, 1, &fast_policy())
        .await
        .unwrap();
    let api: Arc<dyn KinesisApi> = Arc::new(k.clone());
    let parent = shard_ids(api.as_ref(), &aws.stream).await.remove(0);
    k.client()
        .split_shard()
        .stream_name(&aws.stream)
        .shard_to_split(parent.as_str())
        .new_starting_hash_key("1000")
        .send()
        .await
        .expect("SplitShard");
    let w = lease_coordinator(&sdk, &aws, "worker-e");
    w.create_table_if_missing().await.unwrap();
    w.sync_shards().await.unwrap();
    let handle = w.acquire().await.unwrap().pop().expect("the parent");
    assert_eq!(handle.shard(), &parent);
    let mut src = KinesisShardSource::new(
        api,
        &aws.stream,
        parent.clone(),
        None,
        fast_consumer(),
        fast_policy(),
    )
    .with_lease(handle);
    assert!(
        read_to_end(&mut src, 10, Duration::from_secs(20))
            .await
            .is_empty()
    );
    // The processor has nothing to checkpoint for an empty shard; close marks it finished.
    src.close().await.unwrap();
    assert!(w.load_checkpoint(&parent).await.unwrap().unwrap().finished);
    assert_eq!(w.acquire().await.unwrap().len(), 2, "both children");
}

/// CPU cost of the consumer per event, excluding the emulator (another process): this
/// thread's CPU time while one shard of N records is read through the SDK.
/// `RECSTREAM_CPU_EVENTS=50000 RECSTREAM_CPU_BATCH=500 cargo test -p recstream-ingest --release \
///  consumer_cpu_cost -- --ignored --nocapture` (under scripts/test's environment)
#[tokio::test(flavor = "current_thread")]
#[ignore = "measurement, run by hand"]
async fn emulator_consumer_cpu_cost_per_event() {
    let Some(sdk) = emulator("emulator_consumer_cpu_cost_per_event").await else {
        return;
    };
    fn thread_cpu_ns() -> u64 {
        std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
            .unwrap_or(0)
    }
    let n: usize = std::env::var("RECSTREAM_CPU_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let k = kinesis(&sdk).await;
    let stream = unique("cpu");
    ensure_stream(k.client(), &stream, 1, &fast_policy())
        .await
        .unwrap();
    let api: Arc<dyn KinesisApi> = Arc::new(k);
    let producer = KinesisProducer::new(api.clone(), &stream, fast_policy(), moto_producer());
    let body = r#"{"event_id":"e","ts":1700000000000,"user_id":"u","session_id":"s","type":"view","product_id":"p1","category":"c","price":{"amount":1999,"currency":"EUR"}}"#;
    for chunk in 0..n.div_ceil(5_000) {
        let recs = (0..5_000.min(n - chunk * 5_000))
            .map(|i| (format!("user-{}", i % 100), Bytes::from(body)))
            .collect();
        producer.put(recs).await.unwrap();
    }
    let shard = shard_ids(api.as_ref(), &stream).await.remove(0);
    let mut cfg = fast_consumer();
    cfg.poll_interval_ms = 0;
    let mut src = KinesisShardSource::new(api, &stream, shard, None, cfg, fast_policy());
    // whole process (all threads), in clock ticks (utime + stime)
    fn process_cpu_ticks() -> u64 {
        std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| {
                let rest = s.rsplit_once(')')?.1.to_string();
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
            })
            .unwrap_or(0)
    }
    let (cpu0, ticks0, t0) = (
        thread_cpu_ns(),
        process_cpu_ticks(),
        std::time::Instant::now(),
    );
    let batch: usize = std::env::var("RECSTREAM_CPU_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let (b, _) = read_n(&mut src, batch, n, Duration::from_secs(600)).await;
    let (cpu, ticks, wall) = (
        thread_cpu_ns() - cpu0,
        process_cpu_ticks() - ticks0,
        t0.elapsed(),
    );
    let got: usize = b.iter().map(Vec::len).sum();
    assert_eq!(got, n);
    eprintln!(
        "consumer: {n} events, batches of {batch}, {:.0} ns CPU per event on the runtime thread ({:.1} ms); \
         process-wide {:.0} ns per event ({ticks} ticks of 10 ms); {:.1} s wall incl. emulator",
        cpu as f64 / n as f64,
        cpu as f64 / 1e6,
        ticks as f64 * 1e7 / n as f64,
        wall.as_secs_f64()
    );
}

#[test]
fn unique_names_differ() {
    let a = unique("x");
    let b = unique("x");
    assert_ne!(a, b);
    assert!(a.len() <= 128);
}
