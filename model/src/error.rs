//! The model crate's error type.

use recstream_ingest::IngestError;

/// Errors of training, artifacts and exports. `retriable()` says whether trying again can
/// help (a throttled object store) or not (bad parameters, too little data, corrupt files).
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid parameter: {0}")]
    InvalidParams(String),
    #[error("not enough data: {0}")]
    NotEnoughData(String),
    #[error("linfa: {0}")]
    Linfa(#[from] linfa::Error),
    #[error("logistic regression: {0}")]
    Logistic(#[from] linfa_logistic::error::Error),
    #[error("ftrl: {0}")]
    Ftrl(#[from] linfa_ftrl::FtrlError),
    #[error("k-means: {0}")]
    KMeans(#[from] linfa_clustering::KMeansError),
    #[error("k-means parameters: {0}")]
    KMeansParams(#[from] linfa_clustering::KMeansParamsError),
    #[error("dimensionality reduction: {0}")]
    Reduction(#[from] linfa_reduction::ReductionError),
    #[error("nearest neighbours: {0}")]
    Nn(String),
    #[error("object store: {0}")]
    Store(#[from] IngestError),
    #[error("corrupt artifact {key}: {message}")]
    Corrupt { key: String, message: String },
    #[error("artifact {key} is missing")]
    Missing { key: String },
    #[error("incompatible artifact: {0}")]
    Incompatible(String),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("csv: {0}")]
    Csv(#[from] csv::Error),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("background task failed: {0}")]
    Task(String),
}

impl ModelError {
    /// Whether retrying the same call can help.
    pub fn retriable(&self) -> bool {
        match self {
            ModelError::Store(e) => e.retriable(),
            _ => false,
        }
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
