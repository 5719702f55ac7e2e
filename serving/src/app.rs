//! The router: recommendation endpoints, the collector and health; the metrics router for
//! the internal listener. Each handler carries its OpenAPI description (`#[utoipa::path]`,
//! registered with the handler by [`openapi_routes`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use recstream_scoring::{Recommender, Request as RecRequest};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Access, Caller};
use crate::error::{ApiError, ErrorBody};
use crate::metrics as m;
use recstream_ingest::sink::{EventSink, OutRecord, SinkError};

/// Largest `POST /v1/events` body.
pub const MAX_EVENTS_BODY: usize = 1024 * 1024;
/// Most events in one `POST /v1/events`.
pub const MAX_EVENTS_PER_REQUEST: usize = 500;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// Answers `GET /v1/recommendations/…` and the similar-products endpoint.
    pub recommender: Arc<Recommender>,
    /// Takes the records of `POST /v1/events`.
    pub collector: Arc<dyn EventSink>,
    /// Who may call what (API keys, the JWT verifier, role groups).
    pub access: Arc<Access>,
    /// Turns true once the initial load (replay, model) is done.
    pub ready: Arc<AtomicBool>,
    /// Largest single event accepted by `POST /v1/events`, bytes.
    pub max_record_bytes: usize,
    /// How far an event's `ts` may be from the server clock when it arrives: outside, the
    /// collector answers 422 instead of accepting an event the processor would only
    /// dead-letter (`processor.max_future_skew_ms` / `max_event_age_ms`).
    pub event_time: EventTimeBounds,
    /// Where served lists go (as `recommendation` events on the collector's stream);
    /// `None`: not published.
    pub served: Option<crate::publish::ServedLists>,
}

/// The event-time bounds the collector applies at arrival, the same ones the shard
/// processor applies to every record (`recstream_ingest::decode::check_time_bounds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTimeBounds {
    /// At most this far in the future, ms.
    pub max_future_skew_ms: u64,
    /// At most this old, ms (0: no limit).
    pub max_event_age_ms: u64,
}

impl Default for EventTimeBounds {
    /// The processor's defaults: 5 minutes ahead, no age limit.
    fn default() -> Self {
        EventTimeBounds {
            max_future_skew_ms: recstream_ingest::decode::DEFAULT_MAX_FUTURE_SKEW_MS,
            max_event_age_ms: 0,
        }
    }
}

/// The HTTP API: recommendations, similar products, the event collector, health and
/// readiness, with per-route request metrics.
pub fn router(state: AppState) -> Router {
    let access = state.access.clone();
    finish(openapi_routes(state).into(), access)
}

/// This module's routes with their OpenAPI description, state applied.
pub fn openapi_routes(state: AppState) -> OpenApiRouter {
    let events = OpenApiRouter::new()
        .routes(routes!(collect))
        .layer(DefaultBodyLimit::max(MAX_EVENTS_BODY));
    OpenApiRouter::new()
        .routes(routes!(recommendations))
        .routes(routes!(similar))
        .merge(events)
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .with_state(state)
}

/// What wraps the whole API router: JSON 404/405 fallbacks, per-route request metrics
/// and the credential verifiers ([`Access`], read by the [`Caller`] extractor).
pub fn finish(app: Router, access: Arc<Access>) -> Router {
    app.fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this endpoint",
            )
        })
        .layer(middleware::from_fn(track))
        .layer(axum::Extension(access))
}

/// `GET /metrics` (Prometheus text) alone, for the internal listener
/// (`server.metrics_listen`): operations data never shares the public port.
pub fn metrics_router(handle: PrometheusHandle) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let h = handle.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        h.render(),
                    )
                        .into_response()
                }
            }),
        )
        .fallback(|| async { ApiError::not_found("no such endpoint") })
}

/// Per-request metrics by route pattern (bounded labels; never the user id).
async fn track(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::histogram!(m::REQUEST_SECONDS, "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(m::REQUESTS_TOTAL, "route" => route, "status" => status).increment(1);
    resp
}

/// The query of `GET /v1/recommendations/{user_id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct RecQuery {
    /// List length, 1 to `scoring.max_n` (default `scoring.default_n`).
    #[param(minimum = 1)]
    n: Option<usize>,
    /// Comma-separated product ids (the page or the cart), at most 50.
    context: Option<String>,
}

/// The body of `GET /v1/recommendations/{user_id}`.
#[derive(Serialize, ToSchema)]
struct RecResponse {
    /// Identifies this list; send it back on the events it leads to (feedback).
    recommendation_id: String,
    /// The list: `items` (product id, score, reason), the `strategy` used, and more.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    body: recstream_scoring::Recommendations,
}

/// The body of `GET /v1/products/{product_id}/similar`.
#[derive(Serialize, ToSchema)]
struct SimilarResponse {
    /// The product asked about.
    product_id: String,
    /// Products bought or viewed together with it, best first.
    #[schema(value_type = Vec<Object>)]
    items: Vec<recstream_scoring::Item>,
}

/// The body of a `202` from `POST /v1/events`.
#[derive(Serialize, ToSchema)]
struct Collected {
    /// Events sent on to the stream.
    accepted: usize,
    /// Repeated `event_id`s within the request, counted once.
    duplicates: usize,
}

/// The body of `/healthz` and `/readyz`.
#[derive(Serialize, ToSchema)]
struct Status {
    /// `ok` (alive) or `ready` (initial load done).
    status: &'static str,
}

fn check_id(what: &str, id: &str) -> Result<(), ApiError> {
    match recstream_ingest::decode::id_problem(id) {
        Some(problem) => Err(ApiError::bad_request(format!(
            "{what} {problem} (1 to 128 printable characters)"
        ))),
        None => Ok(()),
    }
}

/// A personalised list for a shopper (their own token, or a key with
/// `recommendations:read`), filtered to what the shop can sell.
#[utoipa::path(get, path = "/v1/recommendations/{user_id}", tag = "recommendations",
    params(("user_id" = String, Path, description = "The shopper: 1 to 128 printable characters."), RecQuery),
    responses((status = 200, description = "The list.", body = RecResponse)),
    security(("api_key" = []), ("bearer" = [])))]
async fn recommendations(
    State(st): State<AppState>,
    caller: Caller,
    user: Result<Path<String>, PathRejection>,
    q: Result<Query<RecQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(user_id) = user?;
    let Query(q) = q?;
    check_id("user_id", &user_id)?;
    caller.may_read_recommendations_of(&user_id)?;
    let context: Vec<String> = q
        .context
        .as_deref()
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if context.len() > 50 {
        return Err(ApiError::bad_request(
            "context takes at most 50 product ids",
        ));
    }
    for c in &context {
        check_id("context product id", c)?;
    }
    let req = RecRequest {
        user_id,
        n: q.n,
        context,
    };
    let recommendation_id = uuid::Uuid::now_v7().to_string();
    let logged = st.served.is_some().then_some(recommendation_id.as_str());
    let body = st
        .recommender
        .recommend_for(&req, logged)
        .await
        .map_err(crate::error::from_scoring)?;
    let n_items = body.items.len();
    if let Some(served) = &st.served
        && !body.items.is_empty()
    {
        served.publish(served_event(&recommendation_id, &body));
    }
    Ok(json_sized(
        &RecResponse {
            recommendation_id,
            body,
        },
        256 + 160 * n_items,
    ))
}

/// `value` as an `application/json` response, serialised once into a buffer of about
/// `capacity` bytes (axum's `Json` starts at 128 bytes and grows by doubling).
fn json_sized<T: Serialize>(value: &T, capacity: usize) -> Response {
    let mut buf = Vec::with_capacity(capacity);
    match serde_json::to_writer(&mut buf, value) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/json"),
            )],
            buf,
        )
            .into_response(),
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

/// The `recommendation` event of a response: the list as served, with the feature rows
/// the model ranked it with (serialised later, off the request path).
fn served_event(
    recommendation_id: &str,
    body: &recstream_scoring::Recommendations,
) -> recstream_ingest::Event {
    let now = recstream_ingest::Timestamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    );
    let items = body
        .items
        .iter()
        .enumerate()
        .map(|(i, it)| recstream_ingest::ServedItem {
            product_id: it.product_id.as_str().into(),
            position: i as u32 + 1,
            score: it.score,
            features: body
                .features
                .get(i)
                .map(|x| x.iter().map(|v| *v as f32).collect())
                .unwrap_or_default(),
        })
        .collect();
    let strategy = match body.strategy {
        recstream_scoring::Strategy::Personalized => "personalized",
        recstream_scoring::Strategy::ColdStart => "cold_start",
    };
    recstream_ingest::Event::recommendation(
        recommendation_id,
        now,
        &body.user_id,
        strategy,
        body.model_version.as_deref(),
        items,
    )
}

/// The query of `GET /v1/products/{product_id}/similar`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct SimilarQuery {
    /// List length, 1 to `scoring.max_n` (default `scoring.default_n`).
    #[param(minimum = 1)]
    n: Option<usize>,
}

/// Products similar to one (co-visitation), public.
#[utoipa::path(get, path = "/v1/products/{product_id}/similar", tag = "recommendations",
    params(("product_id" = String, Path, description = "1 to 128 printable characters."), SimilarQuery),
    responses((status = 200, description = "The similar products.", body = SimilarResponse),
        (status = 404, description = "`not_found`: the product has no similar products (unknown).", body = ErrorBody)))]
async fn similar(
    State(st): State<AppState>,
    product: Result<Path<String>, PathRejection>,
    q: Result<Query<SimilarQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(product_id) = product?;
    let Query(q) = q?;
    check_id("product_id", &product_id)?;
    let max = st.recommender.config().max_n;
    let n = q.n.unwrap_or(st.recommender.config().default_n);
    if n == 0 || n > max {
        return Err(ApiError::bad_request(format!("n must be in 1..={max}")));
    }
    match st
        .recommender
        .similar(&product_id, n)
        .await
        .map_err(crate::error::from_scoring)?
    {
        Some(items) => Ok(Json(SimilarResponse { product_id, items }).into_response()),
        None => Err(ApiError::not_found(format!(
            "unknown product `{product_id}`"
        ))),
    }
}

/// `POST /v1/events`: one event object, or an array of them.
/// The event collector: one clickstream event or an array of 1 to 500 (a key with
/// `events:write`, or the shopper's token for their own events).
#[utoipa::path(post, path = "/v1/events", tag = "events",
    request_body(content = Object, description = "An event (`event_id`, `ts`, `user_id`, `type`, `product_id`, `category`, `price`, …; see the README's Event section) or an array of them.",
        example = json!({"event_id": "e1", "ts": "2019-10-01T03:00:00Z", "user_id": "u1", "type": "view", "product_id": "1004856"})),
    responses((status = 202, description = "Accepted onto the stream.", body = Collected),
        (status = 422, description = "`invalid_event` (bad field, event time out of bounds) or `unknown_product` (not in the catalog).", body = ErrorBody),
        (status = 503, description = "`busy` or `unavailable`: retry later.", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
async fn collect(
    State(st): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        metrics::counter!(m::EVENTS_REJECTED_TOTAL, "reason" => "malformed").increment(1);
        ApiError::bad_request(format!("malformed json: {e}"))
    })?;
    let items = match value {
        serde_json::Value::Array(a) => a,
        v @ serde_json::Value::Object(_) => vec![v],
        _ => {
            return Err(ApiError::bad_request(
                "expected an event object or an array of events",
            ));
        }
    };
    if items.is_empty() || items.len() > MAX_EVENTS_PER_REQUEST {
        return Err(ApiError::bad_request(format!(
            "send 1 to {MAX_EVENTS_PER_REQUEST} events per request"
        )));
    }
    let mut out = Vec::with_capacity(items.len());
    // A repeated `event_id` within one request is one event: the first copy is sent, the
    // others are counted as duplicates (a retrying client must not double-count a view).
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    let mut duplicates = 0usize;
    let mut product_ids = std::collections::BTreeSet::new();
    let arrival = recstream_ingest::Timestamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    );
    for (i, item) in items.iter().enumerate() {
        let data = serde_json::to_vec(item).map_err(|e| ApiError::internal(e.to_string()))?;
        let decoded = recstream_ingest::decode::decode_with_limit(&data, st.max_record_bytes)
            .and_then(|ev| {
                recstream_ingest::decode::check_time_bounds(
                    ev.ts,
                    arrival,
                    st.event_time.max_future_skew_ms,
                    st.event_time.max_event_age_ms,
                )?;
                Ok(ev)
            });
        match decoded {
            Ok(ev) if !seen.insert(ev.event_id.clone()) => {
                if let Err(e) = caller.may_write_events_of(&ev.user_id) {
                    return Err(e.into());
                }
                duplicates += 1;
            }
            Ok(ev) if ev.event_type == recstream_ingest::EventType::Recommendation => {
                // Served lists are published by the servers themselves: one from outside
                // could feed the online learners made-up feature rows.
                metrics::counter!(m::EVENTS_REJECTED_TOTAL, "reason" => "served_list").increment(1);
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_event",
                    format!(
                        "event {i}: `recommendation` events are published by the server, not sent to the collector"
                    ),
                ));
            }
            Ok(ev) if ev.event_type == recstream_ingest::EventType::Product => {
                // Catalog entries come from the back office over the stream, or through
                // the admin endpoints: a client of the collector cannot change the shop.
                metrics::counter!(m::EVENTS_REJECTED_TOTAL, "reason" => "catalog_entry")
                    .increment(1);
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_event",
                    format!(
                        "event {i}: `product` events are not accepted here (use PUT /v1/catalog/products/{{product_id}} with an admin token)"
                    ),
                ));
            }
            Ok(ev) => {
                if let Err(e) = caller.may_write_events_of(&ev.user_id) {
                    metrics::counter!(m::EVENTS_REJECTED_TOTAL, "reason" => "forbidden")
                        .increment(1);
                    return Err(e.into());
                }
                if let Some(p) = &ev.product_id
                    && !product_ids.contains(p.as_str())
                {
                    product_ids.insert(p.to_string());
                }
                out.push(OutRecord {
                    partition_key: ev.user_id.to_string(),
                    data: Bytes::from(data),
                });
            }
            Err(e) => {
                metrics::counter!(m::EVENTS_REJECTED_TOTAL, "reason" => e.kind()).increment(1);
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_event",
                    format!("event {i}: {e}"),
                ));
            }
        }
    }
    // Product ids from outside must be in the shop's catalog (when there is one): an
    // unknown id would otherwise become every shopper's `trending`.
    if let Some(av) = st.recommender.availability() {
        let ids: Vec<&str> = product_ids.iter().map(String::as_str).collect();
        let states = av
            .lookup(&ids)
            .await
            .map_err(|e| ApiError::unavailable(format!("catalog unavailable: {e}")))?;
        if let Some((id, _)) = ids
            .iter()
            .zip(&states)
            .find(|(_, s)| **s == recstream_scoring::ProductState::Unknown)
        {
            metrics::counter!(m::EVENTS_REJECTED_TOTAL, "reason" => "unknown_product").increment(1);
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_product",
                format!("product `{id}` is not in the catalog"),
            ));
        }
    }
    let n = out.len();
    st.collector.send(out).await.map_err(|e| match e {
        SinkError::Busy(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", m),
        SinkError::Unavailable(m) => ApiError::unavailable(m),
    })?;
    metrics::counter!(m::EVENTS_COLLECTED_TOTAL).increment(n as u64);
    if duplicates > 0 {
        metrics::counter!(m::EVENTS_REJECTED_TOTAL, "reason" => "duplicate")
            .increment(duplicates as u64);
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(Collected {
            accepted: n,
            duplicates,
        }),
    )
        .into_response())
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "Alive.", body = Status)))]
async fn healthz() -> Json<Status> {
    Json(Status { status: "ok" })
}

/// Readiness: 200 once the initial load (replay, model) is done, 503 before.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, description = "Ready.", body = Status),
        (status = 503, description = "`unavailable`: still loading.", body = ErrorBody)))]
async fn readyz(State(st): State<AppState>) -> Response {
    if st.ready.load(Ordering::Acquire) {
        Json(Status { status: "ready" }).into_response()
    } else {
        ApiError::unavailable("still loading").into_response()
    }
}
