//! What a checkpoint costs when the state is large and little changed, and what memory a
//! shard holds when it meets a million users: the incremental checkpoint and the bounded
//! hot state (`features.max_hot_users`) of the performance issue.
//!
//! ```sh
//! cargo bench --bench checkpoint
//! CHECKPOINT_USERS=1000000 CHANGED=1000 HOT_EVENTS=10000000 MAX_HOT=100000 cargo bench --bench checkpoint
//! ```
//!
//! Under `cargo test` (no `--bench` argument) it runs at 1/500 of these sizes, as a smoke
//! test of the same code.
//!
//! Part 1 fills one shard's aggregator with `CHECKPOINT_USERS` users (one view each, over
//! 10,000 products in 100 categories), takes the first delta (every row: what a full
//! snapshot costs), then five times changes `CHANGED` users and times the checkpoint of
//! that change: `take_delta` + encode (the object written to S3 / disk) and the rows'
//! upsert into the embedded state store (redb). Part 2 streams `HOT_EVENTS` events over
//! `CHECKPOINT_USERS` users through apply → (every 100k events) drain, delta, upsert,
//! evict with `max_hot_users = MAX_HOT`, and reports the peak RSS and the users in memory.
//! The resident bytes per user are measured in part 1 (RSS growth over the fill).
//! Figures go to BENCHMARKS.md with the date and the median of the five checkpoints.

use std::time::Instant;

use recstream_features::{Aggregator, EmbeddedStore, FeatureConfig, StateStore};
use recstream_ingest::{Event, EventType, ShardId, Timestamp};

const T0: i64 = 1_700_000_000_000;

/// A setting from the environment; under `cargo test` (no `--bench` argument) the sizes
/// shrink to a smoke run, as criterion's benches do.
fn env_usize(name: &str, default: usize) -> usize {
    let smoke = !std::env::args().any(|a| a == "--bench");
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke {
            (default / 500).max(10)
        } else {
            default
        })
}

/// Resident and peak resident memory of this process, in bytes (`/proc/self/status`).
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A deterministic pseudo-random sequence (64-bit LCG), so every run meets the same users.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

fn view(i: usize, user: usize, product: usize, ts: i64) -> Event {
    let category = format!("c{}", product % 100);
    let product = format!("p{product}");
    Event::new(
        &format!("e{i}"),
        Timestamp(ts),
        &format!("u{user}"),
        EventType::View,
    )
    .with_product(&product, Some(&category))
    .with_session(&format!("s{user}"))
}

/// A runtime for the store's async calls, a temporary directory and the shard's id.
fn setup() -> (tokio::runtime::Runtime, tempfile::TempDir, ShardId) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    (rt, dir, ShardId::new("bench-shard"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Each part runs in its own process (`PART=1` / `PART=2`), so part 2's peak RSS is its own.
fn main() {
    match std::env::var("PART").as_deref() {
        Ok("1") => part1(),
        Ok("2") => part2(),
        _ => {
            for part in ["1", "2"] {
                let exe = std::env::current_exe().expect("own path");
                let status = std::process::Command::new(exe)
                    .args(std::env::args().skip(1))
                    .env("PART", part)
                    .status()
                    .expect("run part");
                assert!(status.success(), "part {part} failed");
            }
        }
    }
}

fn part1() {
    let users = env_usize("CHECKPOINT_USERS", 1_000_000);
    let changed = env_usize("CHANGED", 1_000);
    let (rt, dir, shard) = setup();

    // ---- part 1: a checkpoint of 1k changes in a state of 1M users ------------------
    let cfg = FeatureConfig {
        evict_idle_secs: 0,
        max_hot_users: 0,
        ..FeatureConfig::default()
    };
    let store = EmbeddedStore::open(dir.path().join("part1.redb"), cfg.clone()).expect("store");
    let (rss_before, _) = rss();
    let mut agg = Aggregator::new(cfg.clone());
    let started = Instant::now();
    for u in 0..users {
        agg.apply(&view(u, u, u % 10_000, T0 + u as i64));
    }
    let fill = started.elapsed();
    let (rss_full, _) = rss();
    let _ = agg.drain();
    let started = Instant::now();
    let full = agg.take_delta();
    let full_bytes = full.encode().len();
    let full_take = started.elapsed();
    let started = Instant::now();
    rt.block_on(store.put_state(&shard, &full)).expect("put");
    let full_put = started.elapsed();
    drop(full);
    println!(
        "part 1: {users} users filled in {:.2} s; resident {:.0} bytes per user (RSS {} → {} MiB)",
        fill.as_secs_f64(),
        (rss_full.saturating_sub(rss_before)) as f64 / users as f64,
        rss_before >> 20,
        rss_full >> 20
    );
    println!(
        "  full delta (every row, what a full snapshot costs): {:.1} ms take+encode, {:.1} ms upsert, {:.1} MiB",
        full_take.as_secs_f64() * 1e3,
        full_put.as_secs_f64() * 1e3,
        full_bytes as f64 / (1 << 20) as f64
    );
    let mut rng = Lcg(7);
    let (mut takes, mut puts, mut sizes, mut rows) = (vec![], vec![], vec![], vec![]);
    let mut next_event = users;
    for round in 0..5 {
        for _ in 0..changed {
            let u = rng.next(users);
            agg.apply(&view(
                next_event,
                u,
                rng.next(10_000),
                T0 + (users + round * changed) as i64,
            ));
            next_event += 1;
        }
        let _ = agg.drain();
        let started = Instant::now();
        let delta = agg.take_delta();
        let bytes = delta.encode();
        takes.push(started.elapsed().as_secs_f64() * 1e3);
        let started = Instant::now();
        rt.block_on(store.put_state(&shard, &delta)).expect("put");
        puts.push(started.elapsed().as_secs_f64() * 1e3);
        sizes.push(bytes.len() as f64);
        rows.push((delta.users.len() + delta.products.len()) as f64);
    }
    println!(
        "  checkpoint of {changed} changed users (median of 5): {:.3} ms take+encode, {:.3} ms upsert, {:.1} KiB, {:.0} rows",
        median(takes),
        median(puts),
        median(sizes.clone()) / 1024.0,
        median(rows)
    );
    println!(
        "  the full delta is {:.0}× the bytes of the incremental one",
        full_bytes as f64 / median(sizes)
    );
}

fn part2() {
    let users = env_usize("CHECKPOINT_USERS", 1_000_000);
    let hot_events = env_usize("HOT_EVENTS", 10_000_000);
    let max_hot = env_usize("MAX_HOT", 100_000);
    let (rt, dir, shard) = setup();
    // ---- part 2: bounded hot state over a long replay --------------------------------
    let cfg = FeatureConfig {
        evict_idle_secs: 0,
        max_hot_users: max_hot,
        ..FeatureConfig::default()
    };
    let store = EmbeddedStore::open(dir.path().join("part2.redb"), cfg.clone()).expect("store");
    let mut agg = Aggregator::new(cfg.clone());
    let mut rng = Lcg(11);
    // A checkpoint every 100k events (at 100k events/s: one a second).
    let every = (hot_events / 20).clamp(1, 100_000);
    let started = Instant::now();
    let (mut loads, mut evicted) = (0usize, 0usize);
    for i in 0..hot_events {
        let u = rng.next(users);
        let e = view(i, u, rng.next(10_000), T0 + i as i64);
        if agg.is_partial() && !agg.is_resident(&e.user_id) {
            let row = rt
                .block_on(store.user_states(&shard, &[e.user_id.as_str()]))
                .expect("read");
            if let Some(Some(row)) = row.into_iter().next() {
                agg.load_user(&e.user_id, &row).expect("row");
                loads += 1;
            }
        }
        agg.apply(&e);
        if (i + 1) % every == 0 {
            let _ = agg.drain();
            let delta = agg.take_delta();
            rt.block_on(store.put_state(&shard, &delta)).expect("put");
            evicted += agg.evict(cfg.evict_idle_ms(), cfg.max_hot_users());
        }
    }
    let (rss_now, peak) = rss();
    println!(
        "part 2: {hot_events} events over {users} users in {:.1} s with max_hot_users = {max_hot}: {} users in memory, {evicted} evictions, {loads} users read back; RSS {} MiB, peak {} MiB",
        started.elapsed().as_secs_f64(),
        agg.user_count(),
        rss_now >> 20,
        peak >> 20
    );
}
