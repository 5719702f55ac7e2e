//! Lambda function `http-api`: API Gateway (HTTP API, payload v2) ─► the server's router.

use recstream_lambda::{config_from_env, http, init_tracing};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    init_tracing();
    let app = http::build(config_from_env()?).await?;
    lambda_http::run(app.router.clone()).await
}
