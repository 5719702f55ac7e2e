//! The lambda crate's error type: what a handler or a cold start can fail with, each with
//! a stable code (the `errorType` Lambda records and the alarms filter on).

use lambda_runtime::Diagnostic;

/// What a Lambda handler or its cold start can fail with.
#[derive(Debug, thiserror::Error)]
pub enum LambdaError {
    /// The environment does not describe a usable configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// The event is not the shape the function is subscribed to.
    #[error("bad event: {0}")]
    BadEvent(String),
    /// Building the clients and stores at a cold start failed.
    #[error("start-up: {0}")]
    Startup(String),
    /// The shard processor failed (store, archive or checkpoint I/O).
    #[error(transparent)]
    Processor(#[from] recstream_pipeline::ProcessorError),
    /// A source, sink or object-store call failed.
    #[error(transparent)]
    Ingest(#[from] recstream_ingest::IngestError),
    /// A commerce operation (the cart sweep) failed.
    #[error(transparent)]
    Commerce(#[from] recstream_commerce::CommerceError),
    /// The training job failed.
    #[error("training: {0}")]
    Train(String),
}

impl LambdaError {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            LambdaError::Config(_) => "config",
            LambdaError::BadEvent(_) => "bad_event",
            LambdaError::Startup(_) => "startup",
            LambdaError::Processor(_) => "processor",
            LambdaError::Ingest(_) => "ingest",
            LambdaError::Commerce(_) => "commerce",
            LambdaError::Train(_) => "train",
        }
    }

    /// A start-up failure from the binary's wiring (which reports with anyhow).
    pub fn startup(e: anyhow::Error) -> LambdaError {
        LambdaError::Startup(format!("{e:#}"))
    }
}

impl From<LambdaError> for Diagnostic {
    fn from(e: LambdaError) -> Diagnostic {
        Diagnostic {
            error_type: format!("recstream.{}", e.code()),
            error_message: e.to_string(),
        }
    }
}
