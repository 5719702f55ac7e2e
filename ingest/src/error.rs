//! The ingest crate's error type.

use std::io;

/// Errors of sources, the archive and the object stores. `retriable()` says whether
/// trying again can help (throttling, timeouts) or not (bad configuration, bad data).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("io error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("dataset `{dataset}`: {message}")]
    Dataset { dataset: String, message: String },
    #[error("parquet encoding failed: {0}")]
    Parquet(String),
    #[error("object store: {0}")]
    ObjectStore(String),
    #[error("{service} call {operation} failed: {message}")]
    Aws {
        service: &'static str,
        operation: &'static str,
        message: String,
        retriable: bool,
    },
    #[error("lease for shard {shard} is held by {owner}")]
    LeaseLost { shard: String, owner: String },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("checkpoint store: {0}")]
    Checkpoint(String),
}

impl IngestError {
    pub fn io(path: impl Into<String>, source: io::Error) -> IngestError {
        IngestError::Io {
            path: path.into(),
            source,
        }
    }

    /// The parts of an AWS failure that other crates' error types carry (operation,
    /// message, whether a retry can help), so they map the one AWS error mapping instead of
    /// repeating it. A non-AWS error reports `fallback` as its operation.
    pub fn into_aws_parts(self, fallback: &'static str) -> (&'static str, String, bool) {
        match self {
            IngestError::Aws {
                operation,
                message,
                retriable,
                ..
            } => (operation, message, retriable),
            other => (fallback, other.to_string(), other.retriable()),
        }
    }

    pub fn retriable(&self) -> bool {
        match self {
            IngestError::Aws { retriable, .. } => *retriable,
            IngestError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::Interrupted | io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ),
            _ => false,
        }
    }
}
