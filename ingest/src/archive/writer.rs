//! [`ArchiveWriter`]: buffers one shard's archived rows and dead letters, and rolls them
//! into objects.
//!
//! ```text
//!  push(row) ──────► rows ─┐                       group by event-time hour ─► events/dt=…/hour=…/<shard>-<min>-<max>.parquet
//!  push_dead(rec) ─► dead ─┴─► roll(): spawn_blocking ┤
//!                                                     group by arrival date ──► dead-letter/dt=…/<shard>-<min>-<max>.jsonl
//!                                      ─► ObjectStore::put (≤ 8 at a time) ─► buffer cleared
//! ```
//!
//! Rolls are deterministic: the same buffered rows always give the same keys and bytes,
//! so a replay after a crash overwrites what the first attempt wrote. The caller decides
//! *when* to roll (by [`ArchiveWriter::buffered_rows`]/[`ArchiveWriter::buffered_bytes`]
//! or at a checkpoint) and must roll at the same sequence numbers on a replay, and only
//! between records (never between two sub-records of one KPL-aggregated record, which
//! share a sequence number).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chrono::NaiveDate;
use futures::{StreamExt, TryStreamExt};

use super::dead_letter::{self, DeadLetter};
use super::parquet::{ArchivedRow, encode_refs};
use super::{DtHour, dead_letter_key, event_key};
use crate::decode::DecodeError;
use crate::error::IngestError;
use crate::metrics as m;
use crate::object_store::ObjectStore;
use crate::record::{RawRecord, SeqNo, ShardId};

/// How many objects one roll uploads at once.
const PUT_CONCURRENCY: usize = 8;

/// What one [`ArchiveWriter::roll`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RollSummary {
    /// Keys written, Parquet objects first, each kind in key order.
    pub objects: Vec<String>,
    /// Event rows written to Parquet.
    pub rows: usize,
    /// Dead letters written.
    pub dead_letters: usize,
    /// Bytes written, Parquet and dead letters together.
    pub bytes: usize,
}

/// One object of a roll, encoded and ready to upload.
#[derive(Debug)]
struct Encoded {
    key: String,
    body: Bytes,
    rows: usize,
    parquet: bool,
}

/// The archive writer of ONE shard. Not shared: the shard's processor owns it.
pub struct ArchiveWriter {
    store: Arc<dyn ObjectStore>,
    shard: ShardId,
    // Behind `Arc`s so the blocking encoder can read them while the buffer stays intact
    // until the upload succeeded (an error, a panic or a cancelled roll loses nothing).
    rows: Arc<Vec<ArchivedRow>>,
    dead: Arc<Vec<DeadLetter>>,
    bytes: usize,
    /// Largest sequence number of the last successful roll.
    rolled_to: Option<SeqNo>,
}

impl std::fmt::Debug for ArchiveWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveWriter")
            .field("store", &self.store.describe())
            .field("shard", &self.shard)
            .field("rows", &self.rows.len())
            .field("dead", &self.dead.len())
            .field("bytes", &self.bytes)
            .field("rolled_to", &self.rolled_to)
            .finish()
    }
}

impl ArchiveWriter {
    /// An empty writer for `shard`, uploading to `store`.
    pub fn new(store: Arc<dyn ObjectStore>, shard: ShardId) -> ArchiveWriter {
        ArchiveWriter {
            store,
            shard,
            rows: Arc::default(),
            dead: Arc::default(),
            bytes: 0,
            rolled_to: None,
        }
    }

    /// The shard this writer archives.
    pub fn shard(&self) -> &ShardId {
        &self.shard
    }

    /// Buffers an accepted event. A row the Parquet schema cannot hold (a quantity or
    /// sub-sequence number over `i32::MAX`, which validation already excludes) becomes a
    /// dead letter instead, so it can never block a roll.
    pub fn push(&mut self, row: ArchivedRow) {
        if let Err(err) = row.check_encodable() {
            self.bytes += row.raw.len();
            Arc::make_mut(&mut self.dead).push(DeadLetter {
                shard: row.shard,
                seq: row.seq,
                sub_seq: row.sub_seq,
                partition_key: row.event.user_id,
                arrival: row.arrival,
                reason: err.to_string(),
                kind: err.kind(),
                raw: row.raw,
            });
            return;
        }
        self.bytes += row.raw.len();
        Arc::make_mut(&mut self.rows).push(row);
    }

    /// Buffers a rejected record with the reason it was rejected.
    pub fn push_dead(&mut self, rec: &RawRecord, err: &DecodeError) {
        self.bytes += rec.data.len();
        Arc::make_mut(&mut self.dead).push(DeadLetter::new(rec, err));
    }

    /// Buffered events plus buffered dead letters.
    pub fn buffered_rows(&self) -> usize {
        self.rows.len() + self.dead.len()
    }

    /// Buffered dead letters alone.
    pub fn buffered_dead_letters(&self) -> usize {
        self.dead.len()
    }

    /// Raw payload bytes buffered (events and dead letters). The Parquet output is
    /// usually several times smaller; the memory held is a small multiple of this.
    pub fn buffered_bytes(&self) -> usize {
        self.bytes
    }

    /// Writes everything buffered: events by event-time hour, dead letters by arrival
    /// date, one object per partition. On success the buffer is empty; on error it is
    /// kept as it was, so calling `roll` again retries (and overwrites whatever part of
    /// the first attempt made it). An empty buffer writes nothing.
    #[tracing::instrument(skip(self), fields(shard = %self.shard))]
    pub async fn roll(&mut self) -> Result<RollSummary, IngestError> {
        if self.rows.is_empty() && self.dead.is_empty() {
            return Ok(RollSummary::default());
        }
        let started = Instant::now();
        self.warn_if_split();

        let (shard, rows, dead) = (self.shard.clone(), self.rows.clone(), self.dead.clone());
        let encoded = tokio::task::spawn_blocking(move || encode_roll(&shard, &rows, &dead))
            .await
            .map_err(|e| IngestError::Parquet(format!("archive encoding task failed: {e}")))??;

        // Owned items and futures: a stream over `&Encoded` would make this future !Send.
        let puts: Vec<(String, Bytes)> = encoded
            .iter()
            .map(|o| (o.key.clone(), o.body.clone()))
            .collect();
        futures::stream::iter(puts)
            .map(|(key, body)| {
                let store = Arc::clone(&self.store);
                async move { store.put(&key, body).await }
            })
            .buffer_unordered(PUT_CONCURRENCY)
            .try_collect::<()>()
            .await?;

        let mut summary = RollSummary::default();
        let (mut parquet_objects, mut parquet_bytes) = (0u64, 0u64);
        for obj in encoded {
            summary.bytes += obj.body.len();
            if obj.parquet {
                summary.rows += obj.rows;
                parquet_objects += 1;
                parquet_bytes += obj.body.len() as u64;
            } else {
                summary.dead_letters += obj.rows;
            }
            summary.objects.push(obj.key);
        }
        let elapsed = started.elapsed().as_secs_f64();
        metrics::counter!(m::ARCHIVE_OBJECTS_TOTAL).increment(parquet_objects);
        metrics::counter!(m::ARCHIVE_BYTES_TOTAL).increment(parquet_bytes);
        metrics::counter!(m::ARCHIVE_ROWS_TOTAL).increment(summary.rows as u64);
        metrics::histogram!(m::ARCHIVE_ROLL_SECONDS).record(elapsed);
        tracing::debug!(
            objects = summary.objects.len(),
            rows = summary.rows,
            dead_letters = summary.dead_letters,
            bytes = summary.bytes,
            seconds = elapsed,
            "archive rolled"
        );

        self.rolled_to = self.max_seq();
        self.rows = Arc::default();
        self.dead = Arc::default();
        self.bytes = 0;
        Ok(summary)
    }

    fn max_seq(&self) -> Option<SeqNo> {
        let rows = self.rows.iter().map(|r| &r.seq);
        rows.chain(self.dead.iter().map(|d| &d.seq)).max().cloned()
    }

    /// A roll that starts at the sequence number the previous one ended at split an
    /// aggregated record: both objects can get the same name and the later one would
    /// replace the earlier. The caller's job to avoid; loud when it happens.
    fn warn_if_split(&self) {
        let Some(prev) = &self.rolled_to else { return };
        let rows = self.rows.iter().map(|r| &r.seq);
        let min = rows.chain(self.dead.iter().map(|d| &d.seq)).min();
        if min.is_some_and(|m| m <= prev) {
            tracing::warn!(
                shard = %self.shard,
                previous_end = %prev,
                "archive roll starts at or before the previous roll's end; rolls must \
                 happen between records, or objects may overlap or be overwritten"
            );
        }
    }
}

/// Groups and encodes one roll (CPU-bound: runs on the blocking pool). Deterministic.
fn encode_roll(
    shard: &ShardId,
    rows: &[ArchivedRow],
    dead: &[DeadLetter],
) -> Result<Vec<Encoded>, IngestError> {
    let mut out = Vec::new();

    let mut by_hour: BTreeMap<DtHour, Vec<&ArchivedRow>> = BTreeMap::new();
    for row in rows {
        by_hour
            .entry(DtHour::of(row.event.ts))
            .or_default()
            .push(row);
    }
    for (dt_hour, group) in by_hour {
        let Some((first, last)) = min_max(group.iter().map(|r| &r.seq)) else {
            continue;
        };
        out.push(Encoded {
            key: event_key(shard, dt_hour, first, last),
            body: encode_refs(&group)?,
            rows: group.len(),
            parquet: true,
        });
    }

    let mut by_date: BTreeMap<NaiveDate, Vec<&DeadLetter>> = BTreeMap::new();
    for d in dead {
        by_date
            .entry(DtHour::of(d.arrival).date)
            .or_default()
            .push(d);
    }
    for (date, group) in by_date {
        let Some((first, last)) = min_max(group.iter().map(|d| &d.seq)) else {
            continue;
        };
        out.push(Encoded {
            key: dead_letter_key(shard, date, first, last),
            body: dead_letter::encode_lines(&group)?,
            rows: group.len(),
            parquet: false,
        });
    }
    Ok(out)
}

fn min_max<'a>(mut seqs: impl Iterator<Item = &'a SeqNo>) -> Option<(&'a SeqNo, &'a SeqNo)> {
    let first = seqs.next()?;
    Some(seqs.fold((first, first), |(lo, hi), s| (lo.min(s), hi.max(s))))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::archive::parquet::tests::{row, view};
    use crate::archive::{DEAD_LETTER_PREFIX, EVENTS_PREFIX, read_archive, read_dead_letters};
    use crate::event::Timestamp;
    use crate::object_store::LocalObjectStore;

    fn setup() -> (tempfile::TempDir, Arc<dyn ObjectStore>, ArchiveWriter) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalObjectStore::new(dir.path()));
        let w = ArchiveWriter::new(store.clone(), ShardId::new("shardId-000000000000"));
        (dir, store, w)
    }

    /// Rows 10..=13 in hour 03 and 14..=15 in hour 04 of 2019-10-01, one late event
    /// (seq 16) back in hour 03.
    fn two_hours() -> Vec<ArchivedRow> {
        let at = |seq: u64, ts: &str| row(seq, view(&format!("e{seq}"), ts, "u1", "p1"));
        vec![
            at(10, "2019-10-01T03:00:00Z"),
            at(11, "2019-10-01T03:15:00Z"),
            at(12, "2019-10-01T03:30:00Z"),
            at(13, "2019-10-01T03:59:59.999Z"),
            at(14, "2019-10-01T04:00:00Z"),
            at(15, "2019-10-01T04:00:01Z"),
            at(16, "2019-10-01T03:58:00Z"),
        ]
    }

    fn bad_record(seq: u64, arrival: &str, data: &'static [u8]) -> RawRecord {
        RawRecord {
            shard: ShardId::new("shardId-000000000000"),
            seq: SeqNo::from_u64(seq),
            sub_seq: 0,
            partition_key: "u9".into(),
            arrival: Timestamp::parse_rfc3339(arrival).unwrap(),
            data: Bytes::from_static(data),
            rejected: None,
        }
    }

    #[tokio::test]
    async fn rows_spanning_two_hours_give_two_objects() {
        let (_dir, store, mut w) = setup();
        let rows = two_hours();
        for r in rows.clone() {
            w.push(r);
        }
        assert_eq!(w.buffered_rows(), 7);
        assert_eq!(
            w.buffered_bytes(),
            rows.iter().map(|r| r.raw.len()).sum::<usize>()
        );
        let summary = w.roll().await.unwrap();
        let expected = vec![
            "events/dt=2019-10-01/hour=03/shardId-000000000000-10-16.parquet".to_string(),
            "events/dt=2019-10-01/hour=04/shardId-000000000000-14-15.parquet".to_string(),
        ];
        assert_eq!(summary.objects, expected);
        assert_eq!((summary.rows, summary.dead_letters), (7, 0));
        assert_eq!(store.list(EVENTS_PREFIX).await.unwrap(), expected);
        assert_eq!((w.buffered_rows(), w.buffered_bytes()), (0, 0));

        let hour3 = read_archive(store.as_ref(), "events/dt=2019-10-01/hour=03/")
            .await
            .unwrap();
        let seqs: Vec<u64> = hour3.iter().map(|r| r.seq.as_u64().unwrap()).collect();
        assert_eq!(
            seqs,
            vec![10, 11, 12, 13, 16],
            "push order kept within an object"
        );
        let mut all = read_archive(store.as_ref(), EVENTS_PREFIX).await.unwrap();
        all.sort_by(|a, b| a.seq.cmp(&b.seq));
        let mut expected_rows = rows.clone();
        expected_rows.sort_by(|a, b| a.seq.cmp(&b.seq));
        assert_eq!(all, expected_rows);
        let mut on_disk = 0;
        for k in &summary.objects {
            on_disk += store.get(k).await.unwrap().unwrap().len();
        }
        assert_eq!(summary.bytes, on_disk);
    }

    #[tokio::test]
    async fn dead_letters_keep_reason_and_exact_bytes() {
        let (_dir, store, mut w) = setup();
        let payloads: [&'static [u8]; 3] = [
            b"{not json",
            br#"{"event_id":"e","ts":5,"user_id":"u","type":"search"}"#,
            b"\xff\xfe\x00binary",
        ];
        let arrivals = [
            "2019-10-01T23:59:59Z",
            "2019-10-01T12:00:00Z",
            "2019-10-02T00:00:00Z",
        ];
        let mut errors = Vec::new();
        for (i, (data, arrival)) in payloads.iter().zip(arrivals).enumerate() {
            let rec = bad_record(100 + i as u64, arrival, data);
            let err = crate::decode::decode(&rec.data).unwrap_err();
            w.push_dead(&rec, &err);
            errors.push(err);
        }
        w.push(row(99, view("ok", "2019-10-01T12:00:00Z", "u", "p")));
        assert_eq!((w.buffered_rows(), w.buffered_dead_letters()), (4, 3));

        let summary = w.roll().await.unwrap();
        assert_eq!((summary.rows, summary.dead_letters), (1, 3));
        assert_eq!(
            store.list(DEAD_LETTER_PREFIX).await.unwrap(),
            vec![
                "dead-letter/dt=2019-10-01/shardId-000000000000-100-101.jsonl",
                "dead-letter/dt=2019-10-02/shardId-000000000000-102-102.jsonl",
            ]
        );
        let lines = read_dead_letters(store.as_ref(), DEAD_LETTER_PREFIX)
            .await
            .unwrap();
        assert_eq!(lines.len(), 3);
        for line in &lines {
            let i = line.sequence_number.parse::<usize>().unwrap() - 100;
            assert_eq!(line.reason, errors[i].to_string());
            assert_eq!(line.kind, errors[i].kind());
            assert_eq!(line.raw_bytes().unwrap(), payloads[i]);
            assert_eq!(line.shard, "shardId-000000000000");
            assert_eq!(line.partition_key, "u9");
            assert_eq!(
                Timestamp::parse_rfc3339(&line.arrival_ts),
                Timestamp::parse_rfc3339(arrivals[i])
            );
        }
        assert_eq!(
            lines.iter().map(|l| l.kind.as_str()).collect::<Vec<_>>(),
            ["malformed", "invalid_ts", "malformed"]
        );
        // The generic JSON shape readers rely on.
        let body = store.get(&summary.objects[2]).await.unwrap().unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(body.split(|b| *b == b'\n').next().unwrap()).unwrap();
        for field in [
            "reason",
            "kind",
            "shard",
            "sequence_number",
            "sub_sequence_number",
            "arrival_ts",
            "raw_base64",
            "raw",
        ] {
            assert!(!v[field].is_null(), "{field} missing in {v}");
        }
    }

    #[tokio::test]
    async fn rolling_the_same_rows_twice_writes_the_same_keys() {
        let (_dir, store, mut w) = setup();
        for r in two_hours() {
            w.push(r);
        }
        let rec = bad_record(17, "2019-10-01T04:00:02Z", b"nope");
        w.push_dead(&rec, &crate::decode::decode(&rec.data).unwrap_err());
        let first = w.roll().await.unwrap();
        let listed = store.list("").await.unwrap();
        let bodies: Vec<Bytes> = {
            let mut v = Vec::new();
            for k in &listed {
                v.push(store.get(k).await.unwrap().unwrap());
            }
            v
        };

        // A replay after a crash: a fresh writer sees the same records again.
        let mut replay = ArchiveWriter::new(store.clone(), ShardId::new("shardId-000000000000"));
        for r in two_hours() {
            replay.push(r);
        }
        replay.push_dead(&rec, &crate::decode::decode(&rec.data).unwrap_err());
        let second = replay.roll().await.unwrap();

        assert_eq!(first, second);
        assert_eq!(
            store.list("").await.unwrap(),
            listed,
            "no duplicate objects"
        );
        for (k, body) in listed.iter().zip(bodies) {
            assert_eq!(store.get(k).await.unwrap().unwrap(), body, "{k} identical");
        }
        assert_eq!(
            read_archive(store.as_ref(), EVENTS_PREFIX)
                .await
                .unwrap()
                .len(),
            7
        );
    }

    #[test]
    fn roll_and_read_futures_are_send() {
        fn send<T: Send>(_: &T) {}
        let (_dir, store, mut w) = setup();
        send(&read_archive(store.as_ref(), EVENTS_PREFIX));
        send(&read_dead_letters(store.as_ref(), DEAD_LETTER_PREFIX));
        send(&w.roll());
    }

    #[tokio::test]
    async fn an_empty_roll_writes_nothing() {
        let (_dir, store, mut w) = setup();
        assert_eq!(w.roll().await.unwrap(), RollSummary::default());
        assert!(store.list("").await.unwrap().is_empty());
        // Also after a roll that emptied the buffer.
        w.push(row(1, view("e1", "2019-10-01T00:00:00Z", "u", "p")));
        w.roll().await.unwrap();
        assert_eq!(w.roll().await.unwrap(), RollSummary::default());
        assert_eq!(store.list("").await.unwrap().len(), 1);
    }

    /// Fails the first `fail` puts, then behaves like the wrapped store.
    struct Flaky {
        inner: LocalObjectStore,
        fail: AtomicUsize,
    }

    #[async_trait]
    impl ObjectStore for Flaky {
        async fn put(&self, key: &str, body: Bytes) -> Result<(), IngestError> {
            if self
                .fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(IngestError::ObjectStore("injected failure".into()));
            }
            self.inner.put(key, body).await
        }
        async fn get(&self, key: &str) -> Result<Option<Bytes>, IngestError> {
            self.inner.get(key).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<String>, IngestError> {
            self.inner.list(prefix).await
        }
        async fn delete(&self, key: &str) -> Result<(), IngestError> {
            self.inner.delete(key).await
        }
        fn describe(&self) -> String {
            "flaky".into()
        }
    }

    #[tokio::test]
    async fn a_failed_roll_keeps_the_buffer_for_a_retry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Flaky {
            inner: LocalObjectStore::new(dir.path()),
            fail: AtomicUsize::new(1),
        });
        let mut w = ArchiveWriter::new(store.clone(), ShardId::new("shardId-000000000000"));
        for r in two_hours() {
            w.push(r);
        }
        let bytes = w.buffered_bytes();
        assert!(w.roll().await.is_err());
        assert_eq!((w.buffered_rows(), w.buffered_bytes()), (7, bytes));
        let summary = w.roll().await.unwrap();
        assert_eq!(summary.objects.len(), 2);
        assert_eq!(store.list(EVENTS_PREFIX).await.unwrap(), summary.objects);
        assert_eq!(
            read_archive(store.as_ref(), EVENTS_PREFIX)
                .await
                .unwrap()
                .len(),
            7
        );
    }

    #[tokio::test]
    async fn an_unencodable_row_becomes_a_dead_letter() {
        let (_dir, store, mut w) = setup();
        let mut bad = row(3, view("e3", "2019-10-01T00:00:00Z", "u", "p"));
        bad.event.quantity = Some(u32::MAX);
        w.push(bad);
        w.push(row(4, view("e4", "2019-10-01T00:00:00Z", "u", "p")));
        let s = w.roll().await.unwrap();
        assert_eq!((s.rows, s.dead_letters), (1, 1));
        let dead = read_dead_letters(store.as_ref(), DEAD_LETTER_PREFIX)
            .await
            .unwrap();
        assert_eq!(dead[0].kind, "invalid_quantity");
    }
}
