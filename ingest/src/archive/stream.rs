//! The archive's events in time order, one partition at a time, for batch jobs that must
//! not hold the whole log (`recstream train`).
//!
//! ```text
//!  list(prefix) ─► runs of consecutive keys in one directory (dt=…/hour=… partitions)
//!     per run, on a background task:  get object ─► decode_event_batches (one row group
//!     at a time, provenance columns not read) ─► drop repeated event ids ─► stable sort by ts
//!     ─► channel (one batch ahead) ─► ArchiveEventStream::{next, blocking_next}
//! ```
//!
//! Memory is bounded by one partition's events (the writer partitions by event hour)
//! plus one object's compressed bytes, not by the archive. Within a partition the events
//! come out exactly as [`read_archive`](super::read_archive) + "keep each event id's first
//! row in key order" + a stable sort by time would order them; across partitions the
//! stream does not sort, so the concatenation is in time order only when every
//! partition's events are later than the previous one's (always so for archives written
//! by [`ArchiveWriter`](super::ArchiveWriter), whose partitions are event-time hours).
//! Consumers that need a time-ordered log check it (the model crate's training does) and
//! an event id repeated across two partitions (only possible with two different event
//! times) is not dropped here.

use std::sync::Arc;

use rustc_hash::FxHashSet;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::parquet::{ROW_GROUP_ROWS, decode_event_batches};
use crate::error::IngestError;
use crate::event::Event;
use crate::object_store::ObjectStore;

/// Time-ordered batches of the archive's events, one per partition (see the module doc).
/// Reading runs on a background task one batch ahead of the consumer; dropping the stream
/// stops it.
#[derive(Debug)]
pub struct ArchiveEventStream {
    rx: mpsc::Receiver<Result<Vec<Event>, IngestError>>,
    task: JoinHandle<()>,
}

impl ArchiveEventStream {
    /// Starts reading every `.parquet` object under `prefix` on the current Tokio runtime
    /// (panics outside one, as `tokio::spawn` does).
    pub fn open(store: Arc<dyn ObjectStore>, prefix: &str) -> ArchiveEventStream {
        // One batch ready while the consumer works on the previous one.
        let (tx, rx) = mpsc::channel(1);
        let prefix = prefix.to_string();
        let task = tokio::spawn(async move {
            if let Err(e) = produce(store.as_ref(), &prefix, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        ArchiveEventStream { rx, task }
    }

    /// The next partition's events (sorted by time, never empty), `None` at the end.
    /// After an error the stream ends.
    pub async fn next(&mut self) -> Option<Result<Vec<Event>, IngestError>> {
        self.rx.recv().await
    }

    /// [`ArchiveEventStream::next`] for a thread outside the runtime (a blocking-pool
    /// thread); panics when called from async code.
    pub fn blocking_next(&mut self) -> Option<Result<Vec<Event>, IngestError>> {
        self.rx.blocking_recv()
    }
}

impl Drop for ArchiveEventStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The directory part of a key (`events/dt=2019-10-01/hour=03`).
fn dir_of(key: &str) -> &str {
    key.rsplit_once('/').map_or("", |(d, _)| d)
}

async fn produce(
    store: &dyn ObjectStore,
    prefix: &str,
    tx: &mpsc::Sender<Result<Vec<Event>, IngestError>>,
) -> Result<(), IngestError> {
    let keys = super::parquet_keys(store, prefix).await?;
    let mut start = 0;
    while start < keys.len() {
        let dir = dir_of(&keys[start]);
        let end = start
            + keys[start..]
                .iter()
                .take_while(|k| dir_of(k) == dir)
                .count();
        let mut events: Vec<Event> = Vec::new();
        for key in &keys[start..end] {
            // An object deleted between list and get (compaction, retention) is skipped.
            let Some(body) = store.get(key).await? else {
                continue;
            };
            let key = key.clone();
            events = tokio::task::spawn_blocking(move || {
                decode_event_batches(body, ROW_GROUP_ROWS, |batch| {
                    events.extend(batch);
                    Ok(())
                })
                .map_err(|e| IngestError::Parquet(format!("{key}: {e}")))?;
                Ok::<_, IngestError>(events)
            })
            .await
            .map_err(|e| IngestError::Parquet(format!("decoding task failed: {e}")))??;
        }
        start = end;
        if events.is_empty() {
            continue;
        }
        let events = tokio::task::spawn_blocking(move || dedup_and_sort(events))
            .await
            .map_err(|e| IngestError::Parquet(format!("sorting task failed: {e}")))?;
        if tx.send(Ok(events)).await.is_err() {
            // The consumer is gone.
            return Ok(());
        }
    }
    Ok(())
}

/// Keeps the first row of each event id, then sorts by time (stable: rows with the same
/// time keep their key and file order).
fn dedup_and_sort(mut events: Vec<Event>) -> Vec<Event> {
    let keep: Vec<bool> = {
        let mut seen: FxHashSet<&str> = FxHashSet::default();
        seen.reserve(events.len());
        events
            .iter()
            .map(|e| seen.insert(e.event_id.as_str()))
            .collect()
    };
    let mut k = keep.into_iter();
    events.retain(|_| k.next().unwrap_or(false));
    events.sort_by_key(|e| e.ts);
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalObjectStore;
    use crate::archive::parquet::tests::{full_row, row, sparse_rows, view};
    use crate::archive::{encode_events, read_archive};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn partitions_come_out_sorted_and_deduplicated_like_the_whole_archive() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalObjectStore::new(dir.path()));
        let ev = |id: &str, ts: &str, u: &str| view(id, ts, u, "p");
        // Two shards' files in hour 00, out of order inside and across files, with a
        // replayed row; one file in hour 01.
        let a = vec![
            row(1, ev("e3", "2019-10-01T00:00:03Z", "u1")),
            row(2, ev("e1", "2019-10-01T00:00:01Z", "u1")),
            row(3, ev("e2", "2019-10-01T00:00:03Z", "u2")),
        ];
        let b = vec![
            row(1, ev("e0", "2019-10-01T00:00:00Z", "u3")),
            row(2, ev("e1", "2019-10-01T00:00:01Z", "u1")),
        ];
        let c = vec![row(9, ev("e9", "2019-10-01T01:00:00Z", "u1"))];
        for (k, rows) in [
            ("events/dt=2019-10-01/hour=00/s0-1-3.parquet", &a),
            ("events/dt=2019-10-01/hour=00/s1-1-2.parquet", &b),
            ("events/dt=2019-10-01/hour=01/s0-9-9.parquet", &c),
        ] {
            store.put(k, encode_events(rows).unwrap()).await.unwrap();
        }
        store.put("events/notes.txt", "x".into()).await.unwrap();

        let mut s = ArchiveEventStream::open(store.clone(), "events/");
        let mut batches = Vec::new();
        while let Some(b) = s.next().await {
            batches.push(b.unwrap());
        }
        let ids = |b: &[Event]| b.iter().map(|e| e.event_id.to_string()).collect::<Vec<_>>();
        assert_eq!(batches.len(), 2);
        assert_eq!(ids(&batches[0]), ["e0", "e1", "e3", "e2"]);
        assert_eq!(ids(&batches[1]), ["e9"]);

        // The same as the whole archive, deduplicated and sorted.
        let mut seen = std::collections::HashSet::new();
        let mut whole: Vec<Event> = read_archive(store.as_ref(), "events/")
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.event)
            .filter(|e| seen.insert(e.event_id.clone()))
            .collect();
        whole.sort_by_key(|e| e.ts);
        assert_eq!(batches.concat(), whole);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupt_object_ends_the_stream_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalObjectStore::new(dir.path()));
        store
            .put("events/dt=2019-10-01/hour=00/bad.parquet", "nope".into())
            .await
            .unwrap();
        let mut s = ArchiveEventStream::open(store, "events/");
        let err = s.next().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("bad.parquet"), "{err}");
        assert!(s.next().await.is_none());
    }

    #[test]
    fn projected_decoding_equals_the_full_rows() {
        let mut rows = vec![full_row()];
        rows.extend(sparse_rows());
        rows.extend((0..7).map(|i| {
            row(
                i,
                view(
                    &format!("e{i}"),
                    "2019-10-01T00:00:00Z",
                    &format!("u{}", i % 3),
                    "p",
                ),
            )
        }));
        let bytes = encode_events(&rows).unwrap();
        let mut got = Vec::new();
        let mut calls = 0;
        decode_event_batches(bytes, 4, |b| {
            calls += 1;
            got.extend(b);
            Ok(())
        })
        .unwrap();
        assert_eq!(calls, 3);
        assert_eq!(got, rows.into_iter().map(|r| r.event).collect::<Vec<_>>());
    }
}
