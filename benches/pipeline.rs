//! Whole-pipeline throughput on the embedded default: replay a real dataset through
//! decode → aggregate → archive (Parquet) → feature store (redb) → checkpoint, exactly as
//! `recstream replay` does, and report events per second.
//!
//! `cargo bench --bench pipeline`

// Generated code: criterion 0.7's `criterion_group!` defines an undocumented `pub fn`
// that neither a doc comment nor an attribute on the invocation reaches (fixed upstream
// after 0.7: criterion-rs/criterion.rs#26). Nothing else in this bench is public.
#![allow(missing_docs)]

use std::path::Path;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use recstream::config::Config;
use recstream::runtime::Runtime;
use recstream_ingest::datasets::{self, Dataset, LoadedRow};
use recstream_ingest::source::file::FileReplaySource;
use recstream_ingest::{ShardId, Source};

fn run_once(rows: Vec<LoadedRow>, dataset: Dataset) -> u64 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.embedded.data_dir = dir.path().to_path_buf();
        let runtime = Runtime::embedded(cfg).unwrap();
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let shard = ShardId::new(&format!("file:{dataset}"));
        let s = shard.clone();
        let (_, handle) = runtime
            .spawn_shard(
                shard,
                move |after| Ok(Box::new(FileReplaySource::new(s, rows, after)) as Box<dyn Source>),
                rx,
            )
            .await
            .unwrap();
        handle.await.unwrap().unwrap().records
    })
}

fn pipeline(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let inputs = [
        (
            Dataset::Rees46,
            root.join("data/sample/rees46-2019-10-01-head.csv.gz"),
        ),
        (
            Dataset::YooChoose,
            root.join("../shared/data/yoochoose_rsc15/yoochoose-clicks-100k_train_full.txt"),
        ),
    ];
    let mut g = c.benchmark_group("pipeline");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    for (dataset, path) in inputs {
        if !path.exists() {
            eprintln!("skipping {dataset}: {} not found", path.display());
            continue;
        }
        let rows = datasets::load(dataset, &path).unwrap();
        g.throughput(Throughput::Elements(rows.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("embedded_replay", format!("{dataset}_{}", rows.len())),
            &rows,
            |b, rows| b.iter(|| run_once(rows.clone(), dataset)),
        );
    }
    g.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
