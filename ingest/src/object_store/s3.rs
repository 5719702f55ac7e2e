//! The S3 object store (aws-sdk-s3), the production twin of [`LocalObjectStore`].
//!
//! ```text
//!  put(key, body) ─┬─ ≤ 8 MiB ─► PutObject
//!                  └─ > 8 MiB ─► CreateMultipartUpload ─► UploadPart × ⌈len / 8 MiB⌉
//!                                ─► CompleteMultipartUpload   (AbortMultipartUpload on failure)
//!  get(key)        ─► GetObject            (NoSuchKey ─► None)
//!  list(prefix)    ─► ListObjectsV2 pages  (continuation tokens; keys sorted)
//!  delete(key)     ─► DeleteObject         (missing object ─► Ok)
//! ```
//!
//! Keys live under `AwsConfig::prefix` (`<prefix>/<key>`); the store strips it again on
//! `list`, so callers see the same keys as with the local store. The client uses
//! path-style addressing (`http://endpoint/bucket/key`), which every emulator (moto,
//! LocalStack, MinIO) understands and which real S3 still serves.
//!
//! Every call goes through [`crate::aws::retry`]: throttling (`SlowDown`), 5xx, timeouts
//! and dropped connections are retried with backoff and jitter; anything else fails fast
//! as [`IngestError::Aws`]. A multipart upload that fails is aborted, so no invisible
//! parts keep costing storage (a bucket lifecycle rule for incomplete uploads is still
//! advisable for processes that die mid-upload).
//!
//! [`LocalObjectStore`]: super::LocalObjectStore

use std::error::Error as StdError;

use async_trait::async_trait;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketLocationConstraint, CompletedMultipartUpload, CompletedPart, CreateBucketConfiguration,
};
use bytes::Bytes;

use super::ObjectStore;
use crate::aws::{AwsConfig, RetryPolicy, describe, is_retriable, retry, sdk_config};
use crate::error::IngestError;

/// Objects up to this size go up in one PutObject; larger ones in parts of this size.
pub const MULTIPART_PART_BYTES: usize = 8 * 1024 * 1024;
/// S3's own limit on key length.
const MAX_KEY_BYTES: usize = 1024;
const SERVICE: &str = "s3";

/// An [`ObjectStore`] over one S3 bucket and key prefix.
#[derive(Debug, Clone)]
pub struct S3ObjectStore {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// `""` or `"<prefix>/"`.
    prefix: String,
    policy: RetryPolicy,
    part_bytes: usize,
}

impl S3ObjectStore {
    /// A store over `aws.bucket` / `aws.prefix`, with a client built from `sdk` (see
    /// [`crate::aws::sdk_config`]) and path-style addressing.
    pub fn new(sdk: &aws_config::SdkConfig, aws: &AwsConfig) -> S3ObjectStore {
        let conf = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(true)
            .build();
        S3ObjectStore::with_client(aws_sdk_s3::Client::from_conf(conf), aws)
    }

    /// Loads the SDK configuration from the standard environment (`AWS_ENDPOINT_URL[_S3]`,
    /// `AWS_REGION`, the default credential chain) and builds the store.
    pub async fn from_env(aws: &AwsConfig) -> S3ObjectStore {
        let sdk = sdk_config(aws.region.as_deref()).await;
        S3ObjectStore::new(&sdk, aws)
    }

    /// A store over an existing client (the caller chooses its addressing style).
    pub fn with_client(client: aws_sdk_s3::Client, aws: &AwsConfig) -> S3ObjectStore {
        let prefix = aws.prefix.trim_matches('/');
        S3ObjectStore {
            client,
            bucket: aws.bucket.clone(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            policy: aws.retry_policy(),
            part_bytes: MULTIPART_PART_BYTES,
        }
    }

    /// Sets the part size of multipart uploads (and the single-put threshold). S3 needs at
    /// least 5 MiB for every part but the last; values below are raised to it.
    pub fn with_part_bytes(mut self, part_bytes: usize) -> S3ObjectStore {
        self.part_bytes = part_bytes.max(5 * 1024 * 1024);
        self
    }

    /// The bucket every key lives in.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The underlying SDK client.
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// Creates the bucket unless it exists already (idempotent; `recstream init`).
    pub async fn create_bucket_if_missing(&self) -> Result<(), IngestError> {
        let head = retry(&self.policy, SERVICE, "HeadBucket", is_retriable, || {
            self.client.head_bucket().bucket(&self.bucket).send()
        })
        .await;
        match head {
            Ok(_) => return Ok(()),
            Err(SdkError::ServiceError(e)) if e.err().is_not_found() => {}
            Err(e) => return Err(aws_error("HeadBucket", &e)),
        }
        let region = self.client.config().region().map(|r| r.to_string());
        let created = retry(&self.policy, SERVICE, "CreateBucket", is_retriable, || {
            let mut req = self.client.create_bucket().bucket(&self.bucket);
            // us-east-1 is the one region that takes no location constraint.
            if let Some(r) = region.as_deref().filter(|r| *r != "us-east-1") {
                req = req.create_bucket_configuration(
                    CreateBucketConfiguration::builder()
                        .location_constraint(BucketLocationConstraint::from(r))
                        .build(),
                );
            }
            req.send()
        })
        .await;
        match created {
            Ok(_) => {
                tracing::info!(bucket = %self.bucket, "created s3 bucket");
                Ok(())
            }
            Err(SdkError::ServiceError(e)) if e.err().is_bucket_already_owned_by_you() => Ok(()),
            Err(e) => Err(aws_error("CreateBucket", &e)),
        }
    }

    fn full_key(&self, key: &str) -> Result<String, IngestError> {
        validate_key(key)?;
        let full = format!("{}{key}", self.prefix);
        if full.len() > MAX_KEY_BYTES {
            return Err(IngestError::ObjectStore(format!(
                "object key of {} bytes is over the s3 limit of {MAX_KEY_BYTES}",
                full.len()
            )));
        }
        Ok(full)
    }

    async fn put_single(&self, key: &str, body: Bytes) -> Result<(), IngestError> {
        retry(&self.policy, SERVICE, "PutObject", is_retriable, || {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .content_length(body.len() as i64)
                .body(ByteStream::from(body.clone()))
                .send()
        })
        .await
        .map_err(|e| aws_error("PutObject", &e))?;
        Ok(())
    }

    async fn put_multipart(&self, key: &str, body: Bytes) -> Result<(), IngestError> {
        let created = retry(
            &self.policy,
            SERVICE,
            "CreateMultipartUpload",
            is_retriable,
            || {
                self.client
                    .create_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .send()
            },
        )
        .await
        .map_err(|e| aws_error("CreateMultipartUpload", &e))?;
        let Some(upload_id) = created.upload_id().map(str::to_string) else {
            return Err(IngestError::Aws {
                service: SERVICE,
                operation: "CreateMultipartUpload",
                message: "response carried no upload id".into(),
                retriable: true,
            });
        };
        match self.upload_parts(key, &upload_id, &body).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let aborted = retry(
                    &self.policy,
                    SERVICE,
                    "AbortMultipartUpload",
                    is_retriable,
                    || {
                        self.client
                            .abort_multipart_upload()
                            .bucket(&self.bucket)
                            .key(key)
                            .upload_id(&upload_id)
                            .send()
                    },
                )
                .await;
                if let Err(abort) = aborted {
                    tracing::warn!(
                        bucket = %self.bucket,
                        key,
                        upload_id,
                        error = %describe(&abort),
                        "could not abort a failed multipart upload"
                    );
                }
                Err(e)
            }
        }
    }

    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        body: &Bytes,
    ) -> Result<(), IngestError> {
        let mut parts = Vec::with_capacity(body.len().div_ceil(self.part_bytes));
        for (i, start) in (0..body.len()).step_by(self.part_bytes).enumerate() {
            let part_number = i as i32 + 1;
            let chunk = body.slice(start..(start + self.part_bytes).min(body.len()));
            let out = retry(&self.policy, SERVICE, "UploadPart", is_retriable, || {
                self.client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number(part_number)
                    .content_length(chunk.len() as i64)
                    .body(ByteStream::from(chunk.clone()))
                    .send()
            })
            .await
            .map_err(|e| aws_error("UploadPart", &e))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(part_number)
                    .set_e_tag(out.e_tag().map(str::to_string))
                    .build(),
            );
        }
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(parts))
            .build();
        retry(
            &self.policy,
            SERVICE,
            "CompleteMultipartUpload",
            is_retriable,
            || {
                self.client
                    .complete_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .multipart_upload(completed.clone())
                    .send()
            },
        )
        .await
        .map_err(|e| aws_error("CompleteMultipartUpload", &e))?;
        Ok(())
    }
}

/// The same key rules as the local store, so a key valid in one is valid in the other.
fn validate_key(key: &str) -> Result<(), IngestError> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..");
    if bad {
        return Err(IngestError::ObjectStore(format!(
            "invalid object key `{key}`"
        )));
    }
    Ok(())
}

fn aws_error<E>(operation: &'static str, e: &SdkError<E, HttpResponse>) -> IngestError
where
    E: ProvideErrorMetadata + StdError + 'static,
{
    crate::aws::sdk_error(SERVICE, operation, e)
}

#[async_trait]
impl ObjectStore for S3ObjectStore {
    #[tracing::instrument(skip(self, body), fields(bucket = %self.bucket, bytes = body.len()))]
    async fn put(&self, key: &str, body: Bytes) -> Result<(), IngestError> {
        let key = self.full_key(key)?;
        if body.len() <= self.part_bytes {
            self.put_single(&key, body).await
        } else {
            self.put_multipart(&key, body).await
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, IngestError> {
        let key = self.full_key(key)?;
        // The body is read inside the retried closure: a connection cut mid-body retries
        // the whole GET.
        retry(
            &self.policy,
            SERVICE,
            "GetObject",
            IngestError::retriable,
            || async {
                let out = match self
                    .client
                    .get_object()
                    .bucket(&self.bucket)
                    .key(&key)
                    .send()
                    .await
                {
                    Ok(out) => out,
                    Err(SdkError::ServiceError(e)) if e.err().is_no_such_key() => return Ok(None),
                    Err(e) => return Err(aws_error("GetObject", &e)),
                };
                let body = out.body.collect().await.map_err(|e| IngestError::Aws {
                    service: SERVICE,
                    operation: "GetObject",
                    message: format!("reading the body: {e}"),
                    retriable: true,
                })?;
                Ok(Some(body.into_bytes()))
            },
        )
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, IngestError> {
        let full_prefix = format!("{}{prefix}", self.prefix);
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = retry(&self.policy, SERVICE, "ListObjectsV2", is_retriable, || {
                self.client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(&full_prefix)
                    .set_continuation_token(token.clone())
                    .send()
            })
            .await
            .map_err(|e| aws_error("ListObjectsV2", &e))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key())
                    .filter_map(|k| k.strip_prefix(self.prefix.as_str()))
                    .map(str::to_string),
            );
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    async fn delete(&self, key: &str) -> Result<(), IngestError> {
        let key = self.full_key(key)?;
        retry(&self.policy, SERVICE, "DeleteObject", is_retriable, || {
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(&key)
                .send()
        })
        .await
        .map_err(|e| aws_error("DeleteObject", &e))?;
        Ok(())
    }

    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix.trim_end_matches('/'))
            .trim_end_matches('/')
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(prefix: &str) -> S3ObjectStore {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .force_path_style(true)
            .build();
        let aws = AwsConfig {
            bucket: "archive".into(),
            prefix: prefix.into(),
            ..Default::default()
        };
        S3ObjectStore::with_client(aws_sdk_s3::Client::from_conf(conf), &aws)
    }

    #[test]
    fn keys_live_under_the_prefix() {
        assert_eq!(store("").full_key("events/a").unwrap(), "events/a");
        assert_eq!(
            store("env/prod/").full_key("events/a").unwrap(),
            "env/prod/events/a"
        );
        assert_eq!(store("").describe(), "s3://archive");
        assert_eq!(store("env/prod").describe(), "s3://archive/env/prod");
    }

    #[test]
    fn rejects_the_keys_the_local_store_rejects() {
        let s = store("p");
        for bad in ["", "/abs", "a//b", "../x", "a/./b", "a/"] {
            assert!(s.full_key(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(s.full_key(&"k".repeat(MAX_KEY_BYTES)).is_err());
    }

    #[test]
    fn part_size_never_goes_below_the_s3_minimum() {
        assert_eq!(store("").with_part_bytes(1).part_bytes, 5 * 1024 * 1024);
    }
}
