//! The scoring crate's error type.

/// Errors of scoring. A failing dependency usually degrades the answer instead (see
/// [`crate::Recommendations::degraded`]); these are what is left.
#[derive(Debug, thiserror::Error)]
pub enum ScoringError {
    /// The feature store failed.
    #[error("feature store: {0}")]
    Store(#[from] recstream_features::StoreError),
    /// The cold-start cache failed (a bad Redis URL, Redis unreachable).
    #[error("cold-start cache: {0}")]
    Cache(String),
    /// The request is invalid (e.g. `n` out of range): the client's fault, HTTP 400.
    #[error("invalid request: {0}")]
    BadRequest(String),
    /// The feedback objects could not be listed or read (the next poll retries).
    #[error("feedback: {0}")]
    Feedback(String),
}
