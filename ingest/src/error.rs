//! The ingest crate's error type.

use std::io;

/// Errors of sources, the archive and the object stores. `retriable()` says whether
/// trying again can help (throttling, timeouts) or not (bad configuration, bad data).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A file could not be read or written (dataset files, the local object store).
    #[error("io error on {path}: {source}")]
    Io {
        /// The file's path.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A dataset file does not look like the dataset it is said to be (missing columns,
    /// unknown layout).
    #[error("dataset `{dataset}`: {message}")]
    Dataset {
        /// The dataset's name, e.g. `rees46`.
        dataset: String,
        /// What is wrong, with the file and line where known.
        message: String,
    },
    /// Writing or reading the Parquet archive failed (schema mismatch, corrupt file).
    #[error("parquet encoding failed: {0}")]
    Parquet(String),
    /// An object's content could not be encoded or decoded (a dead-letter file), or the
    /// store failed for a reason that is neither local I/O nor an AWS call.
    #[error("object store: {0}")]
    ObjectStore(String),
    /// An AWS call failed after the retry policy's attempts.
    #[error("{service} call {operation} failed: {message}")]
    Aws {
        /// `kinesis`, `dynamodb` or `s3`.
        service: &'static str,
        /// The API operation, e.g. `PutRecords`.
        operation: &'static str,
        /// The service's (or the transport's) description.
        message: String,
        /// Whether a later retry can help (throttling, timeouts, 5xx).
        retriable: bool,
    },
    /// This worker no longer holds the shard's lease: another worker took it (the
    /// processor stops reading the shard and does not checkpoint).
    #[error("lease for shard {shard} is held by {owner}")]
    LeaseLost {
        /// The shard whose lease was lost.
        shard: String,
        /// The worker (or tenure) the table names now.
        owner: String,
    },
    /// A setting is out of range or inconsistent; found at start-up, never retriable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The embedded checkpoint store failed, or a checkpoint it holds cannot be read back.
    #[error("checkpoint store: {0}")]
    Checkpoint(String),
}

impl IngestError {
    /// An [`IngestError::Io`] on `path`.
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

    /// Whether trying again can help: AWS errors as the service said, I/O errors that are
    /// interruptions or timeouts; never bad data or configuration.
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
