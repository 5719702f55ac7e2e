//! Training at data-scientist scale: the REES46 sample tiled to N events (as the `train`
//! bench tiles it: each copy its own users and sessions, shifted after the previous one
//! in time), written as a real Parquet archive through the [`ArchiveWriter`] (two shards,
//! rolling every 128k rows each), then trained through the streaming path
//! ([`ArchiveSource`] + [`train_from`]), as `recstream train` does.
//!
//! ```text
//! cargo bench -p recstream-model --bench train_archive --no-run
//! <bench binary> --bench write /tmp/archive-10m 10000000   # once
//! /usr/bin/time -v <bench binary> --bench train /tmp/archive-10m
//! /usr/bin/time -v <bench binary> --bench whole /tmp/archive-10m  # the old whole-load path
//! ```
//!
//! `train` prints one JSON line (events, rows, seconds per stage, peak RSS from
//! `/proc/self/status`). Without `--bench` (under `cargo test`) it writes and trains
//! 20k events in a temporary directory as a smoke test.

// A harness-less bench: nothing here is public API.
#![allow(missing_docs)]

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use recstream_ingest::archive::{ArchiveWriter, ArchivedRow, read_archive, unique_events_by_time};
use recstream_ingest::{Event, LocalObjectStore, ObjectStore, SeqNo, ShardId, Timestamp};
use recstream_model::{ArchiveSource, NoProgress, TrainParams, train, train_from};

#[path = "../tests/support/mod.rs"]
mod support;

use support::rees46;

/// Copy `copy` of the sample event `e` (the tiling of benches/train.rs).
fn tile(e: &Event, copy: usize, span: i64) -> Event {
    let mut e = e.clone();
    e.ts.0 += copy as i64 * span;
    e.user_id = compact_str::format_compact!("{}-{copy}", e.user_id);
    e.event_id = compact_str::format_compact!("{}-{copy}", e.event_id);
    if let Some(s) = &e.session_id {
        e.session_id = Some(compact_str::format_compact!("{s}-{copy}"));
    }
    e
}

/// Peak resident set of this process so far, bytes (`VmHWM`).
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

async fn write(dir: &Path, n: usize) {
    let base = rees46();
    let span = base.last().unwrap().ts.0 - base.first().unwrap().ts.0 + 60_000;
    let store: Arc<dyn ObjectStore> = Arc::new(LocalObjectStore::new(dir));
    let shards = [
        ShardId::new("shardId-000000000000"),
        ShardId::new("shardId-000000000001"),
    ];
    let mut writers: Vec<ArchiveWriter> = shards
        .iter()
        .map(|s| ArchiveWriter::new(store.clone(), s.clone()))
        .collect();
    let t = Instant::now();
    let mut written = 0usize;
    'outer: for copy in 0.. {
        for e in &base {
            if written == n {
                break 'outer;
            }
            let e = tile(e, copy, span);
            // Users keep to one shard, as a Kinesis partition key by user would.
            let k = e.user_id.bytes().map(usize::from).sum::<usize>() % 2;
            written += 1;
            writers[k].push(ArchivedRow {
                shard: shards[k].clone(),
                seq: SeqNo::from_u64(written as u64),
                sub_seq: 0,
                arrival: Timestamp(e.ts.0 + 250),
                raw: Bytes::from(e.to_json()),
                event: e,
            });
            if writers[k].buffered_rows() == 128 * 1024 {
                writers[k].roll().await.unwrap();
            }
        }
    }
    for w in &mut writers {
        w.roll().await.unwrap();
    }
    let objects = store.list("events/").await.unwrap().len();
    eprintln!(
        "wrote {written} events as {objects} objects under {} in {:.1} s",
        dir.display(),
        t.elapsed().as_secs_f64()
    );
}

async fn train_streamed(dir: &Path) {
    let store: Arc<dyn ObjectStore> = Arc::new(LocalObjectStore::new(dir));
    let t = Instant::now();
    let mut source = ArchiveSource::new(store, "events/");
    let (a, _) = tokio::task::spawn_blocking(move || {
        train_from(
            &mut source,
            "bench",
            &TrainParams::default(),
            &mut NoProgress,
        )
    })
    .await
    .unwrap()
    .unwrap();
    report("streamed", &a, t.elapsed().as_secs_f64());
}

async fn train_whole(dir: &Path) {
    let store = LocalObjectStore::new(dir);
    let t = Instant::now();
    let events = unique_events_by_time(read_archive(&store, "events/").await.unwrap());
    let (a, _) = tokio::task::spawn_blocking(move || {
        train(&events, "bench", &TrainParams::default(), &mut NoProgress)
    })
    .await
    .unwrap()
    .unwrap();
    report("whole", &a, t.elapsed().as_secs_f64());
}

fn report(path: &str, a: &recstream_model::ModelArtifact, secs: f64) {
    println!(
        "{}",
        serde_json::json!({
            "path": path,
            "events": a.meta.events,
            "users": a.meta.users,
            "products": a.meta.products,
            "rows": a.meta.rows,
            "similar_products": a.embeddings.as_ref().map_or(0, |e| e.items.len()),
            "wall_seconds": (secs * 100.0).round() / 100.0,
            "metrics": a.meta.metrics,
            "peak_rss_mib": peak_rss() / (1024 * 1024),
        })
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --all-targets`: a small smoke run.
        let dir = tempfile::tempdir().unwrap();
        rt.block_on(async {
            write(dir.path(), 20_000).await;
            train_streamed(dir.path()).await;
        });
        return;
    }
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["write", dir, n] => rt.block_on(write(Path::new(dir), n.parse().expect("a count"))),
        ["train", dir] => rt.block_on(train_streamed(Path::new(dir))),
        ["whole", dir] => rt.block_on(train_whole(Path::new(dir))),
        _ => eprintln!("usage: train_archive --bench (write DIR N | train DIR | whole DIR)"),
    }
}
