//! recstream-lambda: the same crates as AWS Lambda functions — one router, one shard
//! processor, one training job, two front doors (the `recstream` binary and Lambda).
//!
//! ```text
//!  Kinesis ─ event source mapping ─► stream-processor  stream::StreamProcessor
//!                                     └─► recstream_pipeline::ShardProcessor (the workers' code)
//!                                         checkpoints: checkpoint::ConditionalCheckpoints
//!  API Gateway (HTTP API, JWT) ─────► http-api          http::build ─► recstream_serving::api
//!  commerce table stream + schedule ─► saga             jobs::saga_pass ─► CommerceState::run_saga_pass
//!  EventBridge schedule ────────────► cart-sweep        jobs::sweep_carts ─► CommerceState::sweep_carts
//!  EventBridge schedule ────────────► train             jobs::train ─► recstream::cmd_model::train
//! ```
//!
//! Every function reads the configuration the binary reads — defaults, then
//! `RECSTREAM__SECTION__KEY` environment variables (the SAM template sets them) — and
//! builds its clients once per cold start ([`config_from_env`]); handlers are thin calls
//! into the library crates. Endpoints and credentials come from the SDK's environment,
//! so the functions run against AWS or an emulator unchanged. Build with cargo-lambda:
//! `cargo lambda build --release --arm64` (one `bootstrap` per binary, provided.al2023).

pub mod checkpoint;
pub mod error;
pub mod http;
pub mod jobs;
pub mod stream;

use std::sync::Arc;

use recstream::config::{Config, Mode};
use recstream_features::store::dynamodb::DynamoFeatureStore;
use recstream_ingest::aws::sdk_config;
use recstream_ingest::object_store::s3::S3ObjectStore;
use recstream_ingest::source::kinesis::SdkKinesis;
use recstream_pipeline::{Pipeline, Sinks};

pub use error::LambdaError;

use crate::checkpoint::ConditionalCheckpoints;
use crate::stream::{ReadAhead, StreamProcessor};

/// The configuration from the environment (defaults < `RECSTREAM__*`), validated.
pub fn config_from_env() -> Result<Config, LambdaError> {
    Config::load(None).map_err(LambdaError::Config)
}

/// JSON logs on stderr (CloudWatch Logs), filtered by `RECSTREAM_LOG` / `RUST_LOG`.
pub fn init_tracing() {
    let filter = std::env::var("RECSTREAM_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_target(false)
        .without_time() // CloudWatch stamps every line
        .with_writer(std::io::stderr)
        .try_init();
}

impl StreamProcessor {
    /// The stream processor of a deployment (`mode = "aws"`): DynamoDB features,
    /// conditional checkpoints in `<prefix>lambda-checkpoints`, S3 for the archive and
    /// snapshots, Kinesis for reading ahead.
    pub async fn from_config(cfg: &Config) -> Result<StreamProcessor, LambdaError> {
        if cfg.mode != Mode::Aws {
            return Err(LambdaError::Config(
                "the stream processor needs RECSTREAM__MODE=aws".into(),
            ));
        }
        let sdk = sdk_config(cfg.aws.region.as_deref()).await;
        let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
        let store = Arc::new(DynamoFeatureStore::with_client(
            dynamo.clone(),
            &cfg.aws,
            cfg.features.clone(),
        ));
        let sinks = Sinks {
            features: store.clone(),
            state: store,
            checkpoints: Arc::new(ConditionalCheckpoints::new(dynamo, &cfg.aws)),
            objects: Arc::new(S3ObjectStore::new(&sdk, &cfg.aws)),
            catalog: recstream::runtime::catalog_check(cfg).await,
        };
        let read_ahead = ReadAhead {
            api: Arc::new(SdkKinesis(aws_sdk_kinesis::Client::new(&sdk))),
            consumer: cfg.kinesis.consumer.clone(),
            policy: cfg.aws.retry_policy(),
        };
        Ok(StreamProcessor::new(
            Pipeline::new(sinks, cfg.features.clone(), cfg.processor.clone()),
            Some(read_ahead),
        ))
    }
}
