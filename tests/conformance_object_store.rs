//! The object store conformance suite run against both implementations: the local
//! directory and S3 (on the AWS emulator at `AWS_ENDPOINT_URL`, as `scripts/test` starts
//! it). Under `CI=true` a missing emulator fails the test; elsewhere it is skipped with a
//! loud message.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use recstream_ingest::aws::{AwsConfig, sdk_config};
use recstream_ingest::object_store::conformance::run_object_store_suite;
use recstream_ingest::object_store::s3::MULTIPART_PART_BYTES;
use recstream_ingest::{LocalObjectStore, ObjectStore, object_store::S3ObjectStore};

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
    let host_port = url
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    use std::net::ToSocketAddrs;
    host_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| {
            std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(2)).is_ok()
        })
}

fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

async fn s3_store(bucket: &str, prefix: &str) -> S3ObjectStore {
    let aws = AwsConfig {
        bucket: bucket.into(),
        prefix: prefix.into(),
        max_attempts: 3,
        ..Default::default()
    };
    let sdk = sdk_config(Some(
        std::env::var("AWS_REGION")
            .as_deref()
            .unwrap_or("us-east-1"),
    ))
    .await;
    S3ObjectStore::new(&sdk, &aws)
}

#[tokio::test]
async fn local_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    run_object_store_suite(&LocalObjectStore::new(dir.path().join("objects"))).await;
}

#[tokio::test]
async fn s3_store_conforms() {
    if aws_endpoint().is_none() {
        return;
    }
    let bucket = unique("recstream-conf");
    let store = s3_store(&bucket, "env/test").await;
    store
        .create_bucket_if_missing()
        .await
        .expect("create bucket");
    store
        .create_bucket_if_missing()
        .await
        .expect("create bucket is idempotent");
    assert_eq!(store.describe(), format!("s3://{bucket}/env/test"));
    run_object_store_suite(&store).await;

    // The prefix is where the keys go in the bucket; the root sees it.
    store
        .put("events/x.parquet", Bytes::from_static(b"x"))
        .await
        .unwrap();
    let root = s3_store(&bucket, "").await;
    assert_eq!(
        root.list("").await.unwrap(),
        vec!["env/test/events/x.parquet".to_string()]
    );
    assert_eq!(
        root.get("env/test/events/x.parquet")
            .await
            .unwrap()
            .as_deref(),
        Some(&b"x"[..])
    );
    root.delete("env/test/events/x.parquet").await.unwrap();
}

#[tokio::test]
async fn s3_multipart_uploads_complete_and_leave_nothing_pending() {
    if aws_endpoint().is_none() {
        return;
    }
    let bucket = unique("recstream-mpu");
    let store = s3_store(&bucket, "").await;
    store.create_bucket_if_missing().await.unwrap();
    // Exactly one part, one part and a byte, three parts.
    for len in [
        MULTIPART_PART_BYTES,
        MULTIPART_PART_BYTES + 1,
        2 * MULTIPART_PART_BYTES + 5,
    ] {
        let body: Bytes = (0..len)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>()
            .into();
        let key = format!("models/v1/blob-{len}.bin");
        store.put(&key, body.clone()).await.unwrap();
        assert!(
            store.get(&key).await.unwrap().unwrap() == body,
            "{len} bytes round trip"
        );
    }
    let pending = store
        .client()
        .list_multipart_uploads()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert!(
        pending.uploads().is_empty(),
        "no multipart upload left open: {:?}",
        pending.uploads()
    );
}

#[tokio::test]
async fn s3_missing_bucket_is_an_error_not_an_empty_store() {
    if aws_endpoint().is_none() {
        return;
    }
    let store = s3_store(&unique("recstream-none"), "").await;
    let err = store.get("events/a").await.unwrap_err();
    assert!(err.to_string().contains("NoSuchBucket"), "{err}");
    assert!(!err.retriable(), "{err}");
    assert!(store.list("").await.is_err());
}
