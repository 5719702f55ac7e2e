//! Training and scoring benchmarks on real data.
//!
//! The 1M-event log is the REES46 sample (17.4k events, `shared/data` or
//! `RECSTREAM_DATA_DIR`) tiled 58 times: each copy has its own users and is shifted in time
//! after the previous one, products are shared — so popularity and co-visitation grow as
//! they would over a week of the same shop. Fixed seeds throughout.
//!
//! ```text
//! cargo bench -p recstream-model --bench train
//! ```

// Generated code: criterion 0.7's `criterion_group!` defines an undocumented `pub fn`
// that neither a doc comment nor an attribute on the invocation reaches (fixed upstream
// after 0.7: criterion-rs/criterion.rs#26). Nothing else in this bench is public.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use recstream_features::ProductFeatures;
use recstream_ingest::Event;
use recstream_model::{
    CandidateParams, CandidateSignals, LinearScorer, NoProgress, Replay, TrainParams, train,
};

#[path = "../tests/support/mod.rs"]
mod support;

use support::rees46;

/// `n` events: copies of the sample with distinct users, one after the other in time.
fn tiled(base: &[Event], n: usize) -> Vec<Event> {
    let span = base.last().unwrap().ts.0 - base.first().unwrap().ts.0 + 60_000;
    let mut out = Vec::with_capacity(n);
    'outer: for copy in 0.. {
        for e in base {
            if out.len() == n {
                break 'outer;
            }
            let mut e = e.clone();
            e.ts.0 += copy as i64 * span;
            e.user_id = compact_str::format_compact!("{}-{copy}", e.user_id);
            e.event_id = compact_str::format_compact!("{}-{copy}", e.event_id);
            if let Some(s) = &e.session_id {
                e.session_id = Some(compact_str::format_compact!("{s}-{copy}"));
            }
            out.push(e);
        }
    }
    out
}

/// Under `cargo test` (no `--bench` flag) criterion runs each benchmark once as a smoke
/// test, in the unoptimised test profile: a small log keeps that quick.
fn event_count() -> usize {
    if std::env::args().any(|a| a == "--bench") {
        1_000_000
    } else {
        20_000
    }
}

fn bench_train(c: &mut Criterion) {
    let base = rees46();
    let events = tiled(&base, event_count());
    let size = if events.len() == 1_000_000 {
        "1M events".to_string()
    } else {
        format!("{} events", events.len())
    };
    let mut g = c.benchmark_group("train");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(60))
        .warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_with_input(BenchmarkId::new("replay", &size), &events, |b, ev| {
        b.iter(|| {
            let mut r = Replay::new(Default::default());
            for e in ev {
                r.apply(e);
            }
            black_box(r.applied())
        })
    });
    g.bench_with_input(
        BenchmarkId::new("aggregator_only", &size),
        &events,
        |b, ev| {
            b.iter(|| {
                let mut a = recstream_features::Aggregator::new(Default::default());
                for e in ev {
                    a.apply(e);
                }
                black_box(a.applied())
            })
        },
    );
    let rankers = TrainParams {
        skip_embeddings: true,
        skip_segments: true,
        ..TrainParams::default()
    };
    g.bench_with_input(BenchmarkId::new("rankers", &size), &events, |b, ev| {
        b.iter(|| {
            black_box(
                train(ev, "bench", &rankers, &mut NoProgress)
                    .unwrap()
                    .0
                    .meta
                    .rows,
            )
        })
    });
    g.bench_with_input(BenchmarkId::new("everything", &size), &events, |b, ev| {
        b.iter(|| {
            black_box(
                train(ev, "bench", &TrainParams::default(), &mut NoProgress)
                    .unwrap()
                    .0
                    .meta
                    .rows,
            )
        })
    });
    g.finish();
}

fn bench_score(c: &mut Criterion) {
    let events = rees46();
    let params = TrainParams {
        skip_embeddings: true,
        skip_segments: true,
        ..TrainParams::default()
    };
    let (artifact, mut replay) = train(&events, "bench", &params, &mut NoProgress).unwrap();
    // The most active user, with a large candidate budget.
    let user_id = replay
        .user_ids()
        .into_iter()
        .map(str::to_string)
        .max_by_key(|u| replay.user(u).map_or(0, |f| f.counts.total()))
        .unwrap();
    let user = replay.user(&user_id).unwrap();
    let wide = CandidateParams {
        neighbours_per_seed: 50,
        per_category: 50,
        trending: 100,
        ..CandidateParams::default()
    };
    let cands = replay.candidates(&user, &wide, &[]);
    let views: Vec<_> = cands
        .iter()
        .map(|(id, _)| replay.product_or_empty(id))
        .collect();
    let mut g = c.benchmark_group("score");
    for n in [50usize, 200] {
        let batch: Vec<(&ProductFeatures, CandidateSignals)> = views
            .iter()
            .zip(&cands)
            .cycle()
            .take(n)
            .map(|(v, (_, s))| (v.as_ref(), *s))
            .collect();
        g.throughput(Throughput::Elements(n as u64));
        let mut out = Vec::with_capacity(n);
        g.bench_with_input(BenchmarkId::new("logistic", n), &batch, |b, batch| {
            b.iter(|| {
                artifact.affinity.score_into(&user, batch, &mut out);
                black_box(out[0])
            })
        });
        g.bench_with_input(BenchmarkId::new("ftrl", n), &batch, |b, batch| {
            b.iter(|| {
                artifact.online.score_into(&user, batch, &mut out);
                black_box(out[0])
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_score, bench_train);
criterion_main!(benches);
