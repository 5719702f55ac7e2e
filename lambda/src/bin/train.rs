//! Lambda function (or container entry point) `train`: an EventBridge schedule ─► train on
//! the S3 archive, publish `models/<version>/`, move `models/CURRENT`, refresh the
//! cold-start lists in Redis. With `--once` it runs one training and exits (the ECS /
//! Fargate scheduled task of docs/operations.md).

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use lambda_runtime::{LambdaEvent, service_fn};
use recstream_lambda::{config_from_env, init_tracing, jobs};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    init_tracing();
    let (rt, _sink, _stop) = jobs::open_runtime(config_from_env()?).await?;
    if std::env::args().any(|a| a == "--once") {
        let outcome = jobs::train(&rt).await?;
        println!("{}", serde_json::to_string(&outcome)?);
        return Ok(());
    }
    let rt = &rt;
    lambda_runtime::run(service_fn(
        move |ev: LambdaEvent<EventBridgeEvent>| async move {
            tracing::info!(id = ?ev.payload.id, "scheduled training");
            jobs::train(rt).await
        },
    ))
    .await
}
