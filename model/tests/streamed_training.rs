//! Training streamed from a Parquet archive, one partition at a time, produces the same
//! artifact as loading the whole archive, deduplicating, sorting and training on it.

use std::sync::Arc;

use arrow::record_batch::RecordBatchReader;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use recstream_ingest::archive::{ArchiveWriter, ArchivedRow, read_archive, unique_events_by_time};
use recstream_ingest::{Event, LocalObjectStore, ObjectStore, SeqNo, ShardId, Timestamp};
use recstream_model::{
    ArchiveSource, ModelArtifact, ModelError, NoProgress, TrainParams, train, train_from,
};

mod support;

use support::rees46;

fn archived(shard: &ShardId, seq: u64, e: &Event) -> ArchivedRow {
    ArchivedRow {
        shard: shard.clone(),
        seq: SeqNo::from_u64(seq),
        sub_seq: 0,
        arrival: Timestamp(e.ts.0 + 250),
        raw: Bytes::from(e.to_json()),
        event: e.clone(),
    }
}

/// The artifact as JSON without what differs between two runs (timings, `trained_at`).
fn comparable(a: &ModelArtifact) -> serde_json::Value {
    let mut a = a.clone();
    a.meta.trained_at.clear();
    a.meta.train_seconds = 0.0;
    a.meta.dataset.clear();
    a.meta.metrics.retain(|k, _| !k.ends_with("_seconds"));
    serde_json::to_value(&a).unwrap()
}

/// Rewrites an object with row groups of `rows` rows (as another tool might).
fn with_small_row_groups(bytes: Bytes, rows: usize) -> Bytes {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap();
    let schema = reader.schema();
    let props = WriterProperties::builder()
        .set_max_row_group_size(rows)
        .build();
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, schema, Some(props)).unwrap();
    for b in reader {
        w.write(&b.unwrap()).unwrap();
    }
    w.close().unwrap();
    Bytes::from(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_training_equals_training_on_the_whole_archive() {
    let events = rees46();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalObjectStore::new(dir.path()));

    // Two shards (users split between them), each rolling every 2,500 rows: several
    // objects per hour partition, with interleaved times.
    let shards = [
        ShardId::new("shardId-000000000000"),
        ShardId::new("shardId-000000000001"),
    ];
    let mut writers: Vec<ArchiveWriter> = shards
        .iter()
        .map(|s| ArchiveWriter::new(store.clone(), s.clone()))
        .collect();
    for (i, e) in events.iter().enumerate() {
        let k = e.user_id.bytes().map(usize::from).sum::<usize>() % 2;
        writers[k].push(archived(&shards[k], i as u64 + 1, e));
        if writers[k].buffered_rows() == 2_500 {
            writers[k].roll().await.unwrap();
        }
    }
    for w in &mut writers {
        w.roll().await.unwrap();
    }
    let keys = store.list("events/").await.unwrap();
    assert!(keys.len() >= 8, "{keys:?}");
    // Every object rewritten with row groups of 700 rows.
    let mut groups = 0;
    for k in &keys {
        let small = with_small_row_groups(store.get(k).await.unwrap().unwrap(), 700);
        groups += SerializedFileReader::new(small.clone())
            .unwrap()
            .metadata()
            .num_row_groups();
        store.put(k, small).await.unwrap();
    }
    assert!(
        groups > keys.len(),
        "{groups} row groups in {} objects",
        keys.len()
    );
    // A replayed object: the same rows again under a later key of the same partition.
    let first = &keys[0];
    let again = first.replace(".parquet", "-replayed.parquet");
    store
        .put(&again, store.get(first).await.unwrap().unwrap())
        .await
        .unwrap();

    // Whole archive: what `recstream train` did before streaming.
    let rows = read_archive(store.as_ref(), "events/").await.unwrap();
    assert!(rows.len() > events.len());
    let whole = unique_events_by_time(rows);
    assert_eq!(whole.len(), events.len());
    let params = TrainParams::default();
    let (loaded, _) = {
        let params = params.clone();
        tokio::task::spawn_blocking(move || train(&whole, "whole", &params, &mut NoProgress))
            .await
            .unwrap()
            .unwrap()
    };

    let mut source = ArchiveSource::new(store.clone(), "events/");
    let (streamed, _) = tokio::task::spawn_blocking(move || {
        train_from(&mut source, "streamed", &params, &mut NoProgress)
    })
    .await
    .unwrap()
    .unwrap();

    assert_eq!(streamed.meta.events, events.len() as u64);
    assert!(streamed.meta.rows > 0);
    assert!(streamed.embeddings.is_some() && streamed.segments.is_some());
    assert_eq!(comparable(&streamed), comparable(&loaded));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_out_of_time_order_are_refused() {
    let events = rees46();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalObjectStore::new(dir.path()));
    let shard = ShardId::new("shardId-000000000000");
    let half = events.len() / 2;
    // The later half under the earlier key.
    for (k, part) in [
        ("events/dt=2019-10-01/hour=00/a.parquet", &events[half..]),
        ("events/dt=2019-10-01/hour=01/b.parquet", &events[..half]),
    ] {
        let rows: Vec<ArchivedRow> = part
            .iter()
            .enumerate()
            .map(|(i, e)| archived(&shard, i as u64 + 1, e))
            .collect();
        store
            .put(k, recstream_ingest::archive::encode_events(&rows).unwrap())
            .await
            .unwrap();
    }
    let mut source = ArchiveSource::new(store, "events/");
    let err = tokio::task::spawn_blocking(move || {
        train_from(&mut source, "x", &TrainParams::default(), &mut NoProgress)
    })
    .await
    .unwrap()
    .map(|_| ())
    .unwrap_err();
    assert!(matches!(err, ModelError::Unsorted(_)), "{err}");
}

#[test]
fn catalog_entries_on_the_stream_change_nothing_in_training() {
    let events: Vec<Event> = rees46().into_iter().take(4_000).collect();
    // Every 50th event followed by a back-office catalog entry for its product.
    let mut with_catalog = Vec::new();
    for (i, e) in events.iter().enumerate() {
        with_catalog.push(e.clone());
        if i % 50 == 0
            && let Some(p) = &e.product_id
        {
            let mut entry = Event::new(
                &format!("catalog-{i}"),
                e.ts,
                "backoffice",
                recstream_ingest::EventType::Product,
            );
            entry.product_id = Some(p.clone());
            entry.price = Some(recstream_ingest::Money::new(1_999, "USD"));
            entry.product = Some(recstream_ingest::ProductInfo {
                title: "Entry".into(),
                stock: 3,
                active: true,
            });
            with_catalog.push(entry);
        }
    }
    assert!(with_catalog.len() > events.len());
    let params = TrainParams::default();
    let (plain, _) = train(&events, "plain", &params, &mut NoProgress).unwrap();
    let (mixed, _) = train(&with_catalog, "mixed", &params, &mut NoProgress).unwrap();
    assert_eq!(mixed.meta.events, plain.meta.events);
    assert_eq!(comparable(&mixed), comparable(&plain));
}
