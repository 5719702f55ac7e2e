//! Lambda function `saga`: the commerce table's stream (outbox inserts) and a one-minute
//! EventBridge schedule ─► one saga pass (timers, outbox relay, the four consumers, until
//! idle). On Lambda nothing runs between invocations, so this function is what moves
//! orders after checkout; `recstream run` runs the same steps as background tasks.

use std::time::Duration;

use lambda_runtime::{LambdaEvent, service_fn};
use recstream_lambda::jobs::{self, SagaTrigger};
use recstream_lambda::{config_from_env, init_tracing};

/// The longest a pass runs, whatever the function's timeout.
const MAX_PASS: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    init_tracing();
    let cfg = config_from_env()?;
    let (_rt, sink, _stop) = jobs::open_runtime(cfg.clone()).await?;
    let state = jobs::commerce_state(&cfg, sink).await?;
    let state = &state;
    lambda_runtime::run(service_fn(move |ev: LambdaEvent<SagaTrigger>| async move {
        jobs::saga_pass(state, &ev.payload, ev.context.deadline, MAX_PASS).await
    }))
    .await
}
