//! The DynamoDB commerce store, the production twin of [`EmbeddedStore`](super::EmbeddedStore).
//!
//! ```text
//!  get   ─► GetItem (ConsistentRead)
//!  query ─► Query pk = :pk AND sk > :after (ConsistentRead, paginated up to `limit`)
//!  transact ─► TransactWriteItems: Put = Update `SET v, ttl ADD ver 1` + condition,
//!              Delete / ConditionCheck with `attribute_not_exists(pk)` or `ver = :expected`;
//!              ClientRequestToken per call, so a retried call is applied once
//!        └─ throttling, 5xx, timeouts ─► aws::retry (backoff + jitter)
//!        └─ TransactionCanceled: ConditionalCheckFailed ─► StoreError::Conflict{index}
//!                                TransactionConflict    ─► retriable error
//! ```
//!
//! # Table
//!
//! One table, `<prefix>commerce` (on-demand), key `pk` (S, hash) + `sk` (S, range).
//! Attributes: `v` (B, the value: JSON), `ver` (N, version), `ttl` (N, epoch seconds,
//! optional; DynamoDB TTL is enabled on it by [`DynamoStore::create_table_if_missing`]).

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, Delete, TimeToLiveSpecification, TransactWriteItem, Update,
};
use recstream_ingest::IngestError;
use recstream_ingest::aws::dynamodb::{self, KeySchema, attr, ensure_table, sdk_error};
use recstream_ingest::aws::{AwsConfig, RetryPolicy, describe, is_retriable, retry, sdk_config};

use super::{CommerceStore, Cond, Item, Key, StoreError, Write, validate_writes};

const SERVICE: &str = "dynamodb";
type Attrs = HashMap<String, AttributeValue>;

/// The [`CommerceStore`] on one DynamoDB table (`<prefix>commerce`): `transact` is one
/// TransactWriteItems, versions are an attribute checked in condition expressions.
pub struct DynamoStore {
    client: Client,
    table: String,
    policy: RetryPolicy,
}

/// The one AWS error mapping (`recstream_ingest::aws`), in this crate's error type.
fn aws_error(e: IngestError) -> StoreError {
    let (operation, message, retriable) = e.into_aws_parts("table setup");
    StoreError::Dynamo {
        operation,
        message,
        retriable,
    }
}

fn dynamo_error<E, R>(operation: &'static str, e: &SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    aws_error(sdk_error(operation, e))
}

fn build_error(operation: &'static str, e: impl std::fmt::Display) -> StoreError {
    aws_error(dynamodb::build_error(operation, e))
}

fn corrupt(what: &'static str, message: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        what,
        message: message.into(),
    }
}

fn key_attrs(key: &Key) -> Attrs {
    HashMap::from([
        ("pk".to_string(), attr::s(key.pk.as_str())),
        ("sk".to_string(), attr::s(key.sk.as_str())),
    ])
}

fn item_of(attrs: &Attrs) -> Result<Item, StoreError> {
    let value = match attrs.get("v") {
        None => Vec::new(),
        Some(_) => attr::get_b(attrs, "v")
            .ok_or_else(|| corrupt("dynamodb item", "`v` is not binary"))?
            .to_vec(),
    };
    let version = attr::get_n(attrs, "ver")
        .ok_or_else(|| corrupt("dynamodb item", "`ver` is missing or not an integer"))?;
    Ok(Item { value, version })
}

/// The condition expression for `cond`, and the values it needs.
fn condition(cond: Cond) -> (Option<&'static str>, Option<(String, AttributeValue)>) {
    match cond {
        Cond::Any => (None, None),
        Cond::Absent => (Some("attribute_not_exists(pk)"), None),
        Cond::Version(v) => (
            Some("#ver = :expected"),
            Some((":expected".into(), AttributeValue::N(v.to_string()))),
        ),
    }
}

impl DynamoStore {
    /// A store on `table` through `client`, retrying throttled calls with `policy`.
    pub fn new(client: Client, table: impl Into<String>, policy: RetryPolicy) -> DynamoStore {
        DynamoStore {
            client,
            table: table.into(),
            policy,
        }
    }

    /// A client from the SDK's environment (`AWS_ENDPOINT_URL[_DYNAMODB]`, `AWS_REGION`,
    /// the default credential chain), on table `<prefix>commerce`.
    pub async fn from_env(aws: &AwsConfig) -> DynamoStore {
        let sdk = sdk_config(aws.region.as_deref()).await;
        DynamoStore::new(Client::new(&sdk), aws.table("commerce"), aws.retry_policy())
    }

    /// The table's full name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates the table (on-demand, TTL on `ttl`) unless it exists (an existing one must
    /// have the `pk` + `sk` key schema); waits until ACTIVE.
    pub async fn create_table_if_missing(&self) -> Result<(), StoreError> {
        ensure_table(
            &self.client,
            &self.table,
            KeySchema::composite("pk", "sk"),
            &self.policy,
        )
        .await
        .map_err(aws_error)?;
        let ttl = TimeToLiveSpecification::builder()
            .attribute_name("ttl")
            .enabled(true)
            .build()
            .map_err(|e| build_error("UpdateTimeToLive", e))?;
        let r = retry(
            &self.policy,
            SERVICE,
            "UpdateTimeToLive",
            is_retriable,
            || {
                self.client
                    .update_time_to_live()
                    .table_name(&self.table)
                    .time_to_live_specification(ttl.clone())
                    .send()
            },
        )
        .await;
        if let Err(e) = r {
            // Already enabled (ValidationException) is fine; anything else only costs
            // storage, so it is logged, not fatal.
            tracing::warn!(table = %self.table, error = %describe(&e), "could not enable ttl");
        }
        Ok(())
    }

    fn transact_item(&self, w: &Write) -> Result<TransactWriteItem, StoreError> {
        const OP: &str = "TransactWriteItems";
        let mut names = HashMap::from([("#ver".to_string(), "ver".to_string())]);
        let mut values = HashMap::new();
        let (cond_expr, cond_value) = match w {
            Write::Put { cond, .. } | Write::Delete { cond, .. } | Write::Check { cond, .. } => {
                condition(*cond)
            }
        };
        if let Some((k, v)) = cond_value {
            values.insert(k, v);
        }
        Ok(match w {
            Write::Put {
                key,
                value,
                expires_at_s,
                ..
            } => {
                names.insert("#v".into(), "v".into());
                names.insert("#ttl".into(), "ttl".into());
                values.insert(":v".into(), AttributeValue::B(Blob::new(value.clone())));
                values.insert(":one".into(), AttributeValue::N("1".into()));
                let expr = match expires_at_s {
                    Some(t) => {
                        values.insert(":ttl".into(), AttributeValue::N(t.to_string()));
                        "SET #v = :v, #ttl = :ttl ADD #ver :one"
                    }
                    None => "SET #v = :v REMOVE #ttl ADD #ver :one",
                };
                let u = Update::builder()
                    .table_name(&self.table)
                    .set_key(Some(key_attrs(key)))
                    .update_expression(expr)
                    .set_condition_expression(cond_expr.map(str::to_string))
                    .set_expression_attribute_names(Some(names))
                    .set_expression_attribute_values(Some(values))
                    .build()
                    .map_err(|e| build_error(OP, e))?;
                TransactWriteItem::builder().update(u).build()
            }
            Write::Delete { key, .. } => {
                let has_ver = cond_expr.is_some_and(|c| c.contains("#ver"));
                let d = Delete::builder()
                    .table_name(&self.table)
                    .set_key(Some(key_attrs(key)))
                    .set_condition_expression(cond_expr.map(str::to_string))
                    .set_expression_attribute_names(has_ver.then_some(names))
                    .set_expression_attribute_values((!values.is_empty()).then_some(values))
                    .build()
                    .map_err(|e| build_error(OP, e))?;
                TransactWriteItem::builder().delete(d).build()
            }
            Write::Check { key, .. } => {
                let expr = cond_expr.unwrap_or("attribute_exists(pk) OR attribute_not_exists(pk)");
                let c = ConditionCheck::builder()
                    .table_name(&self.table)
                    .set_key(Some(key_attrs(key)))
                    .condition_expression(expr)
                    .set_expression_attribute_names(expr.contains("#ver").then_some(names))
                    .set_expression_attribute_values((!values.is_empty()).then_some(values))
                    .build()
                    .map_err(|e| build_error(OP, e))?;
                TransactWriteItem::builder().condition_check(c).build()
            }
        })
    }
}

#[async_trait]
impl CommerceStore for DynamoStore {
    fn name(&self) -> &'static str {
        "dynamodb"
    }

    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        let out = retry(&self.policy, SERVICE, "GetItem", is_retriable, || {
            self.client
                .get_item()
                .table_name(&self.table)
                .set_key(Some(key_attrs(key)))
                .consistent_read(true)
                .send()
        })
        .await
        .map_err(|e| dynamo_error("GetItem", &e))?;
        out.item.as_ref().map(item_of).transpose()
    }

    async fn query(
        &self,
        pk: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Item)>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<Attrs> = None;
        while out.len() < limit {
            let want = i32::try_from(limit - out.len()).unwrap_or(i32::MAX);
            let mut req = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .limit(want)
                .set_exclusive_start_key(start.take())
                .expression_attribute_values(":pk", AttributeValue::S(pk.to_string()));
            req = match after {
                Some(a) => req
                    .key_condition_expression("pk = :pk AND sk > :after")
                    .expression_attribute_values(":after", AttributeValue::S(a.to_string())),
                None => req.key_condition_expression("pk = :pk"),
            };
            let page = retry(&self.policy, SERVICE, "Query", is_retriable, || {
                req.clone().send()
            })
            .await
            .map_err(|e| dynamo_error("Query", &e))?;
            for attrs in page.items() {
                let sk = match attrs.get("sk") {
                    Some(AttributeValue::S(s)) => s.clone(),
                    _ => return Err(corrupt("dynamodb item", "`sk` missing")),
                };
                out.push((sk, item_of(attrs)?));
            }
            match page.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => break,
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    async fn transact(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        validate_writes(&writes)?;
        let items = writes
            .iter()
            .map(|w| self.transact_item(w))
            .collect::<Result<Vec<_>, _>>()?;
        let token = uuid::Uuid::new_v4().simple().to_string();
        let r = retry(
            &self.policy,
            SERVICE,
            "TransactWriteItems",
            is_retriable,
            || {
                self.client
                    .transact_write_items()
                    .set_transact_items(Some(items.clone()))
                    .client_request_token(&token)
                    .send()
            },
        )
        .await;
        match r {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(e)) if e.err().is_transaction_canceled_exception() => {
                let reasons = match e.err() {
                    aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(t) => {
                        t.cancellation_reasons().to_vec()
                    }
                    _ => Vec::new(),
                };
                if let Some(i) = reasons
                    .iter()
                    .position(|r| r.code() == Some("ConditionalCheckFailed"))
                {
                    return Err(StoreError::Conflict { index: Some(i) });
                }
                let retriable = reasons.is_empty()
                    || reasons.iter().any(|r| {
                        matches!(
                            r.code(),
                            Some("TransactionConflict")
                                | Some("ThrottlingError")
                                | Some("ProvisionedThroughputExceeded")
                        )
                    });
                let codes: Vec<&str> = reasons.iter().filter_map(|r| r.code()).collect();
                Err(StoreError::Dynamo {
                    operation: "TransactWriteItems",
                    message: format!("transaction cancelled: {codes:?}"),
                    retriable,
                })
            }
            Err(e) => Err(dynamo_error("TransactWriteItems", &e)),
        }
    }
}
