//! The http-api function: the server's router (`recstream_serving::api`, with the
//! commerce routes) behind `lambda_http` — one router, two front doors.
//!
//! ```text
//!  API Gateway HTTP API (v2 payload) ─► lambda_http ─► http::Request ─► axum Router
//!     recommendations, similar, segments, collector (─► Kinesis), commerce (JWT), healthz …
//!  cold start: Runtime::open (stores as configured) ─► models/CURRENT ─► collector sink
//!              ─► commerce state ─► router; the model reloader runs while the
//!              environment is thawed
//! ```

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Router;
use recstream::config::Config;
use recstream::runtime::Runtime;
use recstream_pipeline::ShardTask;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::LambdaError;

/// The router and what keeps it running for the life of the execution environment.
pub struct HttpApp {
    /// The API, as `recstream run` serves it.
    pub router: Router,
    /// The stores, recommender and model the router serves from.
    pub runtime: Runtime,
    /// Turned true on drop of the app (tests); Lambda freezes, then ends, the process.
    pub shutdown: watch::Sender<bool>,
    /// The in-process collector shard (embedded mode only; AWS mode puts to Kinesis).
    pub collector: Option<ShardTask>,
    /// Reloads `models/CURRENT` while the environment is thawed.
    pub reloader: JoinHandle<()>,
}

/// Builds the router the `recstream run --role serve` server serves, from `cfg`.
pub async fn build(cfg: Config) -> Result<HttpApp, LambdaError> {
    let rt = Runtime::open(cfg).await.map_err(LambdaError::startup)?;
    if let Err(e) = rt.reload_model().await {
        tracing::warn!(error = %format!("{e:#}"), "no model loaded at start-up; serving without one");
    }
    if let Err(e) = rt.refresh_cold_start().await {
        tracing::warn!(error = %format!("{e:#}"), "cold-start lists not refreshed");
    }
    let (shutdown, rx) = watch::channel(false);
    let (sink, collector) = rt
        .spawn_collector(rx.clone())
        .await
        .map_err(LambdaError::startup)?;
    let commerce = rt
        .commerce(sink.clone())
        .await
        .map_err(LambdaError::startup)?;
    let router = rt.app(sink, commerce, Arc::new(AtomicBool::new(true)));
    let reloader = rt.spawn_model_reloader(rx);
    Ok(HttpApp {
        router,
        runtime: rt,
        shutdown,
        collector,
        reloader,
    })
}
