//! Hot-path micro-benchmarks on the real REES46 sample: decode + validate, aggregate, and
//! both together (the per-event budget is 0.5 µs per core), plus one recommendation. The
//! `_ref` benchmarks are the hot path (the borrowed `EventRef`: `decode_ref` +
//! `apply_ref`); the others build the owned `Event` as the archive and the join need it.
//!
//! `cargo bench --bench hot_path`; instruction counts: `benches/hot_path_instructions.sh`.

// Generated code: criterion 0.7's `criterion_group!` defines an undocumented `pub fn`
// that neither a doc comment nor an attribute on the invocation reaches (fixed upstream
// after 0.7: criterion-rs/criterion.rs#26). Nothing else in this bench is public.
#![allow(missing_docs)]

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use recstream_features::{Aggregator, EmbeddedStore, FeatureConfig, FeatureStore};
use recstream_ingest::datasets::{self, Dataset};
use recstream_ingest::{Event, ShardId, decode, decode_ref};
use recstream_scoring::{InProcessCache, Recommender, Request, ScoringConfig};

fn sample() -> (Vec<Vec<u8>>, Vec<Event>) {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sample/rees46-2019-10-01-head.csv.gz");
    let rows = datasets::load(Dataset::Rees46, &path).expect("bundled sample");
    let events: Vec<Event> = rows.into_iter().filter_map(|r| r.event.ok()).collect();
    let json = events.iter().map(Event::to_json).collect();
    (json, events)
}

fn hot_path(c: &mut Criterion) {
    let (json, events) = sample();
    let n = json.len() as u64;
    let mean_bytes = json.iter().map(Vec::len).sum::<usize>() / json.len();
    let mut g = c.benchmark_group("per_event");
    g.throughput(Throughput::Elements(n));
    g.bench_function(
        BenchmarkId::new("decode_validate", format!("rees46_{n}x{mean_bytes}B")),
        |b| {
            b.iter(|| {
                for j in &json {
                    black_box(decode(black_box(j)).unwrap());
                }
            })
        },
    );
    g.bench_function(
        BenchmarkId::new("decode_validate_ref", format!("rees46_{n}x{mean_bytes}B")),
        |b| {
            b.iter(|| {
                for j in &json {
                    black_box(decode_ref(black_box(j)).unwrap());
                }
            })
        },
    );
    g.bench_function(BenchmarkId::new("aggregate", format!("rees46_{n}")), |b| {
        b.iter_with_setup(
            || Aggregator::new(FeatureConfig::default()),
            |mut agg| {
                agg.apply_all(&events);
                agg
            },
        )
    });
    g.bench_function(
        BenchmarkId::new(
            "decode_validate_aggregate",
            format!("rees46_{n}x{mean_bytes}B"),
        ),
        |b| {
            b.iter_with_setup(
                || Aggregator::new(FeatureConfig::default()),
                |mut agg| {
                    for j in &json {
                        agg.apply(&decode(j).unwrap());
                    }
                    agg
                },
            )
        },
    );
    g.bench_function(
        BenchmarkId::new(
            "decode_validate_aggregate_ref",
            format!("rees46_{n}x{mean_bytes}B"),
        ),
        |b| {
            b.iter_with_setup(
                || Aggregator::new(FeatureConfig::default()),
                |mut agg| {
                    for j in &json {
                        agg.apply_ref(&decode_ref(j).unwrap());
                    }
                    agg
                },
            )
        },
    );
    // Warm state: the steady state of a long-running shard (ids already interned).
    let mut warm = Aggregator::new(FeatureConfig::default());
    warm.apply_all(&events);
    g.bench_function(
        BenchmarkId::new(
            "decode_validate_aggregate_ref_warm",
            format!("rees46_{n}x{mean_bytes}B"),
        ),
        |b| {
            b.iter(|| {
                for j in &json {
                    warm.apply_ref(&decode_ref(j).unwrap());
                }
            })
        },
    );
    g.bench_function(
        BenchmarkId::new(
            "decode_validate_aggregate_warm",
            format!("rees46_{n}x{mean_bytes}B"),
        ),
        |b| {
            b.iter(|| {
                for j in &json {
                    warm.apply(&decode(j).unwrap());
                }
            })
        },
    );
    g.finish();

    // One recommendation against the features of the whole sample.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(EmbeddedStore::open(dir.path().join("f.redb"), FeatureConfig::default()).unwrap());
    let mut agg = Aggregator::new(FeatureConfig::default());
    agg.apply_all(&events);
    let batch = agg.drain();
    rt.block_on(store.write(&ShardId::new("bench"), &batch))
        .unwrap();
    let users: Vec<String> = batch
        .users
        .iter()
        .filter(|u| u.recent.len() >= 5)
        .map(|u| u.user_id.clone())
        .take(200)
        .collect();
    let rec = Recommender::new(
        store,
        Arc::new(InProcessCache::new()),
        ScoringConfig::default(),
    );
    let mut i = 0;
    c.bench_function("recommend/personalized_n10", |b| {
        b.iter(|| {
            i = (i + 1) % users.len();
            let req = Request {
                user_id: users[i].clone(),
                n: Some(10),
                context: vec![],
            };
            black_box(rt.block_on(rec.recommend(&req)).unwrap())
        })
    });
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
