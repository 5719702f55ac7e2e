//! The feature store conformance suite run against both implementations: the embedded
//! redb store and DynamoDB (on the AWS emulator at `AWS_ENDPOINT_URL`, as `scripts/test`
//! starts it), plus the DynamoDB write path under injected throttling and
//! UnprocessedItems (the emulator never produces either). Under `CI=true` a missing
//! emulator fails the tests; elsewhere they are skipped with a loud message.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use recstream_features::store::conformance::{run_feature_store_suite, run_state_store_suite};
use recstream_features::store::dynamodb::sdk::config::http::HttpResponse;
use recstream_features::store::dynamodb::sdk::error::{ErrorMetadata, SdkError};
use recstream_features::store::dynamodb::sdk::operation::batch_write_item::{
    BatchWriteItemError, BatchWriteItemOutput,
};
use recstream_features::store::dynamodb::sdk::types::WriteRequest;
use recstream_features::store::dynamodb::{BatchWriteApi, DynamoFeatureStore, DynamoOptions, sdk};
use recstream_features::view::ProductFeatures;
use recstream_features::{
    EmbeddedStore, EventCounts, FeatureConfig, FeatureStore, FlushBatch, TopList, UserFeatures,
};
use recstream_ingest::ShardId;
use recstream_ingest::aws::{AwsConfig, sdk_config};

/// `AWS_ENDPOINT_URL` when set and reachable; `None` (after a loud message) outside CI.
fn aws_endpoint() -> Option<String> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let problem = match std::env::var("AWS_ENDPOINT_URL") {
        Ok(url) if reachable(&url) => return Some(url),
        Ok(url) => format!("the AWS emulator at AWS_ENDPOINT_URL={url} is not answering"),
        Err(_) => "AWS_ENDPOINT_URL is not set".to_string(),
    };
    let msg = format!(
        "{problem}: run the tests through `scripts/test`, which starts moto_server and sets it"
    );
    if ci {
        panic!("{msg}");
    }
    eprintln!("\n!!!!!!!! SKIPPED (not CI): {msg} !!!!!!!!\n");
    None
}

fn reachable(url: &str) -> bool {
    use std::net::ToSocketAddrs;
    let host_port = url
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    host_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
}

fn unique_prefix(what: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "conf-{what}-{}-{}-",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

fn aws(prefix: &str, attempts: u32) -> AwsConfig {
    AwsConfig {
        table_prefix: prefix.into(),
        max_attempts: attempts,
        base_backoff_ms: 5,
        max_backoff_ms: 20,
        ..Default::default()
    }
}

async fn dynamo(prefix: &str, attempts: u32, opts: DynamoOptions) -> DynamoFeatureStore {
    let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into());
    let sdk = sdk_config(Some(&region)).await;
    DynamoFeatureStore::new(&sdk, &aws(prefix, attempts), FeatureConfig::default())
        .with_options(opts)
}

fn test_options() -> DynamoOptions {
    DynamoOptions {
        consistent_reads: true,
        read_timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

#[tokio::test]
async fn embedded_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = FeatureConfig::default();
    let store = EmbeddedStore::open(dir.path().join("features.redb"), cfg.clone()).unwrap();
    run_feature_store_suite(&store, &cfg).await;
    run_state_store_suite(&store).await;
}

#[tokio::test]
async fn dynamo_store_conforms() {
    if aws_endpoint().is_none() {
        return;
    }
    let prefix = unique_prefix("fs");
    let cfg = FeatureConfig::default();
    // Small scan pages, so the suite's scan crosses several pages.
    let store = dynamo(
        &prefix,
        4,
        DynamoOptions {
            scan_page_limit: Some(7),
            ..test_options()
        },
    )
    .await;
    store
        .create_tables_if_missing()
        .await
        .expect("create tables");
    store
        .create_tables_if_missing()
        .await
        .expect("create tables is idempotent");
    run_feature_store_suite(&store, &cfg).await;
    run_state_store_suite(&store).await;

    // A second process (fresh caches) reads the same merged values, by BatchGetItem and
    // by the per-product Query path alike.
    let ids = ["p1", "p2", "p3", "missing"];
    let written = store.products(&ids).await.unwrap();
    for max_shards in [16, 0] {
        let reader = dynamo(
            &prefix,
            4,
            DynamoOptions {
                batch_get_max_shards: max_shards,
                ..test_options()
            },
        )
        .await;
        assert_eq!(
            reader.products(&ids).await.unwrap(),
            written,
            "batch_get_max_shards = {max_shards}"
        );
        assert_eq!(
            reader.trending().await.unwrap(),
            store.trending().await.unwrap()
        );
        assert_eq!(
            reader.category_top("c1").await.unwrap(),
            store.category_top("c1").await.unwrap()
        );
        assert_eq!(
            reader.user("alice").await.unwrap(),
            store.user("alice").await.unwrap()
        );
    }
}

#[tokio::test]
async fn dynamo_tables_with_another_key_schema_are_refused() {
    if aws_endpoint().is_none() {
        return;
    }
    let prefix = unique_prefix("schema");
    let store = dynamo(&prefix, 2, test_options()).await;
    // A `users` table keyed by something else than user_id.
    store
        .client()
        .create_table()
        .table_name(format!("{prefix}users"))
        .billing_mode(sdk::types::BillingMode::PayPerRequest)
        .attribute_definitions(
            sdk::types::AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(sdk::types::ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            sdk::types::KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(sdk::types::KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let err = store.create_tables_if_missing().await.unwrap_err();
    assert!(err.to_string().contains("key schema"), "{err}");
}

/// Wraps the real client: the first `throttle` calls fail with throttling; the next
/// `partial` calls send only the first request of the chunk to DynamoDB and hand the
/// rest back as UnprocessedItems, exactly as DynamoDB does under load.
struct Flaky {
    inner: sdk::Client,
    throttle: usize,
    partial: usize,
    calls: AtomicUsize,
    handed_back: AtomicUsize,
}

#[async_trait]
impl BatchWriteApi for Flaky {
    async fn batch_write_item(
        &self,
        mut request_items: HashMap<String, Vec<WriteRequest>>,
    ) -> Result<BatchWriteItemOutput, SdkError<BatchWriteItemError, HttpResponse>> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        if call < self.throttle {
            let meta = ErrorMetadata::builder()
                .code("ProvisionedThroughputExceededException")
                .message("injected")
                .build();
            return Err(SdkError::service_error(
                BatchWriteItemError::generic(meta),
                HttpResponse::new(400u16.try_into().unwrap(), "".into()),
            ));
        }
        if call >= self.throttle + self.partial {
            return BatchWriteApi::batch_write_item(&self.inner, request_items).await;
        }
        let table = request_items.keys().next().cloned().expect("a table");
        let first = request_items.get_mut(&table).unwrap().remove(0);
        request_items.retain(|_, reqs| !reqs.is_empty());
        let left: usize = request_items.values().map(Vec::len).sum();
        self.handed_back.fetch_add(left, Ordering::SeqCst);
        let out =
            BatchWriteApi::batch_write_item(&self.inner, HashMap::from([(table, vec![first])]))
                .await?;
        assert!(
            out.unprocessed_items().is_none_or(|u| u.is_empty()),
            "the emulator never hands items back"
        );
        Ok(BatchWriteItemOutput::builder()
            .set_unprocessed_items(Some(request_items))
            .build())
    }
}

fn batch(users: usize, tag: u64) -> FlushBatch {
    FlushBatch {
        users: (0..users)
            .map(|i| UserFeatures {
                user_id: format!("user-{i:03}"),
                counts: EventCounts {
                    view: tag + i as u64,
                    ..Default::default()
                },
                last_ts: 1_000 + i as i64,
                ..Default::default()
            })
            .collect(),
        products: vec![ProductFeatures {
            product_id: "p1".into(),
            buyers: tag,
            ..Default::default()
        }],
        trending: TopList {
            at: 10,
            items: vec![("p1".into(), tag as f64)],
        },
        categories: Vec::new(),
        watermark: 10,
    }
}

#[tokio::test]
async fn dynamo_resends_unprocessed_items_and_rides_out_throttling() {
    if aws_endpoint().is_none() {
        return;
    }
    let prefix = unique_prefix("flaky");
    let plain = dynamo(&prefix, 20, test_options()).await;
    plain.create_tables_if_missing().await.unwrap();
    let flaky = Arc::new(Flaky {
        inner: plain.client().clone(),
        throttle: 2,
        partial: 6,
        calls: AtomicUsize::new(0),
        handed_back: AtomicUsize::new(0),
    });
    let store = dynamo(
        &prefix,
        20,
        DynamoOptions {
            write_concurrency: 1,
            ..test_options()
        },
    )
    .await
    .with_batch_writer(flaky.clone());
    let b = batch(40, 5);
    store
        .write(&ShardId::new("shard-0"), &b)
        .await
        .expect("write rides out the faults");
    assert!(
        flaky.handed_back.load(Ordering::SeqCst) > 0,
        "UnprocessedItems were injected"
    );
    assert!(
        flaky.calls.load(Ordering::SeqCst) >= 2 + 6 + 2,
        "{:?}",
        flaky.calls
    );

    // Everything arrived, read by a store that did not write it.
    let users = plain.scan_users().await.unwrap();
    assert_eq!(users.len(), 40);
    for (got, want) in users.iter().zip(&b.users) {
        assert_eq!(&**got, want);
    }
    assert_eq!(
        plain.products(&["p1"]).await.unwrap()[0]
            .as_ref()
            .unwrap()
            .buyers,
        5
    );

    // A replay after a crash rewrites the same absolute values: nothing doubles.
    store.write(&ShardId::new("shard-0"), &b).await.unwrap();
    let again = dynamo(&prefix, 20, test_options()).await;
    assert_eq!(again.scan_users().await.unwrap(), users);
    assert_eq!(
        again.products(&["p1"]).await.unwrap()[0]
            .as_ref()
            .unwrap()
            .buyers,
        5
    );
}

#[tokio::test]
async fn dynamo_gives_up_with_a_retriable_error_when_throttled_too_long() {
    if aws_endpoint().is_none() {
        return;
    }
    let prefix = unique_prefix("throttled");
    let plain = dynamo(&prefix, 3, test_options()).await;
    plain.create_tables_if_missing().await.unwrap();
    let flaky = Arc::new(Flaky {
        inner: plain.client().clone(),
        throttle: usize::MAX / 2,
        partial: 0,
        calls: AtomicUsize::new(0),
        handed_back: AtomicUsize::new(0),
    });
    let store = plain.with_batch_writer(flaky.clone());
    let err = store
        .write(&ShardId::new("s"), &batch(3, 1))
        .await
        .unwrap_err();
    assert!(err.retriable(), "{err}");
    assert_eq!(
        flaky.calls.load(Ordering::SeqCst),
        3,
        "max_attempts calls, no more"
    );
}

#[tokio::test]
async fn dynamo_truncates_views_over_the_item_limit() {
    if aws_endpoint().is_none() {
        return;
    }
    let prefix = unique_prefix("big");
    let store = dynamo(&prefix, 3, test_options()).await;
    store.create_tables_if_missing().await.unwrap();
    let mut b = batch(1, 1);
    b.users[0].purchased = (0..40_000).map(|i| format!("product-{i:012}")).collect();
    store
        .write(&ShardId::new("s"), &b)
        .await
        .expect("an oversized view is truncated, not refused");
    let back = store.user("user-000").await.unwrap().unwrap();
    assert!(
        back.purchased.len() < 40_000 && back.purchased.len() >= 10_000,
        "{}",
        back.purchased.len()
    );
    assert_eq!(
        back.purchased[..100],
        b.users[0].purchased[..100],
        "the newest entries are kept"
    );
}

#[tokio::test]
async fn dynamo_reads_fail_fast_when_the_service_is_down() {
    // Needs no emulator: point the store at a closed port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let conf = sdk::Config::builder()
        .behavior_version(sdk::config::BehaviorVersion::latest())
        .region(sdk::config::Region::new("us-east-1"))
        .endpoint_url(format!("http://127.0.0.1:{port}"))
        .credentials_provider(sdk::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .build();
    let store = DynamoFeatureStore::with_client(
        sdk::Client::from_conf(conf),
        &aws("down-", 8),
        FeatureConfig::default(),
    )
    .with_options(DynamoOptions {
        read_timeout: Duration::from_millis(150),
        ..Default::default()
    });
    let t = std::time::Instant::now();
    let err = store.user("alice").await.unwrap_err();
    assert!(err.retriable(), "{err}");
    assert!(store.trending().await.is_err());
    assert!(store.products(&["p1"]).await.is_err());
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "bounded by read_timeout: {:?}",
        t.elapsed()
    );
}
