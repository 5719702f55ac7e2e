//! Lambda function `cart-sweep`: an EventBridge schedule ─► one cart availability sweep.

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use lambda_runtime::{LambdaEvent, service_fn};
use recstream_lambda::{config_from_env, init_tracing, jobs};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    init_tracing();
    let cfg = config_from_env()?;
    let (_rt, sink, _stop) = jobs::open_runtime(cfg.clone()).await?;
    let state = jobs::commerce_state(&cfg, sink).await?;
    let state = &state;
    lambda_runtime::run(service_fn(
        move |ev: LambdaEvent<EventBridgeEvent>| async move {
            tracing::info!(id = ?ev.payload.id, time = ?ev.payload.time, "scheduled cart sweep");
            jobs::sweep_carts(state).await
        },
    ))
    .await
}
