//! The raw-event archive: every accepted event as Parquet, every rejected record as a
//! dead letter, both in Hive-partitioned object keys that DuckDB, pandas/pyarrow, Athena
//! and Spark read without glue code.
//!
//! ```text
//!  Event + raw bytes ─► ArchiveWriter::push ───────┐   (one writer per shard, buffers rows)
//!  RawRecord + DecodeError ─► ArchiveWriter::push_dead ┤
//!                                                   ▼
//!                     ArchiveWriter::roll ─► spawn_blocking: group + encode ─► ObjectStore::put
//!
//!  <bucket>/
//!  ├── events/                                   partitioned by event time (UTC)
//!  │   └── dt=2019-10-01/
//!  │       ├── hour=00/<shard>-<first_seq>-<last_seq>.parquet
//!  │       └── hour=01/shardId-000000000000-4959…8898-4959…9012.parquet
//!  └── dead-letter/                              partitioned by arrival time (UTC)
//!      └── dt=2019-10-01/<shard>-<first_seq>-<last_seq>.jsonl
//! ```
//!
//! `<shard>` is [`ShardId::file_safe`]; `<first_seq>`/`<last_seq>` are the smallest and
//! largest sequence numbers of the rows in *that* object. Names are therefore a pure
//! function of the shard and the rows: a replay that rolls at the same sequence numbers
//! overwrites the objects it wrote before instead of adding new ones.
//!
//! What each file owns:
//! - `mod.rs` (here): the key layout ([`event_key`], [`dead_letter_key`], [`DtHour`]) and
//!   the reader of a whole archive ([`read_archive`]).
//! - `parquet.rs`: the Arrow schema of the archive and the Parquet encoder/decoder
//!   ([`encode_events`], [`decode_events`], [`ArchivedRow`]).
//! - `dead_letter.rs`: the dead-letter record and its JSON-lines format
//!   ([`DeadLetterLine`], [`read_dead_letters`]).
//! - `writer.rs`: [`ArchiveWriter`], the per-shard buffer that rolls into objects.
//! - `stream.rs`: [`ArchiveEventStream`], the events one partition at a time in time
//!   order, for batch jobs that must not load the whole archive (training).

pub mod dead_letter;
pub mod parquet;
pub mod stream;
pub mod writer;

use std::fmt;

use chrono::{NaiveDate, Timelike};
use futures::{StreamExt, TryStreamExt};

use crate::error::IngestError;
use crate::event::Timestamp;
use crate::object_store::ObjectStore;
use crate::record::{SeqNo, ShardId};

pub use dead_letter::{DeadLetterLine, read_dead_letters};
pub use parquet::{
    ArchivedRow, archive_schema, decode_event_batches, decode_events, encode_events,
};
pub use stream::ArchiveEventStream;
pub use writer::{ArchiveWriter, RollSummary};

/// Prefix of every Parquet object of the archive.
pub const EVENTS_PREFIX: &str = "events/";
/// Prefix of every dead-letter object.
pub const DEAD_LETTER_PREFIX: &str = "dead-letter/";

/// How many objects are fetched and decoded at once by the readers.
const READ_CONCURRENCY: usize = 8;

/// The UTC date and hour of a timestamp: one `dt=YYYY-MM-DD/hour=HH` partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DtHour {
    /// The UTC date of the `dt=` partition.
    pub date: NaiveDate,
    /// 0..=23.
    pub hour: u32,
}

impl DtHour {
    /// The partition holding `ts` (UTC).
    pub fn of(ts: Timestamp) -> DtHour {
        let dt = ts.to_datetime();
        DtHour {
            date: dt.date_naive(),
            hour: dt.hour(),
        }
    }
}

impl fmt::Display for DtHour {
    /// `dt=2019-10-01/hour=03`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dt={}/hour={:02}",
            self.date.format("%Y-%m-%d"),
            self.hour
        )
    }
}

/// `events/dt=YYYY-MM-DD/hour=HH/<shard>-<first>-<last>.parquet`
pub fn event_key(shard: &ShardId, dt_hour: DtHour, first: &SeqNo, last: &SeqNo) -> String {
    format!(
        "{EVENTS_PREFIX}{dt_hour}/{}-{first}-{last}.parquet",
        shard.file_safe()
    )
}

/// `dead-letter/dt=YYYY-MM-DD/<shard>-<first>-<last>.jsonl`
pub fn dead_letter_key(shard: &ShardId, date: NaiveDate, first: &SeqNo, last: &SeqNo) -> String {
    format!(
        "{DEAD_LETTER_PREFIX}dt={}/{}-{first}-{last}.jsonl",
        date.format("%Y-%m-%d"),
        shard.file_safe()
    )
}

/// The Parquet objects under `prefix`, in key order (time order: partitions are
/// `dt=…/hour=…`).
pub(crate) async fn parquet_keys<S>(store: &S, prefix: &str) -> Result<Vec<String>, IngestError>
where
    S: ObjectStore + ?Sized,
{
    Ok(store
        .list(prefix)
        .await?
        .into_iter()
        .filter(|k| k.ends_with(".parquet"))
        .collect())
}

/// The events of archived rows once each (a replayed object repeats event ids: the first
/// row kept, in the order given), sorted by event time: what a batch job over
/// [`read_archive`]'s rows trains or evaluates on.
pub fn unique_events_by_time(rows: Vec<ArchivedRow>) -> Vec<crate::event::Event> {
    let mut seen = std::collections::HashSet::with_capacity(rows.len());
    let mut events: Vec<crate::event::Event> = rows
        .into_iter()
        .map(|r| r.event)
        .filter(|e| seen.insert(e.event_id.clone()))
        .collect();
    events.sort_by_key(|e| e.ts);
    events
}

/// Reads every `.parquet` object whose key starts with `prefix` (`events/` for the whole
/// archive, `events/dt=2019-10-01/` for one day), in key order, rows in file order.
///
/// Rows are returned as stored: nothing is deduplicated, so this sees exactly what DuckDB
/// or Athena would see. Decoding runs on the blocking pool.
pub async fn read_archive<S>(store: &S, prefix: &str) -> Result<Vec<ArchivedRow>, IngestError>
where
    S: ObjectStore + ?Sized,
{
    let keys = parquet_keys(store, prefix).await?;
    let parts: Vec<Vec<ArchivedRow>> = futures::stream::iter(keys)
        .map(|key| async move {
            // An object deleted between list and get (compaction, retention) is skipped.
            let Some(body) = store.get(&key).await? else {
                return Ok(Vec::new());
            };
            tokio::task::spawn_blocking(move || {
                decode_events(body).map_err(|e| IngestError::Parquet(format!("{key}: {e}")))
            })
            .await
            .map_err(|e| IngestError::Parquet(format!("decoding task failed: {e}")))?
        })
        .buffered(READ_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(parts.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_layout() {
        let shard = ShardId::new("shardId-000000000001");
        let dh = DtHour::of(Timestamp::parse_rfc3339("2019-10-01T03:59:59.999Z").unwrap());
        assert_eq!(dh.to_string(), "dt=2019-10-01/hour=03");
        assert_eq!(
            event_key(&shard, dh, &SeqNo::from_u64(7), &SeqNo::from_u64(42)),
            "events/dt=2019-10-01/hour=03/shardId-000000000001-7-42.parquet"
        );
        assert_eq!(
            dead_letter_key(
                &ShardId::new("file:rees46"),
                dh.date,
                &SeqNo::from_u64(1),
                &SeqNo::from_u64(1)
            ),
            "dead-letter/dt=2019-10-01/file_rees46-1-1.jsonl"
        );
    }

    #[test]
    fn hour_boundaries_are_utc() {
        let dh = DtHour::of(Timestamp::parse_rfc3339("2019-10-01T00:30:00+02:00").unwrap());
        assert_eq!(dh.to_string(), "dt=2019-09-30/hour=22");
    }
}
