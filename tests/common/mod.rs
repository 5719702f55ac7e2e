//! Shared helpers of the end-to-end tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The bundled REES46 sample.
pub fn sample() -> PathBuf {
    root().join("data/sample/rees46-2019-10-01-head.csv.gz")
}

/// Reads a gzipped or plain CSV into a string.
pub fn read_text(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if path.extension().is_some_and(|e| e == "gz") {
        let mut s = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut s)
            .unwrap();
        s
    } else {
        String::from_utf8(bytes).unwrap()
    }
}

/// Per-user and per-product counts computed straight from the REES46 CSV, independently
/// of the recstream loader: (views, carts, purchases, spend in cents).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    pub views: u64,
    pub carts: u64,
    pub purchases: u64,
    pub spend_cents: i64,
}

pub fn expected_from_rees46(
    csv_text: &str,
) -> (
    BTreeMap<String, Expected>,
    BTreeMap<String, Expected>,
    usize,
) {
    let mut users: BTreeMap<String, Expected> = BTreeMap::new();
    let mut products: BTreeMap<String, Expected> = BTreeMap::new();
    let mut rows = 0;
    let mut rdr = csv::Reader::from_reader(csv_text.as_bytes());
    for rec in rdr.records() {
        let rec = rec.unwrap();
        rows += 1;
        let (ty, product, price, user) = (&rec[1], &rec[2], &rec[6], &rec[7]);
        let cents = {
            let (whole, frac) = price.split_once('.').unwrap_or((price, "0"));
            let frac = format!("{frac:0<2}");
            whole.parse::<i64>().unwrap() * 100 + frac[..2].parse::<i64>().unwrap()
        };
        for (map, key) in [(&mut users, user), (&mut products, product)] {
            let e = map.entry(key.to_string()).or_default();
            match ty {
                "view" => e.views += 1,
                "cart" => e.carts += 1,
                "purchase" => {
                    e.purchases += 1;
                    e.spend_cents += cents;
                }
                other => panic!("unexpected type {other}"),
            }
        }
    }
    (users, products, rows)
}

/// The users with the most events (the interesting ones to check).
pub fn busiest(
    map: &BTreeMap<String, Expected>,
    n: usize,
    pred: impl Fn(&Expected) -> bool,
) -> Vec<String> {
    let mut v: Vec<(&String, &Expected)> = map.iter().filter(|(_, e)| pred(e)).collect();
    v.sort_by(|a, b| {
        let t = |e: &Expected| e.views + e.carts + e.purchases;
        t(b.1).cmp(&t(a.1)).then(a.0.cmp(b.0))
    });
    v.into_iter().take(n).map(|(k, _)| k.clone()).collect()
}

/// Whether the environment variables a service test needs are set (scripts/test sets
/// them after starting the services). Under `CI=true` a missing one fails the test;
/// otherwise the test says loudly that it did not run.
pub fn services_available(test: &str, vars: &[&str]) -> bool {
    let missing: Vec<&str> = vars
        .iter()
        .copied()
        .filter(|v| std::env::var(v).is_err())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "{test}: {} not set, so this test cannot run; run the suite with `scripts/test`, \
         which starts the services (moto_server, Redis) and sets them",
        missing.join(" and ")
    );
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{msg}");
    }
    eprintln!("\n!!!!!!!!!! NOT RUN: {msg}\n");
    false
}

/// A name no other test run uses (streams, tables, buckets).
pub fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("rs-{tag}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

/// Runs `recstream <args> --config <config>` to completion; fails the test with its
/// output if it fails.
pub fn cli(args: &[&str], config: &Path) -> std::process::Output {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_recstream"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env("RECSTREAM_LOG", "warn")
        .output()
        .expect("run recstream");
    assert!(
        out.status.success(),
        "recstream {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
