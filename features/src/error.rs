//! The features crate's error type.

/// Errors of the feature stores. `retriable()` says whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The embedded database (redb) failed: I/O, a full disk, a failed transaction.
    #[error("embedded database: {0}")]
    Embedded(String),
    /// A DynamoDB call failed after the retry policy's attempts.
    #[error("dynamodb {operation} failed: {message}")]
    Dynamo {
        /// The API operation, e.g. `BatchWriteItem`.
        operation: &'static str,
        /// The service's (or the transport's) description.
        message: String,
        /// Whether a later retry can help (throttling, timeouts, 5xx).
        retriable: bool,
    },
    /// A stored value could not be decoded (written by an incompatible version, or damaged).
    #[error("corrupt {what}: {message}")]
    Corrupt {
        /// What was being read, e.g. `user`.
        what: &'static str,
        /// The decoder's message.
        message: String,
    },
    /// A setting is out of range or inconsistent; found at start-up, never retriable.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl StoreError {
    /// Whether trying again can help: only DynamoDB errors the service marked retriable.
    pub fn retriable(&self) -> bool {
        matches!(
            self,
            StoreError::Dynamo {
                retriable: true,
                ..
            }
        )
    }
}

/// AWS errors from the shared helper layer (`recstream_ingest::aws`) keep their operation
/// and whether a retry can help.
impl From<recstream_ingest::IngestError> for StoreError {
    fn from(e: recstream_ingest::IngestError) -> Self {
        use recstream_ingest::IngestError;
        match e {
            IngestError::Config(m) => StoreError::Config(m),
            e @ IngestError::Aws { .. } => {
                let (operation, message, retriable) = e.into_aws_parts("aws");
                StoreError::Dynamo {
                    operation,
                    message,
                    retriable,
                }
            }
            other => StoreError::Corrupt {
                what: "aws response",
                message: other.to_string(),
            },
        }
    }
}

macro_rules! embedded_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Embedded(e.to_string()) }
        }
    )*};
}
embedded_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
