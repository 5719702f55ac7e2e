//! AWS mode end to end, through the binary, against the AWS emulator (moto: real Kinesis,
//! DynamoDB and S3 protocols) and Redis:
//!
//! - `recstream init` (twice: idempotent), `recstream replay rees46 --to kinesis`, then
//!   `recstream run --role process`: the features in DynamoDB equal an embedded run over
//!   the same events; pyarrow reads the S3 archive back (row count, schema, each event
//!   once);
//! - the same events put KPL-aggregated by a real third-party producer (`aws-kinesis-agg`
//!   through `scripts/kpl_put.py`): same features;
//! - two processor processes on a 4-shard stream split the shards; one is SIGKILLed
//!   mid-stream, the other takes its leases over; the final features equal a clean run.
//!
//! Needs `AWS_ENDPOINT_URL` and `RECSTREAM_PYTHON` (scripts/test sets both). Under
//! `CI=true` a missing service fails the test; otherwise it says loudly that it did not run.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use recstream_features::store::dynamodb::{DynamoFeatureStore, DynamoOptions};
use recstream_features::view::{ProductFeatures, UserFeatures};
use recstream_features::{EmbeddedStore, FeatureConfig, FeatureStore};
use recstream_ingest::aws::AwsConfig;
use recstream_ingest::source::kinesis::{LeaseConfig, LeaseCoordinator};

/// Rows of the bundled sample used here (keeps the emulator runs short).
const ROWS: usize = 4_000;

const SERVICES: &[&str] = &["AWS_ENDPOINT_URL", "RECSTREAM_PYTHON"];

/// One isolated AWS setup: its own stream, tables and bucket, and a config file for it.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    aws: AwsConfig,
    /// The first ROWS rows of the sample, as a CSV file.
    csv: PathBuf,
}

fn setup(tag: &str, shards: u32) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let name = unique(tag);
    let aws = AwsConfig {
        region: Some("us-east-1".into()),
        stream: name.clone(),
        shards,
        table_prefix: format!("{name}-"),
        bucket: name.clone(),
        redis_url: std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into()),
        lease_duration_ms: 3_000,
        max_attempts: 8,
        base_backoff_ms: 10,
        max_backoff_ms: 500,
        ..Default::default()
    };
    let config = dir.path().join("aws.toml");
    let text = format!(
        r#"mode = "aws"

[server]
listen = "127.0.0.1:0"

[aws]
region = "us-east-1"
stream = "{stream}"
shards = {shards}
table_prefix = "{prefix}"
bucket = "{bucket}"
redis_url = "{redis}"
lease_duration_ms = 3000
base_backoff_ms = 10
max_backoff_ms = 500

[kinesis.producer]
# moto loses records under concurrent PutRecords into one shard
max_in_flight = 1

[kinesis.consumer]
idle_poll_max_ms = 400
closed_probe_interval_ms = 0

[kinesis.lease]
renew_interval_ms = 500
sync_interval_ms = 500

[processor]
batch_size = 200
flush_interval_ms = 50
checkpoint_interval_ms = 300

[model]
reload_interval_ms = 0

[commerce]
data_dir = "{commerce}"
"#,
        stream = aws.stream,
        prefix = aws.table_prefix,
        bucket = aws.bucket,
        redis = aws.redis_url,
        commerce = dir.path().join("commerce").display(),
    );
    std::fs::write(&config, text).unwrap();
    let text = read_text(&sample());
    let head: Vec<&str> = text.lines().take(ROWS + 1).collect();
    let csv = dir.path().join("head.csv");
    std::fs::write(&csv, head.join("\n") + "\n").unwrap();
    Setup {
        dir,
        config,
        aws,
        csv,
    }
}

/// A processor process, killed when dropped (a failing test leaves nothing running).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn processor(config: &Path, log: &Path) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_recstream"))
            .args(["run", "--role", "process", "--config"])
            .arg(config)
            .env("RECSTREAM_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("start recstream run"),
    )
}

/// The embedded pipeline over the same rows: the reference.
async fn embedded_reference(s: &Setup) -> (Vec<UserFeatures>, EmbeddedStore) {
    let data = s.dir.path().join("embedded");
    let out = Command::new(env!("CARGO_BIN_EXE_recstream"))
        .args(["replay", "rees46", "--json", "--path"])
        .arg(&s.csv)
        .env("RECSTREAM__EMBEDDED__DATA_DIR", &data)
        .env("RECSTREAM_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = EmbeddedStore::open(data.join("features.redb"), FeatureConfig::default()).unwrap();
    let mut users = store.scan_users().await.unwrap();
    users.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    let users = users.iter().map(|u| (**u).clone()).collect();
    (users, store)
}

/// The DynamoDB feature store as a checker reads it: no cache, consistent reads, and
/// time enough for the emulator to answer a read of every product.
async fn dynamo(s: &Setup) -> DynamoFeatureStore {
    DynamoFeatureStore::from_env(&s.aws, FeatureConfig::default())
        .await
        .with_options(DynamoOptions {
            user_ttl: Duration::ZERO,
            catalog_ttl: Duration::ZERO,
            read_timeout: Duration::from_secs(60),
            consistent_reads: true,
            ..Default::default()
        })
}

async fn aws_users(store: &DynamoFeatureStore) -> Vec<UserFeatures> {
    let mut users = store.scan_users().await.unwrap_or_default();
    users.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    users.iter().map(|u| (**u).clone()).collect()
}

/// Product views agree: counts and buyers exactly, decayed popularity to 1e-9 (the sum
/// over shard partials adds the same terms in another order).
fn products_agree(want: &ProductFeatures, got: &ProductFeatures) -> Result<(), String> {
    let hl = FeatureConfig::default().trending_half_life_secs * 1000.0;
    let at = want.popularity.at.max(got.popularity.at);
    let (a, b) = (
        want.popularity.value_at(at, hl),
        got.popularity.value_at(at, hl),
    );
    if want.counts != got.counts
        || want.buyers != got.buyers
        || (a - b).abs() > 1e-9 * a.abs().max(1.0)
    {
        return Err(format!(
            "product {}: want {:?} buyers {} popularity {a}, got {:?} buyers {} popularity {b}",
            want.product_id, want.counts, want.buyers, got.counts, got.buyers
        ));
    }
    Ok(())
}

/// The longest any convergence wait may take, however steadily the processors move.
const CONVERGENCE_CAP: Duration = Duration::from_secs(600);

/// Waits until the AWS features equal the reference (users exactly, products as
/// [`products_agree`] says), or fails with the first difference when nothing has moved
/// for `stall` (neither the users in DynamoDB nor the first difference changed: the
/// processors are stuck, not slow) or after [`CONVERGENCE_CAP`]. A slow runner gets the
/// time it needs; a processor that stops making progress still fails the test.
async fn assert_features_converge(
    s: &Setup,
    want_users: &[UserFeatures],
    reference: &EmbeddedStore,
    stall: Duration,
    children: &mut [Proc],
) {
    let store = dynamo(s).await;
    let ids: Vec<String> = {
        let (_, products, _) = expected_from_rees46(&read_text(&s.csv));
        products.keys().cloned().collect()
    };
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let want_products = reference.products(&id_refs).await.unwrap();
    let started = Instant::now();
    let mut moved = Instant::now();
    let mut seen: Option<(usize, Option<String>)> = None;
    let mut last_problem;
    loop {
        let got = aws_users(&store).await;
        let users = got.len();
        last_problem = if got.len() != want_users.len() {
            Some(format!(
                "{} users in DynamoDB, {} expected",
                got.len(),
                want_users.len()
            ))
        } else {
            want_users
                .iter()
                .zip(&got)
                .find(|(w, g)| w != g)
                .map(|(w, g)| format!("user {} differs:\n want {w:?}\n got  {g:?}", w.user_id))
        };
        if last_problem.is_none() {
            let got_products = store.products(&id_refs).await.unwrap();
            last_problem =
                want_products
                    .iter()
                    .zip(&got_products)
                    .find_map(|(w, g)| match (w, g) {
                        (Some(w), Some(g)) => products_agree(w, g).err(),
                        (Some(w), None) => Some(format!("product {} missing", w.product_id)),
                        _ => None,
                    });
        }
        if last_problem.is_none() {
            return;
        }
        for c in children.iter_mut() {
            if let Some(status) = c.0.try_wait().unwrap() {
                panic!("a processor exited early ({status}); last difference: {last_problem:?}");
            }
        }
        let now = (users, last_problem.clone());
        if seen.as_ref() != Some(&now) {
            seen = Some(now);
            moved = Instant::now();
        }
        if moved.elapsed() > stall || started.elapsed() > CONVERGENCE_CAP {
            panic!(
                "features did not converge (nothing moved for {:?}, {:?} in all): {}",
                moved.elapsed(),
                started.elapsed(),
                last_problem.unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn python() -> String {
    std::env::var("RECSTREAM_PYTHON").unwrap()
}

/// Runs one processor over what is in the stream until the features in DynamoDB equal
/// the embedded run's, then stops it with SIGTERM.
async fn process_and_compare(s: &Setup) {
    let (want_users, reference) = embedded_reference(s).await;
    let mut child = processor(&s.config, &s.dir.path().join("processor.log"));
    assert_features_converge(
        s,
        &want_users,
        &reference,
        Duration::from_secs(120),
        std::slice::from_mut(&mut child),
    )
    .await;
    stop(child);
    // Stopping flushed and checkpointed; nothing moved.
    assert_features_converge(s, &want_users, &reference, Duration::from_secs(5), &mut []).await;
}

/// Reads `events/` of the bucket with pyarrow's own S3 filesystem and Hive partitioning.
fn read_archive_with_pyarrow(bucket: &str) -> serde_json::Value {
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let script = r#"
import json, sys
import pyarrow.dataset as ds
import pyarrow.fs as fs
endpoint, bucket = sys.argv[1], sys.argv[2]
scheme, host = endpoint.split("://", 1)
s3 = fs.S3FileSystem(endpoint_override=host, scheme=scheme, access_key="test",
                     secret_key="test", region="us-east-1")
d = ds.dataset(f"{bucket}/events", filesystem=s3, format="parquet", partitioning="hive")
t = d.to_table()
ids = t.column("event_id").to_pylist()
records = zip(t.column("shard").to_pylist(), t.column("sequence_number").to_pylist(),
              t.column("sub_sequence_number").to_pylist())
print(json.dumps({
    "rows": t.num_rows,
    "distinct_ids": len(set(ids)),
    "distinct_records": len(set(records)),
    "columns": {f.name: str(f.type) for f in t.schema},
    "types": sorted(set(t.column("type").to_pylist())),
}))
"#;
    let out = Command::new(python())
        .args(["-c", script, &endpoint, bucket])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pyarrow failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn stop(mut p: Proc) {
    // SIGTERM: the processor finishes its batch, checkpoints and releases its leases.
    let _ = Command::new("kill")
        .args(["-TERM", &p.0.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match p.0.try_wait().unwrap() {
            Some(status) => {
                assert!(
                    status.success(),
                    "the processor exited with {status} on SIGTERM"
                );
                return;
            }
            None if Instant::now() > deadline => {
                panic!("the processor did not stop within 20 s of SIGTERM");
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_pipeline_matches_the_embedded_run_and_pyarrow_reads_the_s3_archive() {
    if !services_available("kinesis_pipeline_matches_the_embedded_run", SERVICES) {
        return;
    }
    let s = setup("pipeline", 2);
    let first = String::from_utf8(cli(&["init"], &s.config).stdout).unwrap();
    assert!(first.contains("created"), "{first}");
    let again = String::from_utf8(cli(&["init"], &s.config).stdout).unwrap();
    assert!(again.contains("exists"), "init is idempotent: {again}");

    let put = cli(
        &[
            "replay",
            "rees46",
            "--to",
            "kinesis",
            "--json",
            "--path",
            s.csv.to_str().unwrap(),
        ],
        &s.config,
    );
    let put: serde_json::Value =
        serde_json::from_slice(put.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(put["sent"].as_u64().unwrap() as usize, ROWS, "{put}");

    process_and_compare(&s).await;

    let archive = read_archive_with_pyarrow(&s.aws.bucket);
    assert_eq!(
        archive["rows"].as_u64().unwrap() as usize,
        ROWS,
        "{archive}"
    );
    assert_eq!(
        archive["distinct_ids"], archive["rows"],
        "each event archived once"
    );
    let cols = &archive["columns"];
    assert_eq!(cols["price_amount"], "int64", "{cols}");
    assert_eq!(cols["ts"], "timestamp[ms, tz=UTC]", "{cols}");
    assert!(
        cols["impressions"]
            .as_str()
            .unwrap()
            .starts_with("list<element: string"),
        "{cols}"
    );
    assert!(
        cols.get("dt").is_some() && cols.get("hour").is_some(),
        "hive partitions: {cols}"
    );

    // Checkpoints are in the lease table, released on shutdown.
    let observer = LeaseCoordinator::from_env(
        &s.aws,
        &LeaseConfig {
            worker_id: Some("observer".into()),
            ..Default::default()
        },
    )
    .await;
    let leases = observer.leases().await.unwrap();
    assert_eq!(leases.len(), 2);
    for l in &leases {
        assert!(l.owner.is_none(), "released on SIGTERM: {l:?}");
        assert!(
            l.checkpoint.as_ref().is_some_and(|c| c.committed.is_some()),
            "{l:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kpl_aggregated_records_from_aws_kinesis_agg_give_the_same_features() {
    if !services_available(
        "kpl_aggregated_records_from_aws_kinesis_agg_give_the_same_features",
        SERVICES,
    ) {
        return;
    }
    let s = setup("kpl", 2);
    cli(&["init"], &s.config);
    // The events as JSON, grouped by user (the KPL aggregates per shard: records of one
    // user share a partition key and so a shard), each user's events in time order.
    let mut by_user: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let rows =
        recstream_ingest::datasets::load(recstream_ingest::datasets::Dataset::Rees46, &s.csv)
            .unwrap();
    for r in rows {
        let e = r.event.unwrap();
        by_user
            .entry(e.user_id.to_string())
            .or_default()
            .push(String::from_utf8(e.to_json()).unwrap());
    }
    let mut input = String::new();
    for (user, events) in &by_user {
        for data in events {
            input.push_str(&serde_json::json!({"pk": user, "data": data}).to_string());
            input.push('\n');
        }
    }
    let mut child = Command::new(python())
        .arg(root().join("scripts/kpl_put.py"))
        .args([
            "--stream",
            &s.aws.stream,
            "--per-aggregate",
            "20",
            "--flush-on-key-change",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kpl_put.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let puts: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let user_records: u64 = puts
        .iter()
        .map(|p| p["user_records"].as_u64().unwrap())
        .sum();
    assert_eq!(user_records as usize, ROWS);
    assert!(
        puts.len() < ROWS && puts.iter().any(|p| p["user_records"].as_u64().unwrap() > 1),
        "records were aggregated: {} Kinesis records",
        puts.len()
    );

    process_and_compare(&s).await;
    let archive = read_archive_with_pyarrow(&s.aws.bucket);
    assert_eq!(
        archive["rows"].as_u64().unwrap() as usize,
        ROWS,
        "{archive}"
    );
    assert_eq!(archive["distinct_ids"], archive["rows"]);
}

/// Puts rows `from..from + n` of the CSV (after its header) to Kinesis through
/// `recstream replay --to kinesis`, from a part file written under `dir`.
fn put_part(csv: &Path, dir: &Path, config: &Path, from: usize, n: usize) {
    let text = read_text(csv);
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let part: Vec<&str> = lines.skip(from).take(n).collect();
    let f = dir.join(format!("part-{from}.csv"));
    std::fs::write(&f, format!("{header}\n{}\n", part.join("\n"))).unwrap();
    cli(
        &[
            "replay",
            "rees46",
            "--to",
            "kinesis",
            "--path",
            f.to_str().unwrap(),
        ],
        config,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processors_share_four_shards_and_a_sigkill_loses_and_doubles_nothing() {
    if !services_available(
        "two_processors_share_four_shards_and_a_sigkill_loses_and_doubles_nothing",
        SERVICES,
    ) {
        return;
    }
    let s = setup("sigkill", 4);
    cli(&["init"], &s.config);
    let (want_users, reference) = embedded_reference(&s).await;

    // The first half of the events, two processors, then the rest while one dies.
    let half = ROWS / 2;
    put_part(&s.csv, s.dir.path(), &s.config, 0, half);
    let a = processor(&s.config, &s.dir.path().join("a.log"));
    let b = processor(&s.config, &s.dir.path().join("b.log"));

    // Wait until both hold leases (2 + 2) and have checkpointed something.
    let observer = LeaseCoordinator::from_env(
        &s.aws,
        &LeaseConfig {
            worker_id: Some("observer".into()),
            ..Default::default()
        },
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let leases = observer.leases().await.unwrap_or_default();
        let mut owners: BTreeMap<String, usize> = BTreeMap::new();
        for l in &leases {
            if let Some(o) = &l.owner {
                *owners.entry(o.clone()).or_default() += 1;
            }
        }
        let checkpointed = leases
            .iter()
            .filter(|l| l.checkpoint.as_ref().is_some_and(|c| c.committed.is_some()))
            .count();
        if owners.len() == 2 && owners.values().all(|n| *n == 2) && checkpointed == 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no 2 + 2 split with checkpoints: {leases:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The rest arrives; A is SIGKILLed while it processes it.
    let rest = std::thread::spawn({
        let (csv, config, dir) = (s.csv.clone(), s.config.clone(), s.dir.path().to_path_buf());
        move || put_part(&csv, &dir, &config, half, usize::MAX)
    });
    std::thread::sleep(Duration::from_millis(700));
    let mut a = a;
    a.0.kill().unwrap(); // SIGKILL: no shutdown hook runs, the leases stay taken
    a.0.wait().unwrap();
    rest.join().unwrap();

    let mut survivors = [b];
    assert_features_converge(
        &s,
        &want_users,
        &reference,
        Duration::from_secs(150),
        &mut survivors,
    )
    .await;
    let [b] = survivors;
    let leases = observer.leases().await.unwrap();
    let owners: std::collections::BTreeSet<Option<String>> =
        leases.iter().map(|l| l.owner.clone()).collect();
    assert_eq!(
        owners.len(),
        1,
        "the survivor holds every shard: {leases:?}"
    );
    stop(b);
    let archive = read_archive_with_pyarrow(&s.aws.bucket);
    assert_eq!(
        archive["rows"].as_u64().unwrap() as usize,
        ROWS,
        "{archive}"
    );
    // (The two files put above number their rows, and so their event ids, from 1 each:
    // a record is identified by its shard and sequence number.)
    assert_eq!(
        archive["distinct_records"], archive["rows"],
        "each record archived once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_catalog_check_the_kinesis_processor_writes_product_events_and_dead_letters_products_the_dynamodb_catalog_lacks()
 {
    use recstream_commerce::catalog::SeedProduct;
    use recstream_commerce::{Catalog, DynamoStore, StoreCatalog};
    use recstream_ingest::archive::dead_letter::read_dead_letters;
    use recstream_ingest::archive::read_archive;
    use recstream_ingest::datasets::{self, Dataset};
    use recstream_ingest::object_store::S3ObjectStore;
    use std::collections::BTreeSet;
    use std::sync::Arc;

    if !services_available("kinesis_processor_catalog_check", SERVICES) {
        return;
    }
    let s = setup("catalog", 1);
    let text = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("[processor]\n", "[processor]\ncatalog_check = true\n");
    std::fs::write(&s.config, text).unwrap();
    cli(&["init"], &s.config);

    // The shop's catalog, in its DynamoDB table: every other product of the rows.
    let events: Vec<recstream_ingest::Event> = datasets::load(Dataset::Rees46, &s.csv)
        .unwrap()
        .into_iter()
        .filter_map(|r| r.event.ok())
        .collect();
    assert_eq!(events.len(), ROWS);
    let products: BTreeSet<&str> = events
        .iter()
        .filter_map(|e| e.product_id.as_deref())
        .collect();
    let sold: BTreeSet<&str> = products.iter().copied().step_by(2).collect();
    let store = Arc::new(DynamoStore::from_env(&s.aws).await);
    store.create_table_if_missing().await.unwrap();
    let seed: Vec<SeedProduct> = sold
        .iter()
        .map(|id| SeedProduct {
            id: id.to_string(),
            name: format!("product {id}"),
            category: None,
            price: recstream_ingest::Money::new(1_000, "USD"),
            stock: 5,
            active: true,
        })
        .collect();
    let catalog = StoreCatalog::new(store);
    assert_eq!(catalog.seed(&seed).await.unwrap(), sold.len());

    // Producers write to the stream directly (no collector in between).
    let put = cli(
        &[
            "replay",
            "rees46",
            "--to",
            "kinesis",
            "--json",
            "--path",
            s.csv.to_str().unwrap(),
        ],
        &s.config,
    );
    assert!(put.status.success());
    // Then the back office adds one of the products the shop lacked, and a shopper views
    // it: the entry reaches the catalog, and the view counts.
    let added = *products.difference(&sold).next().unwrap();
    let jsonl = s.dir.path().join("backoffice.jsonl");
    let lines = [
        serde_json::json!({"event_id": "entry-1", "ts": "2019-10-01T06:00:00Z",
            "user_id": "backoffice", "type": "product", "product_id": added,
            "price": {"amount": 4_500, "currency": "USD"},
            "product": {"title": "Added from the stream", "stock": 7}}),
        serde_json::json!({"event_id": "view-1", "ts": "2019-10-01T06:00:01Z",
            "user_id": "newcomer", "type": "view", "product_id": added}),
    ];
    std::fs::write(
        &jsonl,
        lines
            .iter()
            .map(|l| l.to_string() + "\n")
            .collect::<String>(),
    )
    .unwrap();
    let put = cli(
        &[
            "replay",
            "events",
            "--to",
            "kinesis",
            "--json",
            "--path",
            jsonl.to_str().unwrap(),
        ],
        &s.config,
    );
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );

    let objects = S3ObjectStore::from_env(&s.aws).await;
    let child = processor(&s.config, &s.dir.path().join("processor.log"));
    let deadline = Instant::now() + Duration::from_secs(120);
    let (archived, dead) = loop {
        let archived = read_archive(&objects, "events/").await.unwrap_or_default();
        let dead = read_dead_letters(&objects, "dead-letter/")
            .await
            .unwrap_or_default();
        if archived.len() + dead.len() >= ROWS + 2 {
            break (archived, dead);
        }
        assert!(
            Instant::now() < deadline,
            "processed {} + {} of {} records in 120 s",
            archived.len(),
            dead.len(),
            ROWS + 2
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    stop(child);

    let want_dead = events
        .iter()
        .filter(|e| !sold.contains(e.product_id.as_deref().unwrap()))
        .count();
    assert!(want_dead > 0 && want_dead < ROWS);
    assert_eq!(
        (archived.len(), dead.len()),
        (ROWS - want_dead + 2, want_dead)
    );
    assert!(archived.iter().all(|r| {
        let p = r.event.product_id.as_deref().unwrap();
        sold.contains(p) || p == added
    }));
    let entry = catalog
        .product(added)
        .await
        .unwrap()
        .expect("added from the stream");
    assert_eq!(
        (entry.product.name.as_str(), entry.available),
        ("Added from the stream", 7)
    );
    for d in &dead {
        assert_eq!(d.kind, "invalid_product_id", "{d:?}");
        assert!(d.reason.ends_with("is not in the catalog"), "{d:?}");
    }
    // The features hold the shop's products only.
    let features = dynamo(&s).await;
    let unsold: Vec<&str> = products
        .difference(&sold)
        .copied()
        .filter(|p| *p != added)
        .take(50)
        .collect();
    assert!(
        features
            .products(&unsold)
            .await
            .unwrap()
            .iter()
            .all(Option::is_none)
    );
    let viewed = features.products(&[added]).await.unwrap();
    assert_eq!(viewed[0].as_ref().map(|p| p.counts.view), Some(1));
}
