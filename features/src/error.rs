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
