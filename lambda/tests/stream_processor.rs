//! The stream-processor function against the AWS emulator (moto: DynamoDB and S3
//! protocols), fed real Kinesis event source mapping payloads (the shape of
//! aws_lambda_events' `example-kinesis-event.json`, deserialised by the same type the
//! function's runtime uses):
//!
//! - the same batch delivered twice (and an overlapping redelivery) gives features and an
//!   archive equal to a clean run of the workers' path (`ShardProcessor::run`);
//! - a batch with poison records succeeds (no `batchItemFailures`), the poison goes to the
//!   dead letters with its reason, features and archive equal a clean run without it;
//! - a KPL-aggregated record is expanded into its user records;
//! - an infrastructure failure (the bucket is missing) reports the first uncommitted record,
//!   and the retry after the fix converges to the clean run.
//!
//! Needs `AWS_ENDPOINT_URL` (scripts/test starts moto and sets it). Under `CI=true` a
//! missing emulator fails the test; otherwise the test says loudly that it did not run.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use aws_lambda_events::event::kinesis::KinesisEvent;
use aws_lambda_events::event::streams::KinesisEventResponse;
use base64::Engine;
use bytes::Bytes;
use recstream_features::store::dynamodb::DynamoFeatureStore;
use recstream_features::view::{TopList, UserFeatures};
use recstream_features::{FeatureConfig, FeatureStore};
use recstream_ingest::archive::dead_letter::read_dead_letters;
use recstream_ingest::archive::read_archive;
use recstream_ingest::aws::{AwsConfig, sdk_config};
use recstream_ingest::object_store::s3::S3ObjectStore;
use recstream_ingest::source::kinesis::kpl;
use recstream_ingest::{IngestError, ObjectStore, RawRecord, SeqNo, ShardId, Source, Timestamp};
use recstream_lambda::checkpoint::ConditionalCheckpoints;
use recstream_lambda::stream::StreamProcessor;
use recstream_pipeline::{Pipeline, ProcessorConfig, ShardProcessor, Sinks, resume};
use serde_json::json;
use tokio::sync::watch;

const SHARD: &str = "shardId-000000000000";
const ARN: &str = "arn:aws:kinesis:us-east-1:123456789012:stream/clickstream";

fn services_available(test: &str) -> bool {
    if std::env::var("AWS_ENDPOINT_URL").is_ok() {
        return true;
    }
    let msg = format!(
        "{test}: AWS_ENDPOINT_URL is not set, so this emulator test cannot run; run it \
         with `scripts/test`, which starts moto_server and sets it"
    );
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{msg}");
    }
    eprintln!("\n!!!!!!!!!! NOT RUN: {msg}\n");
    false
}

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("rl-{tag}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

/// One isolated set of stores (tables under its own prefix, its own bucket).
struct Stores {
    aws: AwsConfig,
    features: Arc<DynamoFeatureStore>,
    objects: Arc<S3ObjectStore>,
    sinks: Sinks,
}

async fn stores(tag: &str, create_bucket: bool) -> Stores {
    let name = unique(tag);
    let aws = AwsConfig {
        region: Some("us-east-1".into()),
        table_prefix: format!("{name}-"),
        bucket: name,
        max_attempts: 3,
        base_backoff_ms: 10,
        max_backoff_ms: 200,
        ..Default::default()
    };
    let sdk = sdk_config(aws.region.as_deref()).await;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let features = Arc::new(DynamoFeatureStore::with_client(
        dynamo.clone(),
        &aws,
        FeatureConfig::default(),
    ));
    features.create_tables_if_missing().await.unwrap();
    let checkpoints = Arc::new(ConditionalCheckpoints::new(dynamo, &aws));
    checkpoints.create_table_if_missing().await.unwrap();
    let objects = Arc::new(S3ObjectStore::new(&sdk, &aws));
    if create_bucket {
        objects.create_bucket_if_missing().await.unwrap();
    }
    let sinks = Sinks {
        features: features.clone(),
        state: features.clone(),
        checkpoints,
        objects: objects.clone(),
        catalog: None,
    };
    Stores {
        aws,
        features,
        objects,
        sinks,
    }
}

fn processor_config() -> ProcessorConfig {
    ProcessorConfig::default()
}

fn handler(s: &Stores) -> StreamProcessor {
    StreamProcessor::new(
        Pipeline::new(
            s.sinks.clone(),
            FeatureConfig::default(),
            processor_config(),
        ),
        None,
    )
}

/// A Kinesis-style sequence number (56 digits, increasing with `i`).
fn seq(i: usize) -> String {
    format!("4956816737333333333333333333333333333333333333333{i:07}")
}

const T0: i64 = 1_569_888_000_000; // 2019-10-01T00:00:00Z

/// Event `i`: 7 users, 11 products in 3 categories, views, carts and purchases.
fn event(i: usize) -> serde_json::Value {
    let kind = match i % 7 {
        3 => "add_to_cart",
        6 => "purchase",
        _ => "view",
    };
    let category = ["electronics.phone", "home.kitchen", "apparel.shoes"][i % 3];
    json!({
        "event_id": format!("e{i}"),
        "ts": T0 + i as i64 * 20_000,
        "user_id": format!("u{}", i % 7),
        "session_id": format!("s{}", i % 7),
        "type": kind,
        "product_id": format!("p{}", (i * 5) % 11),
        "category": category,
        "price": {"amount": 1000 + (i % 11) as i64 * 250, "currency": "USD"},
        "quantity": 1,
        "campaign": "kept-in-raw"
    })
}

/// When record `i` reached the stream: an hour after T0, after every event of these tests
/// happened (the processor dead-letters events dated more than the allowed skew after
/// their arrival; a KPL aggregate carries events of other indices).
fn arrival_of(i: usize) -> i64 {
    T0 + 3_600_000 + i as i64
}

fn data_of(i: usize) -> Vec<u8> {
    serde_json::to_vec(&event(i)).unwrap()
}

/// One record of an event source mapping payload.
fn kinesis_record(
    seq: &str,
    partition_key: &str,
    data: &[u8],
    arrival_ms: i64,
) -> serde_json::Value {
    json!({
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": partition_key,
            "sequenceNumber": seq,
            "data": base64::engine::general_purpose::STANDARD.encode(data),
            "approximateArrivalTimestamp": arrival_ms as f64 / 1000.0
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": format!("{SHARD}:{seq}"),
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": "arn:aws:iam::123456789012:role/stream-processor",
        "awsRegion": "us-east-1",
        "eventSourceARN": ARN
    })
}

/// A record to deliver: (sequence number index, payload bytes).
type Rec = (usize, Vec<u8>);

fn payload(records: &[Rec]) -> KinesisEvent {
    let records: Vec<_> = records
        .iter()
        .map(|(i, data)| kinesis_record(&seq(*i), "u", data, arrival_of(*i)))
        .collect();
    serde_json::from_value(json!({ "Records": records })).expect("a Kinesis event payload")
}

fn clean_records(records: &[Rec]) -> Vec<RawRecord> {
    records
        .iter()
        .flat_map(|(i, data)| {
            let data = Bytes::from(data.clone());
            let raw = |sub_seq, data| RawRecord {
                shard: ShardId::new(SHARD),
                seq: SeqNo::parse(&seq(*i)).unwrap(),
                sub_seq,
                partition_key: "u".into(),
                arrival: Timestamp(arrival_of(*i)),
                data,
                rejected: None,
            };
            match kpl::deaggregate(&data).unwrap() {
                None => vec![raw(0, data)],
                Some(users) => users.into_iter().map(|u| raw(u.sub_seq, u.data)).collect(),
            }
        })
        .collect()
}

/// The workers' path: a source that yields `records` once, through `ShardProcessor::run`.
struct Once(ShardId, Option<Vec<RawRecord>>);

#[async_trait]
impl Source for Once {
    fn shard(&self) -> &ShardId {
        &self.0
    }
    async fn next_batch(&mut self, _max: usize) -> Result<Option<Vec<RawRecord>>, IngestError> {
        Ok(self.1.take())
    }
}

async fn clean_run(s: &Stores, records: Vec<RawRecord>) {
    let shard = ShardId::new(SHARD);
    let r = resume(&s.sinks, &shard, &FeatureConfig::default())
        .await
        .unwrap();
    let p = ShardProcessor::new(
        Box::new(Once(shard.clone(), Some(records))),
        r,
        s.sinks.clone(),
        processor_config(),
    );
    let (_tx, rx) = watch::channel(false);
    p.run(rx).await.unwrap();
}

/// Everything a reader sees: features per user, product and top list; archive object
/// names and rows; dead letters.
#[derive(Debug, PartialEq)]
struct Observed {
    users: Vec<UserFeatures>,
    products: Vec<String>,
    trending: TopList,
    categories: Vec<Option<TopList>>,
    archive_keys: Vec<String>,
    archive_rows: Vec<(String, u32, String, Vec<u8>)>,
    dead_letters: Vec<(String, String)>,
}

async fn observe(s: &Stores) -> Observed {
    let mut users: Vec<UserFeatures> = s
        .features
        .scan_users()
        .await
        .unwrap()
        .iter()
        .map(|u| (**u).clone())
        .collect();
    users.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    let ids: Vec<String> = (0..11).map(|p| format!("p{p}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let products = s
        .features
        .products(&refs)
        .await
        .unwrap()
        .iter()
        .map(|p| format!("{p:?}"))
        .collect();
    let trending = (*s.features.trending().await.unwrap()).clone();
    let mut categories = Vec::new();
    for c in ["electronics.phone", "home.kitchen", "apparel.shoes"] {
        categories.push(
            s.features
                .category_top(c)
                .await
                .unwrap()
                .map(|t| (*t).clone()),
        );
    }
    let archive_keys: Vec<String> = s
        .objects
        .list("events/")
        .await
        .unwrap()
        .into_iter()
        .collect();
    let archive_rows = read_archive(s.objects.as_ref(), "events/")
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                r.seq.to_string(),
                r.sub_seq,
                r.event.event_id.to_string(),
                r.raw.to_vec(),
            )
        })
        .collect();
    let dead_letters = read_dead_letters(s.objects.as_ref(), "dead-letter/")
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.sequence_number.to_string(), d.kind.to_string()))
        .collect();
    Observed {
        users,
        products,
        trending,
        categories,
        archive_keys,
        archive_rows,
        dead_letters,
    }
}

fn no_failures(r: &KinesisEventResponse) {
    assert!(
        r.batch_item_failures.is_empty(),
        "unexpected batchItemFailures: {:?}",
        r.batch_item_failures
    );
}

fn plain(range: std::ops::Range<usize>) -> Vec<Rec> {
    range.map(|i| (i, data_of(i))).collect()
}

#[tokio::test]
async fn a_redelivered_batch_is_applied_once() {
    if !services_available("a_redelivered_batch_is_applied_once") {
        return;
    }
    let (lambda, clean) = (
        stores("redeliver", true).await,
        stores("redeliver-clean", true).await,
    );
    let all = plain(0..60);
    let h = handler(&lambda);
    for batch in [
        &all[0..25],
        &all[0..25], // the same batch again (a retry after a timeout)
        &all[25..60],
        &all[10..40], // an overlapping redelivery (a bisected retry)
        &all[25..60],
    ] {
        no_failures(&h.handle(payload(batch)).await.unwrap());
    }
    clean_run(&clean, clean_records(&all)).await;
    let (got, want) = (observe(&lambda).await, observe(&clean).await);
    assert_eq!(got.archive_rows.len(), 60, "each event archived once");
    assert!(!got.users.is_empty());
    // The clean run rolled once; the function rolls once per committed batch. Rows and
    // features are equal; object names differ only by where rolls happened.
    assert_eq!(got.users, want.users);
    assert_eq!(got.products, want.products);
    assert_eq!(got.trending, want.trending);
    assert_eq!(got.categories, want.categories);
    let mut rows = got.archive_rows.clone();
    rows.sort();
    let mut want_rows = want.archive_rows.clone();
    want_rows.sort();
    assert_eq!(rows, want_rows);
    assert_eq!(
        got.archive_keys.len(),
        2,
        "one object per committed batch: {:?}",
        got.archive_keys
    );
}

#[tokio::test]
async fn a_poison_record_goes_to_the_dead_letters_and_the_batch_succeeds() {
    if !services_available("a_poison_record_goes_to_the_dead_letters_and_the_batch_succeeds") {
        return;
    }
    let (lambda, clean) = (
        stores("poison", true).await,
        stores("poison-clean", true).await,
    );
    let mut batch = plain(0..30);
    batch[7].1 = b"{\"event_id\": \"x\", \"user_id\": ".to_vec(); // truncated JSON
    batch[15].1 = serde_json::to_vec(&json!({"event_id": "y", "ts": T0, "type": "view"})).unwrap(); // no user
    batch[22].1 = vec![b'{'; 70_000]; // over the 64 KiB record limit
    let h = handler(&lambda);
    no_failures(&h.handle(payload(&batch)).await.unwrap());
    // Delivered again (Lambda retried for an unrelated reason): still applied once.
    no_failures(&h.handle(payload(&batch)).await.unwrap());
    let good: Vec<Rec> = batch
        .iter()
        .filter(|(i, _)| ![7, 15, 22].contains(i))
        .cloned()
        .collect();
    clean_run(&clean, clean_records(&good)).await;
    let (got, want) = (observe(&lambda).await, observe(&clean).await);
    assert_eq!(got.users, want.users);
    assert_eq!(got.products, want.products);
    assert_eq!(got.trending, want.trending);
    assert_eq!(got.categories, want.categories);
    assert_eq!(got.archive_rows, want.archive_rows);
    assert_eq!(
        got.archive_keys, want.archive_keys,
        "first and last records are good: same names"
    );
    let dead: BTreeSet<String> = got.dead_letters.iter().map(|(s, _)| s.clone()).collect();
    assert_eq!(dead, [seq(7), seq(15), seq(22)].into_iter().collect());
    assert_eq!(
        got.dead_letters.len(),
        3,
        "each poison record dead-lettered once"
    );
    assert!(want.dead_letters.is_empty());
}

#[tokio::test]
async fn a_kpl_aggregated_record_is_expanded() {
    if !services_available("a_kpl_aggregated_record_is_expanded") {
        return;
    }
    let (lambda, clean) = (stores("kpl", true).await, stores("kpl-clean", true).await);
    let users: Vec<(String, Vec<u8>)> = (100..112)
        .map(|i| (format!("u{}", i % 7), data_of(i)))
        .collect();
    let agg = kpl::aggregate(
        users
            .iter()
            .map(|(pk, d)| (pk.as_str(), None, d.as_slice())),
    );
    let mut batch = plain(0..5);
    batch.push((5, agg.to_vec()));
    batch.extend(plain(6..10));
    let h = handler(&lambda);
    no_failures(&h.handle(payload(&batch)).await.unwrap());
    clean_run(&clean, clean_records(&batch)).await;
    let (got, want) = (observe(&lambda).await, observe(&clean).await);
    assert_eq!(
        got.archive_rows.len(),
        9 + 12,
        "the aggregate's 12 user records archived"
    );
    let subs: Vec<u32> = got
        .archive_rows
        .iter()
        .filter(|r| r.0 == seq(5))
        .map(|r| r.1)
        .collect();
    assert_eq!(subs, (0..12).collect::<Vec<u32>>());
    assert_eq!(got, want);
}

#[tokio::test]
async fn an_infrastructure_failure_reports_the_first_uncommitted_record() {
    if !services_available("an_infrastructure_failure_reports_the_first_uncommitted_record") {
        return;
    }
    // The bucket does not exist yet: the archive roll fails, nothing is committed.
    let (lambda, clean) = (
        stores("fail", false).await,
        stores("fail-clean", true).await,
    );
    let all = plain(0..20);
    let h = handler(&lambda);
    let r = h.handle(payload(&all)).await.unwrap();
    let failed: Vec<_> = r
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    assert_eq!(failed, vec![Some(seq(0))]);
    // Fixed; Lambda retries from the reported record.
    lambda.objects.create_bucket_if_missing().await.unwrap();
    no_failures(&h.handle(payload(&all)).await.unwrap());
    clean_run(&clean, clean_records(&all)).await;
    let (got, want) = (observe(&lambda).await, observe(&clean).await);
    assert_eq!(got, want);
    let _ = &lambda.aws;
}

/// Every feedback row the join wrote, in object order.
async fn feedback_rows(s: &Stores) -> Vec<recstream_ingest::feedback::FeedbackRow> {
    let mut rows = Vec::new();
    for key in s
        .objects
        .list(recstream_ingest::feedback::FEEDBACK_PREFIX)
        .await
        .unwrap()
    {
        let bytes = s.objects.get(&key).await.unwrap().unwrap();
        rows.extend(recstream_ingest::feedback::decode_feedback(&bytes).unwrap());
    }
    rows
}

#[tokio::test]
async fn served_lists_and_the_clicks_naming_them_are_joined_once() {
    if !services_available("served_lists_and_the_clicks_naming_them_are_joined_once") {
        return;
    }
    let (lambda, clean) = (
        stores("served", true).await,
        stores("served-clean", true).await,
    );
    // u3's list (index 20), other traffic, then u3's cart of its third item (index 25).
    let served = json!({
        "event_id": "r-20", "ts": T0 + 20 * 20_000, "user_id": "u3", "type": "recommendation",
        "recommendation_id": "r-20", "strategy": "personalized", "model_version": "v9",
        "items": [
            {"product_id": "p1", "position": 1, "score": 0.9, "features": [1.0, 2.0]},
            {"product_id": "p2", "position": 2, "score": 0.8, "features": [3.0, 4.0]},
            {"product_id": "p3", "position": 3, "score": 0.7, "features": [5.0, 6.0]}
        ]
    });
    let cart = json!({
        "event_id": "c-25", "ts": T0 + 25 * 20_000, "user_id": "u3", "type": "add_to_cart",
        "product_id": "p3", "category": "home.kitchen", "quantity": 1,
        "recommendation_id": "r-20"
    });
    let mut all = plain(0..20);
    all.push((20, serde_json::to_vec(&served).unwrap()));
    all.extend(plain(21..25));
    all.push((25, serde_json::to_vec(&cart).unwrap()));
    all.extend(plain(26..30));
    let h = handler(&lambda);
    // The list and the cart in different invocations (the list waits in the snapshot),
    // the second batch delivered twice.
    for batch in [&all[0..22], &all[22..30], &all[22..30]] {
        no_failures(&h.handle(payload(batch)).await.unwrap());
    }
    clean_run(&clean, clean_records(&all)).await;
    let (got, want) = (feedback_rows(&lambda).await, feedback_rows(&clean).await);
    let labels: Vec<(&str, bool)> = got
        .iter()
        .map(|r| (r.product_id.as_str(), r.engaged))
        .collect();
    assert_eq!(labels, [("p1", false), ("p2", false), ("p3", true)]);
    assert!(got.iter().all(|r| r.event_type == "add_to_cart"));
    assert_eq!(got, want, "the same rows as the workers' clean run, once");
    // The list is archived, typed, once; features equal the clean run.
    let (o_got, o_want) = (observe(&lambda).await, observe(&clean).await);
    assert_eq!(o_got.users, o_want.users);
    assert_eq!(o_got.archive_rows.len(), 30);
    let archived = read_archive(lambda.objects.as_ref(), "events/")
        .await
        .unwrap();
    let list = archived
        .iter()
        .find(|r| r.event.event_id == "r-20")
        .unwrap();
    assert_eq!(list.event.items.len(), 3);
    assert_eq!(list.event.items[2].features, vec![5.0, 6.0]);
    assert_eq!(list.event.model_version.as_deref(), Some("v9"));
}
