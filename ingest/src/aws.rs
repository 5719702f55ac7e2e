//! The one AWS helper layer: where the resources are, how the SDK is configured, the one
//! retry policy every AWS call (and every retry loop of the commerce saga and outbox) goes
//! through, error mapping, and — in [`dynamodb`] — table creation and attribute codecs.
//!
//! ```text
//!  AwsConfig (names) + SDK env (AWS_ENDPOINT_URL[_KINESIS|_DYNAMODB|_S3], AWS_REGION, credentials)
//!        └─► sdk_config() ─► aws_sdk_{kinesis,dynamodb,s3}::Client
//!  call ─► retry(policy, service, operation, f) ─► backoff with full jitter on throttling,
//!                                                 timeouts and 5xx; anything else fails fast
//!  RetryPolicy::backoff(attempt)   the one backoff formula (also for non-AWS retry loops)
//!  sdk_error(service, operation, &SdkError) ─► IngestError::Aws { retriable }
//!  dynamodb::{ensure_table, attr, sdk_error}   one copy for the feature, lease and commerce tables
//! ```
//!
//! The SDK's own retries are switched off in [`sdk_config`], so that the policy here is the
//! only one and tests that inject errors see exactly it.

use std::future::Future;
use std::time::Duration;

use aws_sdk_kinesis::error::ProvideErrorMetadata;
use serde::{Deserialize, Serialize};

use crate::error::IngestError;
use crate::metrics::AWS_RETRIES_TOTAL;

pub mod dynamodb;

/// Names of the AWS resources recstream uses. Endpoints and credentials are not here:
/// they come from the SDK's standard environment variables and credential chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwsConfig {
    /// Region; default: the SDK's (`AWS_REGION`, profile).
    pub region: Option<String>,
    /// The clickstream stream.
    pub stream: String,
    /// Shards created by `recstream init` when the stream does not exist.
    pub shards: u32,
    /// DynamoDB table prefix: `<prefix>users`, `<prefix>products`, `<prefix>top-lists`,
    /// `<prefix>leases`.
    pub table_prefix: String,
    /// S3 bucket for the archive, dead letters, snapshots and models.
    pub bucket: String,
    /// Key prefix inside the bucket ("" = bucket root).
    pub prefix: String,
    /// Redis for the cold-start cache (ElastiCache in production).
    pub redis_url: String,
    /// How long a lease lives without renewal before another worker may take it.
    pub lease_duration_ms: u64,
    /// Attempts per AWS call (1 = no retry).
    pub max_attempts: u32,
    /// First backoff; doubles per attempt up to `max_backoff_ms`, with full jitter.
    pub base_backoff_ms: u64,
    /// Upper bound of one backoff, in ms (default 5 000).
    pub max_backoff_ms: u64,
}

impl Default for AwsConfig {
    fn default() -> Self {
        AwsConfig {
            region: None,
            stream: "clickstream".into(),
            shards: 4,
            table_prefix: "recstream-".into(),
            bucket: "recstream".into(),
            prefix: String::new(),
            redis_url: "redis://127.0.0.1:6379/".into(),
            lease_duration_ms: 10_000,
            max_attempts: 8,
            base_backoff_ms: 50,
            max_backoff_ms: 5_000,
        }
    }
}

impl AwsConfig {
    /// Checks names and bounds before any client is built: stream, table prefix and bucket
    /// names must be valid for AWS, shard count and retry settings in range. `Err` holds a
    /// message naming the bad setting.
    pub fn validate(&self) -> Result<(), String> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if !name_ok(&self.stream) {
            return Err(format!(
                "aws.stream `{}` is not a valid stream name",
                self.stream
            ));
        }
        if !self.table_prefix.is_empty() && !name_ok(&self.table_prefix) {
            return Err("aws.table_prefix may contain only letters, digits, - _ .".into());
        }
        if self.bucket.len() < 3
            || !self
                .bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.".contains(c))
        {
            return Err(format!(
                "aws.bucket `{}` is not a valid bucket name",
                self.bucket
            ));
        }
        if !(1..=500).contains(&self.shards) {
            return Err("aws.shards must be in 1..=500".into());
        }
        if self.max_attempts == 0
            || self.base_backoff_ms == 0
            || self.max_backoff_ms < self.base_backoff_ms
        {
            return Err("aws retry settings: need max_attempts >= 1 and 0 < base_backoff_ms <= max_backoff_ms".into());
        }
        if self.lease_duration_ms < 1000 {
            return Err("aws.lease_duration_ms must be at least 1000".into());
        }
        if !self.redis_url.starts_with("redis://") && !self.redis_url.starts_with("rediss://") {
            return Err("aws.redis_url must start with redis:// or rediss://".into());
        }
        Ok(())
    }

    /// The full name of table `name` (`users`, `products`, `top-lists`, `leases`) with the
    /// configured prefix.
    pub fn table(&self, name: &str) -> String {
        format!("{}{name}", self.table_prefix)
    }

    /// The full object key for `key` under the configured prefix.
    pub fn key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix.trim_end_matches('/'))
        }
    }

    /// The retry policy of AWS calls built from `max_attempts` and the backoff bounds.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts,
            base: Duration::from_millis(self.base_backoff_ms),
            max: Duration::from_millis(self.max_backoff_ms),
        }
    }
}

/// Loads the SDK configuration from the standard environment, with SDK retries off.
pub async fn sdk_config(region: Option<&str>) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(20))
                .build(),
        );
    if let Some(r) = region {
        loader = loader.region(aws_config::Region::new(r.to_string()));
    }
    loader.load().await
}

/// How often and how patiently an AWS call is retried ([`retry`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts per call, the first included (1 = no retry).
    pub max_attempts: u32,
    /// First backoff; doubles per retry up to `max`.
    pub base: Duration,
    /// Upper bound of one backoff.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        AwsConfig::default().retry_policy()
    }
}

impl RetryPolicy {
    /// The backoff before attempt `attempt` (1-based retry count): full jitter over an
    /// exponentially growing cap.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let cap = self
            .base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max);
        let nanos = cap.as_nanos() as u64;
        if nanos == 0 {
            return cap;
        }
        Duration::from_nanos(jitter() % nanos + 1)
    }
}

fn jitter() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x9E37_79B9_7F4A_7C15)
                | 1,
        );
    }
    STATE.with(|s| {
        // splitmix64
        let mut z = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        s.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

/// Error codes AWS services use for "slow down" and transient server trouble.
const RETRIABLE_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "RequestLimitExceeded",
    "LimitExceededException",
    "TooManyRequestsException",
    "RequestThrottled",
    "RequestThrottledException",
    "SlowDown",
    "InternalFailure",
    "InternalServerError",
    "InternalError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "KMSThrottlingException",
    "TransactionConflictException",
];

/// Whether an SDK error is worth retrying: throttling, 5xx, timeouts, connection failures.
pub fn is_retriable<E, R>(err: &aws_sdk_kinesis::error::SdkError<E, R>) -> bool
where
    E: ProvideErrorMetadata,
{
    use aws_sdk_kinesis::error::SdkError;
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(s) => s.err().code().is_some_and(|c| RETRIABLE_CODES.contains(&c)),
        _ => false,
    }
}

/// A short description of an SDK error (code and message, never credentials).
pub fn describe<E, R>(err: &aws_sdk_kinesis::error::SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match err.code() {
        Some(code) => format!("{code}: {}", err.message().unwrap_or("")),
        None => aws_sdk_kinesis::error::DisplayErrorContext(err).to_string(),
    }
}

/// Maps an SDK error of `service`'s `operation` to [`IngestError::Aws`], retriable as
/// [`is_retriable`] says.
pub fn sdk_error<E, R>(
    service: &'static str,
    operation: &'static str,
    e: &aws_sdk_kinesis::error::SdkError<E, R>,
) -> IngestError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    IngestError::Aws {
        service,
        operation,
        message: describe(e),
        retriable: is_retriable(e),
    }
}

/// Runs `f` until it succeeds, fails with a non-retriable error, or `policy.max_attempts`
/// is used up; sleeps with [`RetryPolicy::backoff`] between attempts.
pub async fn retry<T, E, F, Fut>(
    policy: &RetryPolicy,
    service: &'static str,
    operation: &'static str,
    retriable: impl Fn(&E) -> bool,
    mut f: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < policy.max_attempts && retriable(&e) => {
                metrics::counter!(AWS_RETRIES_TOTAL, "service" => service, "operation" => operation)
                    .increment(1);
                let wait = policy.backoff(attempt);
                tracing::debug!(service, operation, attempt, ?wait, "retrying aws call");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn backoff_is_bounded_and_grows() {
        let p = RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(10),
            max: Duration::from_millis(100),
        };
        for attempt in 1..20 {
            let b = p.backoff(attempt);
            assert!(b <= Duration::from_millis(100) && b > Duration::ZERO);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_only_retriable_errors_up_to_the_limit() {
        let p = RetryPolicy {
            max_attempts: 4,
            base: Duration::from_millis(10),
            max: Duration::from_millis(50),
        };
        let calls = AtomicU32::new(0);
        let r: Result<(), &str> = retry(
            &p,
            "test",
            "op",
            |e| *e == "throttled",
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("throttled")
            },
        )
        .await;
        assert_eq!(r, Err("throttled"));
        assert_eq!(calls.load(Ordering::SeqCst), 4);

        calls.store(0, Ordering::SeqCst);
        let r: Result<(), &str> = retry(
            &p,
            "test",
            "op",
            |e| *e == "throttled",
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("access denied")
            },
        )
        .await;
        assert_eq!(r, Err("access denied"));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "non-retriable errors fail fast"
        );

        calls.store(0, Ordering::SeqCst);
        let r = retry(
            &p,
            "test",
            "op",
            |e: &&str| *e == "throttled",
            || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err("throttled")
                } else {
                    Ok(7)
                }
            },
        )
        .await;
        assert_eq!(r, Ok(7));
    }

    #[test]
    fn config_validation() {
        AwsConfig::default().validate().unwrap();
        let bad = AwsConfig {
            bucket: "Bad_Bucket".into(),
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("bucket"));
    }
}
