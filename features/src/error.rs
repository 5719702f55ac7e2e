//! The features crate's error type.

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("embedded database: {0}")]
    Embedded(String),
    #[error("dynamodb {operation} failed: {message}")]
    Dynamo {
        operation: &'static str,
        message: String,
        retriable: bool,
    },
    #[error("corrupt {what}: {message}")]
    Corrupt { what: &'static str, message: String },
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl StoreError {
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
