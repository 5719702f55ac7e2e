//! The eval crate's error type.

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("invalid evaluation parameters: {0}")]
    InvalidParams(String),
    #[error("training failed: {0}")]
    Model(#[from] recstream_model::ModelError),
    #[error("the served path failed: {0}")]
    Scoring(#[from] recstream_scoring::ScoringError),
    #[error("matrix is not positive definite (pivot {0})")]
    NotPositiveDefinite(usize),
}

pub type Result<T> = std::result::Result<T, EvalError>;
