//! File replay: a loaded dataset played back as one shard.
//!
//! ```text
//!  datasets::load ─► LoadedRow { row, raw, event } ─► FileReplaySource ─► RawRecord { seq = row, … }
//!                         Ok(event) ─► data = event JSON, partition key = user id, arrival = event ts
//!                         Err(why)  ─► data = raw line, rejected = Some(why) ─► dead letters
//! ```
//!
//! This file owns the replay source of the embedded stream: positions are the rows'
//! numbers, so a restart resumes after the checkpointed row; batches are bounded by
//! count; `speed` optionally paces the replay at N× event time (default: as fast as
//! possible). `next_batch` is cancel-safe: a row is taken from the iterator only when it
//! goes into the returned batch.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use compact_str::CompactString;
use tokio::time::Instant;

use crate::datasets::{Dataset, LoadedRow};
use crate::error::IngestError;
use crate::event::Timestamp;
use crate::record::{RawRecord, SeqNo, ShardId};
use crate::source::Source;

/// The partition key of rows without an event.
pub const UNKNOWN_PARTITION_KEY: &str = "unknown";
/// How long a paced replay waits at most in one `next_batch` before returning an empty
/// batch (so the processor can flush on time).
pub const DEFAULT_MAX_IDLE_WAIT: Duration = Duration::from_millis(100);

/// Replays rows of a dataset as the records of one shard.
pub struct FileReplaySource<I: Iterator<Item = LoadedRow> = std::vec::IntoIter<LoadedRow>> {
    shard: ShardId,
    rows: std::iter::Peekable<I>,
    /// Rows with `row <= after` are already durable; `None` in the `Some` case means the
    /// resume position is beyond any row number (everything is skipped).
    after: Option<Option<u64>>,
    last_row: Option<u64>,
    /// Time of the last mapped event: the arrival time of the unmappable rows after it.
    last_ts: Timestamp,
    pacing: Option<Pacing>,
    finished: bool,
}

struct Pacing {
    speed: f64,
    max_idle_wait: Duration,
    /// Wall-clock instant and event time of the first paced row.
    origin: Option<(Instant, i64)>,
}

impl FileReplaySource {
    /// A replay of `rows` as shard `shard` (conventionally `file:<dataset>`), resuming
    /// after `after` (rows numbered `<= after` are skipped).
    pub fn new(shard: ShardId, rows: Vec<LoadedRow>, after: Option<SeqNo>) -> FileReplaySource {
        FileReplaySource::from_iter(shard, rows, after)
    }

    /// A replay of a dataset under its conventional shard id, `file:<dataset>`.
    pub fn for_dataset(
        dataset: Dataset,
        rows: Vec<LoadedRow>,
        after: Option<SeqNo>,
    ) -> FileReplaySource {
        FileReplaySource::new(dataset.shard_id(), rows, after)
    }
}

impl<I: Iterator<Item = LoadedRow>> FileReplaySource<I> {
    /// A replay of any iterator of rows; their `row` numbers must strictly increase.
    pub fn from_iter(
        shard: ShardId,
        rows: impl IntoIterator<IntoIter = I>,
        after: Option<SeqNo>,
    ) -> FileReplaySource<I> {
        FileReplaySource {
            shard,
            rows: rows.into_iter().peekable(),
            after: after.map(|s| s.as_u64()),
            last_row: None,
            last_ts: Timestamp(0),
            pacing: None,
            finished: false,
        }
    }

    /// Paces the replay at `speed` × event time (2.0 = twice as fast as it happened).
    /// A speed that is not a positive finite number means as fast as possible.
    pub fn with_speed(mut self, speed: f64) -> Self {
        if speed.is_finite() && speed > 0.0 {
            self.pacing = Some(Pacing {
                speed,
                max_idle_wait: DEFAULT_MAX_IDLE_WAIT,
                origin: None,
            });
        } else {
            tracing::warn!(speed, shard = %self.shard, "replay speed must be > 0; replaying unpaced");
            self.pacing = None;
        }
        self
    }

    /// The longest a paced `next_batch` waits before returning an empty batch.
    pub fn with_max_idle_wait(mut self, wait: Duration) -> Self {
        if let Some(p) = &mut self.pacing {
            p.max_idle_wait = wait;
        }
        self
    }

    /// Drops the rows at or before the resume position from the front of the iterator.
    fn skip_done(&mut self) {
        let Some(after) = self.after else { return };
        while let Some(r) = self.rows.peek() {
            match after {
                Some(a) if r.row > a => break,
                _ => {
                    self.rows.next();
                }
            }
        }
    }

    /// When the next row is due, if the replay is paced.
    /// `ts` is the next row's event time (`None` for a row without an event).
    fn due(&mut self, ts: Option<i64>) -> Option<Instant> {
        let p = self.pacing.as_mut()?;
        let ts = ts.unwrap_or(self.last_ts.0);
        let (start, t0) = *p.origin.get_or_insert_with(|| (Instant::now(), ts));
        let ahead_ms = ts.saturating_sub(t0).max(0) as f64 / p.speed;
        // Gaps longer than a year of wall-clock time are not meaningful for a demo.
        Some(start + Duration::from_secs_f64((ahead_ms / 1000.0).min(31_536_000.0)))
    }

    fn record_of(&mut self, row: LoadedRow) -> RawRecord {
        let seq = SeqNo::from_u64(row.row);
        match row.event {
            Ok(event) => {
                self.last_ts = event.ts;
                RawRecord {
                    shard: self.shard.clone(),
                    seq,
                    sub_seq: 0,
                    partition_key: event.user_id.clone(),
                    arrival: event.ts,
                    data: Bytes::from(event.to_json()),
                    rejected: None,
                }
            }
            Err(err) => RawRecord {
                shard: self.shard.clone(),
                seq,
                sub_seq: 0,
                partition_key: CompactString::const_new(UNKNOWN_PARTITION_KEY),
                // Keeps dead letters in the time partition of their neighbours.
                arrival: self.last_ts,
                data: row.raw,
                rejected: Some(err),
            },
        }
    }
}

#[async_trait]
impl<I: Iterator<Item = LoadedRow> + Send> Source for FileReplaySource<I> {
    fn shard(&self) -> &ShardId {
        &self.shard
    }

    async fn next_batch(&mut self, max: usize) -> Result<Option<Vec<RawRecord>>, IngestError> {
        if self.finished {
            return Ok(None);
        }
        self.skip_done();
        let mut batch = Vec::with_capacity(max.min(4096));
        while batch.len() < max {
            let Some(next) = self.rows.peek() else {
                break;
            };
            let (row_no, ts) = (next.row, next.event.as_ref().ok().map(|e| e.ts.0));
            if let Some(last) = self.last_row
                && row_no <= last
            {
                return Err(IngestError::Dataset {
                    dataset: self.shard.to_string(),
                    message: format!("row numbers must increase: row {row_no} after row {last}"),
                });
            }
            if let Some(due) = self.due(ts)
                && due > Instant::now()
            {
                if !batch.is_empty() {
                    break;
                }
                let wait = self
                    .pacing
                    .as_ref()
                    .map_or(Duration::ZERO, |p| p.max_idle_wait);
                tokio::time::sleep_until(due.min(Instant::now() + wait)).await;
                if due > Instant::now() {
                    return Ok(Some(batch));
                }
            }
            let Some(row) = self.rows.next() else { break };
            self.last_row = Some(row.row);
            let record = self.record_of(row);
            batch.push(record);
        }
        if batch.is_empty() && max > 0 {
            self.finished = true;
            return Ok(None);
        }
        Ok(Some(batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::{self, test_data_dir};
    use crate::decode::{DecodeError, decode};
    use crate::event::{Event, EventType};

    fn row(n: u64, ts: Option<i64>) -> LoadedRow {
        LoadedRow {
            row: n,
            line: n,
            raw: Bytes::from(format!("raw {n}")),
            event: ts
                .map(|t| {
                    Event::new(
                        &format!("e{n}"),
                        Timestamp(t),
                        &format!("u{n}"),
                        EventType::View,
                    )
                    .with_product("p", None)
                })
                .ok_or_else(|| DecodeError::Unmappable("price: bad".into())),
        }
    }

    const T0: i64 = 1_569_888_000_000;

    async fn drain<S: Source>(src: &mut S, max: usize) -> Vec<RawRecord> {
        let mut out = Vec::new();
        while let Some(b) = src.next_batch(max).await.unwrap() {
            assert!(b.len() <= max);
            out.extend(b);
        }
        out
    }

    #[tokio::test]
    async fn replays_the_real_sample_as_decodable_records() {
        let rows =
            datasets::load(Dataset::Rees46, &test_data_dir().join("rees46_multicat")).unwrap();
        let events: Vec<Event> = rows.iter().map(|r| r.event.clone().unwrap()).collect();
        let mut src = FileReplaySource::for_dataset(Dataset::Rees46, rows, None);
        assert_eq!(src.shard().as_str(), "file:rees46");
        let records = drain(&mut src, 500).await;
        assert_eq!(records.len(), events.len());
        for (i, (r, e)) in records.iter().zip(&events).enumerate() {
            assert_eq!(r.seq, SeqNo::from_u64(i as u64 + 1));
            assert_eq!(r.partition_key, e.user_id);
            assert_eq!(r.arrival, e.ts);
            assert!(r.rejected.is_none());
            assert_eq!(&decode(&r.data).unwrap(), e);
        }
        // Finished stays finished.
        assert!(src.next_batch(10).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn unmappable_rows_carry_their_raw_line_and_reason() {
        let rows = vec![row(1, Some(T0)), row(2, None), row(3, Some(T0 + 5))];
        let mut src = FileReplaySource::new(ShardId::new("file:t"), rows, None);
        let records = drain(&mut src, 2).await;
        assert_eq!(records.len(), 3);
        let bad = &records[1];
        assert_eq!(bad.data, "raw 2");
        assert_eq!(bad.partition_key, UNKNOWN_PARTITION_KEY);
        assert_eq!(bad.arrival, Timestamp(T0), "the time of the row before it");
        assert_eq!(
            bad.rejected,
            Some(DecodeError::Unmappable("price: bad".into()))
        );
        assert_eq!(bad.seq, SeqNo::from_u64(2));
    }

    #[tokio::test]
    async fn resumes_after_the_checkpoint() {
        let rows: Vec<LoadedRow> = (1..=10).map(|n| row(n, Some(T0 + n as i64))).collect();
        let mut src = FileReplaySource::new(
            ShardId::new("file:t"),
            rows.clone(),
            Some(SeqNo::from_u64(7)),
        );
        let seqs: Vec<String> = drain(&mut src, 2)
            .await
            .iter()
            .map(|r| r.seq.to_string())
            .collect();
        assert_eq!(seqs, ["8", "9", "10"]);

        let mut done = FileReplaySource::new(
            ShardId::new("file:t"),
            rows.clone(),
            Some(SeqNo::from_u64(10)),
        );
        assert!(done.next_batch(5).await.unwrap().is_none());
        let huge = SeqNo::parse("123456789012345678901234567890").unwrap();
        let mut beyond = FileReplaySource::new(ShardId::new("file:t"), rows, Some(huge));
        assert!(beyond.next_batch(5).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn rows_out_of_order_are_an_error_not_a_silent_replay() {
        let rows = vec![row(2, Some(T0)), row(1, Some(T0))];
        let mut src = FileReplaySource::new(ShardId::new("file:t"), rows, None);
        assert!(matches!(
            src.next_batch(10).await,
            Err(IngestError::Dataset { .. })
        ));
    }

    #[tokio::test]
    async fn a_zero_batch_is_empty_and_does_not_finish() {
        let mut src = FileReplaySource::new(ShardId::new("file:t"), vec![row(1, Some(T0))], None);
        assert_eq!(src.next_batch(0).await.unwrap().map(|b| b.len()), Some(0));
        assert_eq!(src.next_batch(1).await.unwrap().map(|b| b.len()), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn paced_replay_follows_event_time() {
        // Events 0 s, 1 s, 1 s and 3 s apart in event time, replayed at 2x.
        let rows = vec![
            row(1, Some(T0)),
            row(2, Some(T0 + 1_000)),
            row(3, None),
            row(4, Some(T0 + 1_000)),
            row(5, Some(T0 + 4_000)),
        ];
        let mut src = FileReplaySource::new(ShardId::new("file:t"), rows, None)
            .with_speed(2.0)
            .with_max_idle_wait(Duration::from_millis(100));
        let start = Instant::now();
        let mut arrivals = Vec::new();
        let mut empties = 0;
        while let Some(batch) = src.next_batch(10).await.unwrap() {
            if batch.is_empty() {
                empties += 1;
            }
            for r in batch {
                arrivals.push((r.seq.to_string(), (Instant::now() - start).as_millis()));
            }
        }
        let want: Vec<(String, u128)> =
            [("1", 0), ("2", 500), ("3", 500), ("4", 500), ("5", 2_000)]
                .into_iter()
                .map(|(s, t)| (s.to_string(), t))
                .collect();
        assert_eq!(arrivals, want);
        // While waiting, the source hands back empty batches so the caller can flush.
        assert!(empties >= 15, "{empties}");
    }

    #[tokio::test]
    async fn a_bad_speed_means_unpaced() {
        let rows = vec![row(1, Some(T0)), row(2, Some(T0 + 3_600_000))];
        let mut src = FileReplaySource::new(ShardId::new("file:t"), rows, None).with_speed(0.0);
        assert_eq!(src.next_batch(10).await.unwrap().map(|b| b.len()), Some(2));
    }
}
