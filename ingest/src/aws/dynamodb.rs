//! The one DynamoDB helper layer: every table recstream keeps (features, leases,
//! commerce) is created, encoded and error-mapped here, so the copies cannot drift.
//!
//! ```text
//!  ensure_table(client, table, KeySchema, policy)
//!     DescribeTable ─► missing ─► CreateTable (on demand; ResourceInUse = someone else won)
//!                  └─► exists ─► key schema == expected? else IngestError::Config
//!     poll DescribeTable until ACTIVE: TABLE_POLL (backoff with jitter, 120 s deadline)
//!  attr::{s, n, b, get_s, get_n, get_b, get_bool}   attribute codecs
//!  sdk_error(operation, &SdkError) ─► IngestError::Aws { retriable: throttling, 5xx, timeouts }
//! ```
//!
//! Every call goes through [`super::retry`] with the caller's [`RetryPolicy`].

use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TableStatus,
};

use super::{RetryPolicy, is_retriable, retry};
use crate::error::IngestError;

/// The service name in errors and metrics.
pub const SERVICE: &str = "dynamodb";

/// How long [`ensure_table`] waits for a table to become ACTIVE, and how often it looks:
/// 200 ms doubling to 2 s, with jitter.
pub const TABLE_POLL: RetryPolicy = RetryPolicy {
    max_attempts: u32::MAX,
    base: Duration::from_millis(200),
    max: Duration::from_secs(2),
};
/// The deadline of [`ensure_table`]'s wait for ACTIVE.
pub const TABLE_ACTIVE_TIMEOUT: Duration = Duration::from_secs(120);

/// A table's primary key: a hash key and an optional range key, both strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySchema<'a> {
    /// Name of the partition (hash) key attribute.
    pub hash: &'a str,
    /// Name of the sort (range) key attribute, if the table has one.
    pub range: Option<&'a str>,
}

impl<'a> KeySchema<'a> {
    /// A hash key only.
    pub const fn hash(hash: &'a str) -> KeySchema<'a> {
        KeySchema { hash, range: None }
    }

    /// A hash key and a range key.
    pub const fn composite(hash: &'a str, range: &'a str) -> KeySchema<'a> {
        KeySchema {
            hash,
            range: Some(range),
        }
    }

    fn describe(&self) -> String {
        match self.range {
            Some(r) => format!("{} + {r}", self.hash),
            None => self.hash.to_string(),
        }
    }
}

/// Maps an SDK error of DynamoDB `operation` to the ingest error, retriable when
/// throttled, on 5xx and on timeouts.
pub fn sdk_error<E, R>(operation: &'static str, e: &SdkError<E, R>) -> IngestError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    super::sdk_error(SERVICE, operation, e)
}

/// A request that could not be built (a missing required field: a bug, never retried).
pub fn build_error(operation: &'static str, e: impl std::fmt::Display) -> IngestError {
    IngestError::Aws {
        service: SERVICE,
        operation,
        message: format!("building the request: {e}"),
        retriable: false,
    }
}

/// Creates `table` (on-demand capacity) with `key` unless it exists, checks an existing
/// table's key schema, and waits until the table is ACTIVE. Returns whether this call
/// created it. Idempotent and safe to race: another process creating the table at the
/// same time is not an error.
pub async fn ensure_table(
    client: &Client,
    table: &str,
    key: KeySchema<'_>,
    policy: &RetryPolicy,
) -> Result<bool, IngestError> {
    let mut created = false;
    if table_status(client, table, key, policy).await?.is_none() {
        let mut req = client
            .create_table()
            .table_name(table)
            .billing_mode(BillingMode::PayPerRequest);
        for (name, key_type) in [(Some(key.hash), KeyType::Hash), (key.range, KeyType::Range)] {
            let Some(name) = name else { continue };
            req = req
                .attribute_definitions(
                    AttributeDefinition::builder()
                        .attribute_name(name)
                        .attribute_type(ScalarAttributeType::S)
                        .build()
                        .map_err(|e| build_error("CreateTable", e))?,
                )
                .key_schema(
                    KeySchemaElement::builder()
                        .attribute_name(name)
                        .key_type(key_type)
                        .build()
                        .map_err(|e| build_error("CreateTable", e))?,
                );
        }
        match retry(policy, SERVICE, "CreateTable", is_retriable, || {
            req.clone().send()
        })
        .await
        {
            Ok(_) => {
                created = true;
                tracing::info!(table, key = %key.describe(), "created dynamodb table");
            }
            // Someone else created it meanwhile.
            Err(SdkError::ServiceError(e)) if e.err().is_resource_in_use_exception() => {}
            Err(e) => return Err(sdk_error("CreateTable", &e)),
        }
    }
    let deadline = tokio::time::Instant::now() + TABLE_ACTIVE_TIMEOUT;
    let mut attempt = 0;
    loop {
        if table_status(client, table, key, policy).await? == Some(TableStatus::Active) {
            return Ok(created);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(IngestError::Aws {
                service: SERVICE,
                operation: "DescribeTable",
                message: format!(
                    "table {table} did not become ACTIVE within {} s",
                    TABLE_ACTIVE_TIMEOUT.as_secs()
                ),
                retriable: true,
            });
        }
        attempt += 1;
        tokio::time::sleep(TABLE_POLL.backoff(attempt)).await;
    }
}

/// The status of `table`, `None` when it does not exist; an existing table whose key
/// schema is not `key` is a configuration error.
pub async fn table_status(
    client: &Client,
    table: &str,
    key: KeySchema<'_>,
    policy: &RetryPolicy,
) -> Result<Option<TableStatus>, IngestError> {
    let out = retry(policy, SERVICE, "DescribeTable", is_retriable, || {
        client.describe_table().table_name(table).send()
    })
    .await;
    let desc = match out {
        Ok(out) => out.table.ok_or_else(|| IngestError::Aws {
            service: SERVICE,
            operation: "DescribeTable",
            message: format!("no description of table {table} in the response"),
            retriable: false,
        })?,
        Err(SdkError::ServiceError(e)) if e.err().is_resource_not_found_exception() => {
            return Ok(None);
        }
        Err(e) => return Err(sdk_error("DescribeTable", &e)),
    };
    let key_of = |t: KeyType| {
        desc.key_schema()
            .iter()
            .find(|k| *k.key_type() == t)
            .map(|k| k.attribute_name())
    };
    if key_of(KeyType::Hash) != Some(key.hash) || key_of(KeyType::Range) != key.range {
        return Err(IngestError::Config(format!(
            "dynamodb table {table} exists with another key schema (want {})",
            key.describe()
        )));
    }
    // A description without a status is still being created.
    Ok(Some(
        desc.table_status()
            .cloned()
            .unwrap_or(TableStatus::Creating),
    ))
}

/// Attribute codecs: building values and reading typed attributes out of items.
pub mod attr {
    use std::collections::HashMap;
    use std::str::FromStr;

    use aws_sdk_dynamodb::primitives::Blob;
    use aws_sdk_dynamodb::types::AttributeValue;

    /// An item as the SDK gives and takes it.
    pub type Item = HashMap<String, AttributeValue>;

    /// A string attribute.
    pub fn s(v: impl Into<String>) -> AttributeValue {
        AttributeValue::S(v.into())
    }

    /// A number attribute.
    pub fn n(v: impl std::fmt::Display) -> AttributeValue {
        AttributeValue::N(v.to_string())
    }

    /// A binary attribute.
    pub fn b(v: impl Into<Vec<u8>>) -> AttributeValue {
        AttributeValue::B(Blob::new(v))
    }

    /// Sets string attribute `name` unless `v` is absent or empty (DynamoDB rejects
    /// empty key strings, and an absent attribute reads the same).
    pub fn put_opt_s(item: &mut Item, name: &str, v: Option<&str>) {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            item.insert(name.to_string(), s(v));
        }
    }

    /// String attribute `name`, if present and a string.
    pub fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
        item.get(name)?.as_s().ok().map(String::as_str)
    }

    /// Number attribute `name` parsed as `T`, if present, a number and in range.
    pub fn get_n<T: FromStr>(item: &Item, name: &str) -> Option<T> {
        item.get(name)?.as_n().ok()?.parse().ok()
    }

    /// Binary attribute `name`, if present and binary.
    pub fn get_b<'a>(item: &'a Item, name: &str) -> Option<&'a [u8]> {
        item.get(name)?.as_b().ok().map(Blob::as_ref)
    }

    /// Boolean attribute `name`, if present and a boolean.
    pub fn get_bool(item: &Item, name: &str) -> Option<bool> {
        item.get(name)?.as_bool().ok().copied()
    }

    /// String-list attribute `name` (the strings of a list `L`), empty when absent.
    pub fn get_string_list(item: &Item, name: &str) -> Vec<String> {
        item.get(name)
            .and_then(|v| v.as_l().ok())
            .map(|l| l.iter().filter_map(|v| v.as_s().ok()).cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_dynamodb::types::AttributeValue;

    use super::attr::*;
    use super::*;

    #[test]
    fn codecs_round_trip_and_reject_wrong_types() {
        let mut item = Item::new();
        item.insert("id".into(), s("u1"));
        item.insert("count".into(), n(42u64));
        item.insert("v".into(), b(vec![1u8, 2, 3]));
        item.insert("done".into(), AttributeValue::Bool(true));
        put_opt_s(&mut item, "empty", Some(""));
        put_opt_s(&mut item, "none", None);
        assert_eq!(get_s(&item, "id"), Some("u1"));
        assert_eq!(get_n::<u64>(&item, "count"), Some(42));
        assert_eq!(get_n::<u8>(&item, "count"), Some(42));
        assert_eq!(get_b(&item, "v"), Some(&[1u8, 2, 3][..]));
        assert_eq!(get_bool(&item, "done"), Some(true));
        assert_eq!(get_s(&item, "count"), None, "a number is not a string");
        assert_eq!(get_n::<u64>(&item, "id"), None, "a string is not a number");
        assert!(!item.contains_key("empty") && !item.contains_key("none"));
        assert!(get_string_list(&item, "missing").is_empty());
    }

    #[test]
    fn poll_policy_is_bounded() {
        for attempt in 1..100 {
            let wait = TABLE_POLL.backoff(attempt);
            assert!(wait > Duration::ZERO && wait <= Duration::from_secs(2));
        }
    }
}
