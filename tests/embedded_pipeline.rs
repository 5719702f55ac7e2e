//! End to end on the embedded default: replay real REES46 rows through the whole
//! pipeline (decode, aggregate, archive, store) and check the results against values
//! computed independently from the CSV.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::*;
use recstream_features::{EmbeddedStore, FeatureConfig, FeatureStore};
use recstream_ingest::archive::read_archive;
use recstream_ingest::{LocalObjectStore, ObjectStore};

fn replay(data_dir: &Path, csv: &Path, extra_env: &[(&str, &str)]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_recstream"))
        .args(["replay", "rees46", "--json", "--path"])
        .arg(csv)
        .env("RECSTREAM__EMBEDDED__DATA_DIR", data_dir)
        .envs(extra_env.iter().copied())
        .output()
        .expect("run recstream replay");
    assert!(
        out.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn summary(out: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().expect("a summary line");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_features_match_the_csv_and_every_row_is_accounted_for() {
    let dir = tempfile::tempdir().unwrap();
    // The real sample plus three rows no decoder should accept.
    let mut text = read_text(&sample());
    text.push_str("2019-10-01 02:50:00 UTC,view,not-a-number,1,,,1.00,42,s\n");
    text.push_str("2019-10-01 02:50:00 UTC,view,1,1,,,oops,42,s\n");
    text.push_str("garbage without enough columns\n");
    let csv = dir.path().join("input.csv");
    std::fs::write(&csv, &text).unwrap();
    let real_rows = text.lines().count() - 1 - 3;

    let data = dir.path().join("data");
    let s = summary(&replay(&data, &csv, &[]));
    let records = s["summary"]["records"].as_u64().unwrap();
    let accepted = s["summary"]["accepted"].as_u64().unwrap();
    let dead = s["summary"]["dead_letters"].as_u64().unwrap();
    assert_eq!(records as usize, real_rows + 3, "every input row is read");
    assert_eq!(dead, 3, "the three broken rows are dead-lettered");
    assert_eq!(accepted + dead, records, "nothing is dropped");

    // The archive holds each accepted event exactly once, readable back from Parquet.
    let objects: Arc<dyn ObjectStore> = Arc::new(LocalObjectStore::new(data.join("bucket")));
    let rows = read_archive(objects.as_ref(), "events/").await.unwrap();
    assert_eq!(rows.len() as u64, accepted);
    let ids: BTreeSet<&str> = rows.iter().map(|r| r.event.event_id.as_str()).collect();
    assert_eq!(ids.len(), rows.len(), "no event archived twice");
    for key in objects.list("events/").await.unwrap() {
        assert!(key.starts_with("events/dt=2019-10-01/hour=0"), "{key}");
    }
    let dead_keys = objects.list("dead-letter/").await.unwrap();
    let dead_lines: usize = {
        let mut n = 0;
        for k in &dead_keys {
            let body = objects.get(k).await.unwrap().unwrap();
            for line in String::from_utf8_lossy(&body).lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                assert!(!v["reason"].as_str().unwrap().is_empty());
                n += 1;
            }
        }
        n
    };
    assert_eq!(dead_lines, 3);

    // Exact feature values for the busiest users and products.
    let (users, products, _) = expected_from_rees46(&read_text(&sample()));
    let store = EmbeddedStore::open(data.join("features.redb"), FeatureConfig::default()).unwrap();
    let mut checked = 0;
    for id in busiest(&users, 5, |_| true)
        .into_iter()
        .chain(busiest(&users, 3, |e| e.purchases > 0))
    {
        let want = users[&id];
        let got = store.user(&id).await.unwrap().expect("user present");
        assert_eq!(
            (
                got.counts.view,
                got.counts.add_to_cart,
                got.counts.purchase,
                got.spend_minor
            ),
            (want.views, want.carts, want.purchases, want.spend_cents),
            "user {id}"
        );
        checked += 1;
    }
    for id in busiest(&products, 5, |_| true)
        .into_iter()
        .chain(busiest(&products, 3, |e| e.purchases > 0))
    {
        let want = products[&id];
        let got = store
            .products(&[&id])
            .await
            .unwrap()
            .pop()
            .flatten()
            .expect("product present");
        assert_eq!(
            (got.counts.view, got.counts.add_to_cart, got.counts.purchase),
            (want.views, want.carts, want.purchases),
            "product {id}"
        );
        checked += 1;
    }
    assert_eq!(checked, 16);
    let all_users = store.scan_users().await.unwrap();
    assert_eq!(all_users.len(), users.len(), "one feature row per user");
}

/// Kills the processor with SIGKILL mid-stream, several times, and restarts it over the
/// same data directory: the final features and archive equal one clean run's. The crashed
/// runs also keep at most 50 users in memory and evict users idle for 10 minutes of event
/// time, so users leave memory and come back from the state store all along; the clean
/// run keeps everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_stream_loses_nothing_and_counts_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let csv = sample();
    let fast_checkpoints = [
        ("RECSTREAM__PROCESSOR__CHECKPOINT_INTERVAL_MS", "40"),
        ("RECSTREAM__PROCESSOR__FLUSH_INTERVAL_MS", "10"),
        ("RECSTREAM__PROCESSOR__BATCH_SIZE", "50"),
    ];

    let clean = dir.path().join("clean");
    replay(&clean, &csv, &fast_checkpoints);

    let crashed = dir.path().join("crashed");
    let evicting: Vec<(&str, &str)> = fast_checkpoints
        .iter()
        .copied()
        .chain([
            ("RECSTREAM__FEATURES__MAX_HOT_USERS", "50"),
            ("RECSTREAM__FEATURES__EVICT_IDLE_SECS", "600"),
        ])
        .collect();
    let mut kills = 0;
    for delay_ms in [300u64, 700, 500] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_recstream"))
            .args(["replay", "rees46", "--speed", "4000", "--path"])
            .arg(&csv)
            .env("RECSTREAM__EMBEDDED__DATA_DIR", &crashed)
            .envs(evicting.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL: no shutdown hook runs
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert!(
        kills >= 2,
        "the processor must actually be killed mid-stream"
    );
    let resumed = summary(&replay(&crashed, &csv, &evicting));
    assert!(resumed["summary"]["finished"].as_bool().unwrap());

    let a = EmbeddedStore::open(clean.join("features.redb"), FeatureConfig::default()).unwrap();
    let b = EmbeddedStore::open(crashed.join("features.redb"), FeatureConfig::default()).unwrap();
    let mut ua = a.scan_users().await.unwrap();
    let mut ub = b.scan_users().await.unwrap();
    ua.sort_by(|x, y| x.user_id.cmp(&y.user_id));
    ub.sort_by(|x, y| x.user_id.cmp(&y.user_id));
    assert_eq!(ua.len(), ub.len());
    for (x, y) in ua.iter().zip(&ub) {
        assert_eq!(x, y, "user {} differs after crash and restart", x.user_id);
    }
    let (_, products, _) = expected_from_rees46(&read_text(&csv));
    let ids: Vec<&str> = products.keys().map(String::as_str).collect();
    assert_eq!(
        a.products(&ids).await.unwrap(),
        b.products(&ids).await.unwrap()
    );
    assert_eq!(a.trending().await.unwrap(), b.trending().await.unwrap());

    let ra = read_archive(&LocalObjectStore::new(clean.join("bucket")), "events/")
        .await
        .unwrap();
    let rb = read_archive(&LocalObjectStore::new(crashed.join("bucket")), "events/")
        .await
        .unwrap();
    assert_eq!(ra.len(), rb.len(), "archive row counts");
    let ids_b: BTreeSet<&str> = rb.iter().map(|r| r.event.event_id.as_str()).collect();
    assert_eq!(
        ids_b.len(),
        rb.len(),
        "no event archived twice after crashes"
    );
}
