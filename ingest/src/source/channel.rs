//! The in-process stream behind the embedded collector (`POST /v1/events`).
//!
//! ```text
//!  HTTP handlers ─► ChannelSender::try_send(payload) ──► bounded queue ──► ChannelSource::next_batch
//!    (cheap clones)     └─ Full / TooLarge / Closed       (count + bytes)    seq = after+1, after+2, …
//!                          (the handler answers 503 / 413)                   shard `collector`
//! ```
//!
//! This file owns the embedded stand-in for Kinesis: a tokio mpsc queue bounded by count
//! and by queued bytes, so a burst is refused (and the client told to retry) instead of
//! growing memory. The source stamps strictly increasing sequence numbers after the
//! shard's checkpoint; `arrival` is the time the record was accepted by `try_send`.
//! Records still in the queue when the process dies are lost (as with any in-memory
//! queue): the AWS set uses Kinesis instead. `next_batch` is cancel-safe.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use compact_str::CompactString;
use tokio::sync::mpsc;

use crate::error::IngestError;
use crate::event::Timestamp;
use crate::record::{RawRecord, SeqNo, ShardId};
use crate::source::Source;

/// The collector's shard id.
pub const COLLECTOR_SHARD: &str = "collector";
/// Default queue bound, in records.
pub const DEFAULT_CAPACITY: usize = 10_000;
/// Default bound of the bytes waiting in the queue.
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;
/// How long `next_batch` waits for a first record by default.
pub const DEFAULT_LINGER: Duration = Duration::from_millis(20);
/// Partition key of records sent without one.
pub const UNKNOWN_PARTITION_KEY: &str = "unknown";

/// Bounds and timing of a [`ChannelSource`].
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelConfig {
    /// The shard id records of this source carry (default [`COLLECTOR_SHARD`]).
    pub shard: ShardId,
    /// Most records waiting in the queue (at least 1).
    pub capacity: usize,
    /// Most payload bytes waiting in the queue; a larger single payload is refused.
    pub max_queued_bytes: usize,
    /// How long `next_batch` waits for the first record before returning an empty batch.
    pub linger: Duration,
}

impl Default for ChannelConfig {
    fn default() -> ChannelConfig {
        ChannelConfig {
            shard: ShardId::new(COLLECTOR_SHARD),
            capacity: DEFAULT_CAPACITY,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            linger: DEFAULT_LINGER,
        }
    }
}

impl ChannelConfig {
    /// Checks the bounds: `Err(IngestError::Config)` for a zero capacity or byte bound.
    pub fn validate(&self) -> Result<(), IngestError> {
        if self.capacity == 0 {
            return Err(IngestError::Config(
                "collector queue capacity must be at least 1".into(),
            ));
        }
        if self.max_queued_bytes == 0 {
            return Err(IngestError::Config(
                "collector max_queued_bytes must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Why a record was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The queue is at its record or byte bound: retry later (HTTP 503).
    #[error("collector queue is full ({queued} records waiting), retry later")]
    Full {
        /// Records waiting in the queue when this one was refused.
        queued: usize,
    },
    /// The payload alone is over the byte bound of the queue (HTTP 413).
    #[error("record is {len} bytes, over the collector's {max} byte bound")]
    TooLarge {
        /// Length of the payload in bytes.
        len: usize,
        /// The queue's byte bound ([`ChannelConfig::max_queued_bytes`]).
        max: usize,
    },
    /// The source is gone (shutting down).
    #[error("collector is shut down")]
    Closed,
}

impl SendError {
    /// Whether the same record may be accepted later.
    pub fn retriable(&self) -> bool {
        matches!(self, SendError::Full { .. })
    }
}

struct Item {
    partition_key: CompactString,
    arrival: Timestamp,
    data: Bytes,
}

/// The sending half: cheap to clone, shared by every HTTP handler.
#[derive(Clone)]
pub struct ChannelSender {
    tx: mpsc::Sender<Item>,
    queued_bytes: Arc<AtomicUsize>,
    max_queued_bytes: usize,
    capacity: usize,
}

impl std::fmt::Debug for ChannelSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelSender")
            .field("queued", &self.queued())
            .field("queued_bytes", &self.queued_bytes.load(Ordering::Relaxed))
            .finish()
    }
}

impl ChannelSender {
    /// Queues one record without waiting; its partition key is `unknown`.
    pub fn try_send(&self, payload: Bytes) -> Result<(), SendError> {
        self.try_send_keyed(UNKNOWN_PARTITION_KEY, payload)
    }

    /// Queues one record with its partition key (the user id) without waiting.
    pub fn try_send_keyed(&self, partition_key: &str, payload: Bytes) -> Result<(), SendError> {
        if self.tx.is_closed() {
            return Err(SendError::Closed);
        }
        let len = payload.len();
        if len > self.max_queued_bytes {
            return Err(SendError::TooLarge {
                len,
                max: self.max_queued_bytes,
            });
        }
        let before = self.queued_bytes.fetch_add(len, Ordering::AcqRel);
        if before.saturating_add(len) > self.max_queued_bytes {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            return Err(SendError::Full {
                queued: self.queued(),
            });
        }
        let item = Item {
            partition_key: partition_key.into(),
            arrival: Timestamp(chrono::Utc::now().timestamp_millis()),
            data: payload,
        };
        self.tx.try_send(item).map_err(|e| {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            match e {
                mpsc::error::TrySendError::Full(_) => SendError::Full {
                    queued: self.queued(),
                },
                mpsc::error::TrySendError::Closed(_) => SendError::Closed,
            }
        })
    }

    /// Records waiting in the queue.
    pub fn queued(&self) -> usize {
        self.capacity.saturating_sub(self.tx.capacity())
    }

    /// Whether the source has been dropped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// The receiving half: the `collector` shard.
pub struct ChannelSource {
    shard: ShardId,
    rx: mpsc::Receiver<Item>,
    queued_bytes: Arc<AtomicUsize>,
    linger: Duration,
    next: Counter,
}

impl ChannelSource {
    /// A collector queue of `capacity` records (at least 1) with the default byte bound and
    /// linger, numbering records after `after`.
    pub fn new(capacity: usize, after: Option<SeqNo>) -> (ChannelSender, ChannelSource) {
        let config = ChannelConfig {
            capacity: capacity.max(1),
            ..ChannelConfig::default()
        };
        ChannelSource::build(config, after)
    }

    /// A queue with explicit bounds; the configuration is validated first.
    pub fn with_config(
        config: ChannelConfig,
        after: Option<SeqNo>,
    ) -> Result<(ChannelSender, ChannelSource), IngestError> {
        config.validate()?;
        Ok(ChannelSource::build(config, after))
    }

    fn build(config: ChannelConfig, after: Option<SeqNo>) -> (ChannelSender, ChannelSource) {
        let capacity = config.capacity.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let sender = ChannelSender {
            tx,
            queued_bytes: queued_bytes.clone(),
            max_queued_bytes: config.max_queued_bytes.max(1),
            capacity,
        };
        let source = ChannelSource {
            shard: config.shard,
            rx,
            queued_bytes,
            linger: config.linger,
            next: Counter::after(after.as_ref()),
        };
        (sender, source)
    }

    fn record(&mut self, item: Item) -> RawRecord {
        self.queued_bytes
            .fetch_sub(item.data.len(), Ordering::AcqRel);
        RawRecord {
            shard: self.shard.clone(),
            seq: self.next.take(),
            sub_seq: 0,
            partition_key: item.partition_key,
            arrival: item.arrival,
            data: item.data,
            rejected: None,
        }
    }
}

#[async_trait]
impl Source for ChannelSource {
    fn shard(&self) -> &ShardId {
        &self.shard
    }

    /// Waits up to the linger for a first record, then takes what is queued, up to `max`.
    /// `Some(vec![])` when nothing came in time; `None` once every sender is dropped and
    /// the queue is drained.
    async fn next_batch(&mut self, max: usize) -> Result<Option<Vec<RawRecord>>, IngestError> {
        if max == 0 {
            return Ok(Some(Vec::new()));
        }
        let first = match tokio::time::timeout(self.linger, self.rx.recv()).await {
            Err(_elapsed) => return Ok(Some(Vec::new())),
            Ok(None) => return Ok(None),
            Ok(Some(item)) => item,
        };
        let mut batch = Vec::with_capacity(max.min(self.rx.len() + 1));
        batch.push(self.record(first));
        while batch.len() < max {
            match self.rx.try_recv() {
                Ok(item) => {
                    let r = self.record(item);
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        Ok(Some(batch))
    }
}

/// The next sequence number: a u64 while it fits, decimal text beyond (a checkpoint can
/// hold any sequence number, so the counter never wraps or fails).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Counter {
    Small(u64),
    Big(String),
}

impl Counter {
    fn after(after: Option<&SeqNo>) -> Counter {
        match after {
            None => Counter::Small(1),
            Some(s) => match s.as_u64() {
                Some(n) => n.checked_add(1).map_or_else(
                    || Counter::Big(decimal_successor(&n.to_string())),
                    Counter::Small,
                ),
                None => Counter::Big(decimal_successor(s.as_str())),
            },
        }
    }

    fn take(&mut self) -> SeqNo {
        match self {
            Counter::Small(n) => {
                let seq = SeqNo::from_u64(*n);
                *self = match n.checked_add(1) {
                    Some(m) => Counter::Small(m),
                    None => Counter::Big(decimal_successor(&n.to_string())),
                };
                seq
            }
            Counter::Big(s) => {
                let next = decimal_successor(s);
                let current = std::mem::replace(s, next);
                // Always digits without a leading zero; past 128 digits the stream would
                // need 10^128 records.
                SeqNo::parse(&current).unwrap_or_else(|| SeqNo::from_u64(u64::MAX))
            }
        }
    }
}

/// `s + 1` for a decimal string of digits.
fn decimal_successor(s: &str) -> String {
    let mut digits: Vec<u8> = s.bytes().collect();
    for d in digits.iter_mut().rev() {
        if *d == b'9' {
            *d = b'0';
        } else {
            *d += 1;
            return String::from_utf8(digits).unwrap_or_default();
        }
    }
    let mut out = String::with_capacity(digits.len() + 1);
    out.push('1');
    out.push_str(std::str::from_utf8(&digits).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[tokio::test]
    async fn numbers_records_after_the_resume_position() {
        let (tx, mut src) = ChannelSource::new(100, Some(SeqNo::from_u64(41)));
        assert_eq!(src.shard().as_str(), COLLECTOR_SHARD);
        for i in 0..5 {
            tx.try_send_keyed("u1", payload(&format!("{i}"))).unwrap();
        }
        let before = chrono::Utc::now().timestamp_millis();
        let batch = src.next_batch(3).await.unwrap().unwrap();
        let seqs: Vec<String> = batch.iter().map(|r| r.seq.to_string()).collect();
        assert_eq!(seqs, ["42", "43", "44"]);
        assert_eq!(batch[0].data, "0");
        assert_eq!(batch[0].partition_key, "u1");
        assert!((batch[0].arrival.0 - before).abs() < 60_000);
        let rest = src.next_batch(10).await.unwrap().unwrap();
        assert_eq!(
            rest.iter().map(|r| r.seq.to_string()).collect::<Vec<_>>(),
            ["45", "46"]
        );
        tx.try_send(payload("x")).unwrap();
        assert_eq!(
            src.next_batch(10).await.unwrap().unwrap()[0].partition_key,
            UNKNOWN_PARTITION_KEY
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waits_the_linger_then_returns_empty_and_none_when_closed() {
        let (tx, mut src) = ChannelSource::new(10, None);
        let t = tokio::time::Instant::now();
        assert_eq!(src.next_batch(10).await.unwrap().map(|b| b.len()), Some(0));
        assert_eq!(t.elapsed(), DEFAULT_LINGER);

        // A record arriving during the linger is returned at once.
        let tx2 = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            tx2.try_send(payload("late")).unwrap();
        });
        let t = tokio::time::Instant::now();
        let b = src.next_batch(10).await.unwrap().unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(t.elapsed(), Duration::from_millis(5));

        tx.try_send(payload("last")).unwrap();
        drop(tx);
        assert_eq!(src.next_batch(10).await.unwrap().unwrap()[0].data, "last");
        assert!(src.next_batch(10).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_full_queue_refuses_by_count_and_by_bytes() {
        let (tx, mut src) = ChannelSource::new(2, None);
        tx.try_send(payload("a")).unwrap();
        tx.try_send(payload("b")).unwrap();
        let err = tx.try_send(payload("c")).unwrap_err();
        assert_eq!(err, SendError::Full { queued: 2 });
        assert!(err.retriable());
        assert!(err.to_string().contains("full"), "{err}");
        assert_eq!(tx.queued(), 2);
        assert_eq!(src.next_batch(10).await.unwrap().unwrap().len(), 2);
        tx.try_send(payload("c")).unwrap();

        let config = ChannelConfig {
            max_queued_bytes: 10,
            ..ChannelConfig::default()
        };
        let (tx, mut src) = ChannelSource::with_config(config, None).unwrap();
        assert_eq!(
            tx.try_send(payload("12345678901")),
            Err(SendError::TooLarge { len: 11, max: 10 })
        );
        tx.try_send(payload("123456")).unwrap();
        assert!(matches!(
            tx.try_send(payload("12345")),
            Err(SendError::Full { .. })
        ));
        tx.try_send(payload("1234")).unwrap();
        assert_eq!(src.next_batch(10).await.unwrap().unwrap().len(), 2);
        // The bytes are released as the source takes them.
        tx.try_send(payload("1234567890")).unwrap();
        drop(src);
        assert_eq!(tx.try_send(payload("x")), Err(SendError::Closed));
        assert!(tx.is_closed());
    }

    #[test]
    fn config_is_validated() {
        let bad = ChannelConfig {
            capacity: 0,
            ..ChannelConfig::default()
        };
        assert!(matches!(
            ChannelSource::with_config(bad, None),
            Err(IngestError::Config(_))
        ));
        // The plain constructor never panics on a zero capacity.
        let (tx, _src) = ChannelSource::new(0, None);
        tx.try_send(payload("a")).unwrap();
    }

    #[test]
    fn the_counter_never_wraps() {
        let mut c = Counter::after(Some(&SeqNo::from_u64(u64::MAX - 1)));
        assert_eq!(c.take().to_string(), u64::MAX.to_string());
        assert_eq!(c.take().to_string(), "18446744073709551616");
        assert_eq!(c.take().to_string(), "18446744073709551617");
        let kinesis =
            SeqNo::parse("49590338271490256608559692538361571095921575989136588899").unwrap();
        let mut c = Counter::after(Some(&kinesis));
        assert_eq!(
            c.take().to_string(),
            "49590338271490256608559692538361571095921575989136588900"
        );
        assert_eq!(decimal_successor("999"), "1000");
    }

    #[tokio::test]
    async fn senders_are_shared_across_tasks() {
        let (tx, mut src) = ChannelSource::new(1_000, None);
        let mut handles = Vec::new();
        for t in 0..4 {
            let tx = tx.clone();
            handles.push(tokio::spawn(async move {
                for i in 0..100 {
                    tx.try_send(payload(&format!("{t}-{i}"))).unwrap();
                }
            }));
        }
        drop(tx);
        for h in handles {
            h.await.unwrap();
        }
        let mut seqs = Vec::new();
        while let Some(b) = src.next_batch(64).await.unwrap() {
            seqs.extend(b.into_iter().map(|r| r.seq.as_u64().unwrap()));
        }
        assert_eq!(seqs, (1..=400).collect::<Vec<u64>>());
    }
}
