//! The scoring crate's error type.

#[derive(Debug, thiserror::Error)]
pub enum ScoringError {
    #[error("feature store: {0}")]
    Store(#[from] recstream_features::StoreError),
    #[error("cold-start cache: {0}")]
    Cache(String),
    #[error("invalid request: {0}")]
    BadRequest(String),
}
