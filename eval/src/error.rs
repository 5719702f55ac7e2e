//! The eval crate's error type.

/// What an evaluation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A parameter is out of range (see [`crate::EvalParams::validate`]).
    #[error("invalid evaluation parameters: {0}")]
    InvalidParams(String),
    /// Training the served model on the training part failed.
    #[error("training failed: {0}")]
    Model(#[from] recstream_model::ModelError),
    /// The served path (`Recommender::recommend`) returned an error.
    #[error("the served path failed: {0}")]
    Scoring(#[from] recstream_scoring::ScoringError),
    /// EASE's Gram matrix plus λI could not be inverted by Cholesky (λ too small).
    #[error("matrix is not positive definite (pivot {0})")]
    NotPositiveDefinite(usize),
}

/// The eval crate's result.
pub type Result<T> = std::result::Result<T, EvalError>;
