//! Lambda function `stream-processor`: Kinesis event source mapping ─► the shard processor
//! (see `recstream_lambda::stream`). Reports `batchItemFailures`
//! (FunctionResponseTypes: ReportBatchItemFailures).

use aws_lambda_events::event::kinesis::KinesisEvent;
use lambda_runtime::{LambdaEvent, service_fn};
use recstream_lambda::stream::StreamProcessor;
use recstream_lambda::{config_from_env, init_tracing};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    init_tracing();
    let cfg = config_from_env()?;
    let processor = StreamProcessor::from_config(&cfg).await?;
    let processor = &processor;
    lambda_runtime::run(service_fn(
        move |ev: LambdaEvent<KinesisEvent>| async move { processor.handle(ev.payload).await },
    ))
    .await
}
