//! The model crate's error type.

use recstream_ingest::IngestError;

/// Errors of training, artifacts and exports. `retriable()` says whether trying again can
/// help (a throttled object store) or not (bad parameters, too little data, corrupt files).
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A parameter is out of range; found before any work.
    #[error("invalid parameter: {0}")]
    InvalidParams(String),
    /// The data cannot train a model (no repeat users, no candidates); says what is missing.
    #[error("not enough data: {0}")]
    NotEnoughData(String),
    /// The event source went back in time (an archive whose partitions are not in event
    /// time order): streamed training cannot sort it; load the whole log and sort it.
    #[error("events out of time order: {0}")]
    Unsorted(String),
    /// A linfa routine failed.
    #[error("linfa: {0}")]
    Linfa(#[from] linfa::Error),
    /// Fitting the logistic regression failed.
    #[error("logistic regression: {0}")]
    Logistic(#[from] linfa_logistic::error::Error),
    /// The FTRL model failed.
    #[error("ftrl: {0}")]
    Ftrl(#[from] linfa_ftrl::FtrlError),
    /// K-means failed.
    #[error("k-means: {0}")]
    KMeans(#[from] linfa_clustering::KMeansError),
    /// The k-means parameters were refused.
    #[error("k-means parameters: {0}")]
    KMeansParams(#[from] linfa_clustering::KMeansParamsError),
    /// Dimensionality reduction of the embeddings failed.
    #[error("dimensionality reduction: {0}")]
    Reduction(#[from] linfa_reduction::ReductionError),
    /// The nearest-neighbour index failed.
    #[error("nearest neighbours: {0}")]
    Nn(String),
    /// Reading or writing the object store failed.
    #[error("object store: {0}")]
    Store(#[from] IngestError),
    /// An artifact exists but cannot be read back.
    #[error("corrupt artifact {key}: {message}")]
    Corrupt {
        /// Its object key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// An artifact object the load asked for is not in the store.
    #[error("artifact {key} is missing")]
    Missing {
        /// Its object key.
        key: String,
    },
    /// The artifact does not fit this build or the data it is used on (format version,
    /// feature schema).
    #[error("incompatible artifact: {0}")]
    Incompatible(String),
    /// JSON encoding or decoding failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// Reading or writing CSV failed.
    #[error("csv: {0}")]
    Csv(#[from] csv::Error),
    /// Building Arrow arrays failed.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// Reading or writing Parquet failed.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// Local file I/O failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A blocking task panicked or was cancelled.
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

/// The crate's result type.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
