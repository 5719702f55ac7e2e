//! The commerce store: a small transactional key-value seam that both the embedded
//! database (redb) and DynamoDB implement, so every commerce flow is written once.
//!
//! ```text
//!  cart / checkout / saga services
//!        │ get(pk, sk) · query(pk, after, limit) · transact([put|delete|check] with conditions)
//!        ▼
//!  CommerceStore ─┬─► EmbeddedStore: one redb write transaction per `transact`
//!                 └─► DynamoStore:  TransactWriteItems (≤ 100 writes, all-or-nothing)
//! ```
//!
//! Every item carries a version, bumped by each put. Optimistic concurrency is a put with
//! [`Cond::Version`]; creation is [`Cond::Absent`]. A transaction whose condition fails
//! changes nothing and returns [`StoreError::Conflict`]. That is all the flows need for a
//! transactional outbox: a state change and the events it causes are one `transact`.
//! Both implementations pass `conformance::run_all` (behind the `testsuite` feature).

#[cfg(any(test, feature = "testsuite"))]
pub mod conformance;
pub mod dynamodb;
pub mod embedded;

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use dynamodb::DynamoStore;
pub use embedded::EmbeddedStore;

/// Most writes in one transaction (DynamoDB's TransactWriteItems limit).
pub const MAX_WRITES: usize = 100;
/// Largest value (DynamoDB's item limit is 400 KB, key and attributes included).
pub const MAX_VALUE_BYTES: usize = 350 * 1024;
/// Longest partition or sort key.
pub const MAX_KEY_BYTES: usize = 1024;

/// An item's address: partition key and sort key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// Partition key, e.g. `cart#<user>` or `outbox`.
    pub pk: String,
    /// Sort key within the partition (`-` for single-item partitions).
    pub sk: String,
}

impl Key {
    /// The key `pk`/`sk`.
    pub fn new(pk: impl Into<String>, sk: impl Into<String>) -> Key {
        Key {
            pk: pk.into(),
            sk: sk.into(),
        }
    }
}

/// A stored value and its version (1 after the first put).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The stored bytes (JSON for every commerce type).
    pub value: Vec<u8>,
    /// Bumped by each put; the value [`Cond::Version`] checks.
    pub version: u64,
}

/// What must hold for a write to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cond {
    /// Nothing.
    Any,
    /// The item does not exist.
    Absent,
    /// The item exists and has this version.
    Version(u64),
}

impl Cond {
    /// `Absent` for a new item, `Version(v)` for one read at version `v`.
    pub fn from_read(version: Option<u64>) -> Cond {
        match version {
            Some(v) => Cond::Version(v),
            None => Cond::Absent,
        }
    }
}

/// One write of a transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Creates or replaces the value; the version becomes the old one + 1 (1 if new).
    /// `expires_at_s` (epoch seconds) lets the store drop the item after that time
    /// (DynamoDB TTL; the embedded store's purge); readers must still check expiry.
    Put {
        /// The item written.
        key: Key,
        /// The new value.
        value: Vec<u8>,
        /// What must hold before the write.
        cond: Cond,
        /// When the store may drop the item, epoch seconds; `None` = never.
        expires_at_s: Option<i64>,
    },
    /// Removes the item (a no-op if absent and `cond` allows it).
    Delete {
        /// The item removed.
        key: Key,
        /// What must hold before the write.
        cond: Cond,
    },
    /// Writes nothing; only checks `cond`.
    Check {
        /// The item checked.
        key: Key,
        /// What must hold.
        cond: Cond,
    },
}

impl Write {
    /// The item this write touches.
    pub fn key(&self) -> &Key {
        match self {
            Write::Put { key, .. } | Write::Delete { key, .. } | Write::Check { key, .. } => key,
        }
    }

    /// A put with no expiry.
    pub fn put(key: Key, value: Vec<u8>, cond: Cond) -> Write {
        Write::Put {
            key,
            value,
            cond,
            expires_at_s: None,
        }
    }

    /// A put of `value` as JSON.
    pub fn put_json<T: Serialize>(key: Key, value: &T, cond: Cond) -> Result<Write, StoreError> {
        Ok(Write::put(key, to_json(value)?, cond))
    }

    /// A delete under `cond`.
    pub fn delete(key: Key, cond: Cond) -> Write {
        Write::Delete { key, cond }
    }
}

/// Why a commerce store call failed. `retriable()` says whether a later retry can help.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A condition failed; nothing was written. `index` is the failing write when known.
    #[error("write condition failed (write {index:?})")]
    Conflict {
        /// Position of the failing write in the transaction, when the store says.
        index: Option<usize>,
    },
    /// The transaction is malformed (too many writes, a key twice, a value too large).
    #[error("invalid transaction: {0}")]
    Invalid(String),
    /// The embedded database failed (I/O, a failed transaction, the writer thread gone).
    #[error("embedded store: {0}")]
    Embedded(String),
    /// A DynamoDB call failed after the retry policy's attempts.
    #[error("dynamodb {operation}: {message}")]
    Dynamo {
        /// The API operation, e.g. `TransactWriteItems`.
        operation: &'static str,
        /// The service's (or the transport's) description.
        message: String,
        /// Whether a later retry can help (throttling, timeouts, 5xx).
        retriable: bool,
    },
    /// A stored value could not be decoded, or a value could not be encoded.
    #[error("corrupt {what}: {message}")]
    Corrupt {
        /// What was being read or written, e.g. `cart`.
        what: &'static str,
        /// The JSON error.
        message: String,
    },
}

impl StoreError {
    /// Whether trying again later can help.
    pub fn retriable(&self) -> bool {
        match self {
            StoreError::Conflict { .. } => true,
            StoreError::Dynamo { retriable, .. } => *retriable,
            StoreError::Embedded(_) => true,
            StoreError::Invalid(_) | StoreError::Corrupt { .. } => false,
        }
    }

    /// Whether a write condition failed (a concurrent change: re-read and retry).
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }
}

/// The commerce state store. Reads are strongly consistent.
#[async_trait]
pub trait CommerceStore: Send + Sync + 'static {
    /// A short name for logs and metrics (`embedded`, `dynamodb`).
    fn name(&self) -> &'static str;

    /// The item at `key`, if it exists.
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError>;

    /// Items of partition `pk` with sort key `> after` (all if `None`), ascending by sort
    /// key, at most `limit`.
    async fn query(
        &self,
        pk: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Item)>, StoreError>;

    /// Applies all writes or none. At most [`MAX_WRITES`], each key at most once.
    async fn transact(&self, writes: Vec<Write>) -> Result<(), StoreError>;

    /// Drops items whose `expires_at_s` is before `now_s`; returns how many. DynamoDB
    /// does this itself (TTL on `ttl`), so its implementation is a no-op.
    async fn purge_expired(&self, _now_s: i64) -> Result<usize, StoreError> {
        Ok(0)
    }
}

/// Checks the shape of a transaction the same way in every implementation.
pub fn validate_writes(writes: &[Write]) -> Result<(), StoreError> {
    if writes.is_empty() {
        return Err(StoreError::Invalid("empty transaction".into()));
    }
    if writes.len() > MAX_WRITES {
        return Err(StoreError::Invalid(format!(
            "{} writes in one transaction; at most {MAX_WRITES}",
            writes.len()
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(writes.len());
    for w in writes {
        let k = w.key();
        if k.pk.is_empty() || k.sk.is_empty() {
            return Err(StoreError::Invalid("empty key".into()));
        }
        if k.pk.len() > MAX_KEY_BYTES || k.sk.len() > MAX_KEY_BYTES {
            return Err(StoreError::Invalid("key too long".into()));
        }
        if !seen.insert(k) {
            return Err(StoreError::Invalid(format!(
                "key {}/{} written twice in one transaction",
                k.pk, k.sk
            )));
        }
        if let Write::Put { value, .. } = w
            && value.len() > MAX_VALUE_BYTES
        {
            return Err(StoreError::Invalid(format!(
                "value of {} bytes; at most {MAX_VALUE_BYTES}",
                value.len()
            )));
        }
    }
    Ok(())
}

/// Encodes a value for [`Write::put`]; `Err(StoreError::Corrupt)` if serde fails.
pub fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt {
        what: "value",
        message: e.to_string(),
    })
}

/// Decodes a stored value; `what` names it in the error.
pub fn from_json<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        what,
        message: e.to_string(),
    })
}

/// Reads a JSON value and its version.
pub async fn get_json<T: DeserializeOwned>(
    store: &dyn CommerceStore,
    what: &'static str,
    key: &Key,
) -> Result<Option<(T, u64)>, StoreError> {
    match store.get(key).await? {
        Some(item) => Ok(Some((from_json(what, &item.value)?, item.version))),
        None => Ok(None),
    }
}
