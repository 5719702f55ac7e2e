//! Marketing endpoints over the current user segmentation.
//!
//! ```text
//!  GET /v1/segments                                  ─► profiles of every segment
//!  GET /v1/segments/{id}/users?page_token=&limit=    ─► one page of members, by user id
//!        ▲
//!  SegmentsState (Arc<RwLock<Option<Arc<Segments>>>>) ◄─ set on model load / hot reload
//! ```
//!
//! Pages are keyed by the last user id returned (hex-encoded in `next_page_token`), so a
//! client paging through a segment never sees a user twice, even across a model reload.

use std::sync::{Arc, RwLock};

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::{Json, Router};
use recstream_model::{SegmentMember, SegmentProfile, Segments};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Access, Caller};
use crate::error::{ApiError, ErrorBody};

/// Default and largest page size.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page size a request may ask for.
pub const MAX_LIMIT: usize = 1000;

/// The segmentation the endpoints serve; swap it with [`SegmentsState::set`].
#[derive(Clone, Default)]
pub struct SegmentsState {
    inner: Arc<RwLock<Option<Arc<Segments>>>>,
}

impl SegmentsState {
    /// State serving `segments` (`None` = no segmentation loaded: the endpoints answer 503).
    pub fn new(segments: Option<Arc<Segments>>) -> SegmentsState {
        SegmentsState {
            inner: Arc::new(RwLock::new(segments)),
        }
    }

    /// Replaces the segmentation served (on model load and hot reload).
    pub fn set(&self, segments: Option<Arc<Segments>>) {
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = segments;
    }

    /// The segmentation served now.
    pub fn get(&self) -> Option<Arc<Segments>> {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The two routes, with their own state; merge into any router:
/// `Router::new().merge(segments::routes(state))`.
pub fn routes<S>(state: SegmentsState) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::from(openapi_routes(state)).with_state(())
}

/// The two routes with their OpenAPI description, state applied.
pub fn openapi_routes(state: SegmentsState) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(users))
        .with_state(state)
}

/// The body of `GET /v1/segments`.
#[derive(Serialize, ToSchema)]
struct ListResponse<'a> {
    /// The model version the segmentation belongs to.
    version: &'a str,
    /// The time of the data it was fitted on, epoch ms.
    as_of_ts: i64,
    /// Each segment's profile (id, size, spend, activity).
    #[schema(value_type = Vec<Object>)]
    segments: &'a [SegmentProfile],
}

fn current(st: &SegmentsState) -> Result<Arc<Segments>, ApiError> {
    st.get()
        .ok_or_else(|| ApiError::unavailable("no segmentation loaded yet (train a model first)"))
}

/// Marketing data needs the marketing role (or a `segments:read` key).
fn require_marketing(caller: &Caller, access: Option<&Arc<Access>>) -> Result<(), ApiError> {
    let access = access.ok_or_else(|| {
        ApiError::from(crate::auth::AuthError::Unauthorized(
            "no credentials are accepted".into(),
        ))
    })?;
    caller.may_read_marketing(access).map_err(ApiError::from)
}

/// Every segment's profile (marketing role, or a key with `segments:read`).
#[utoipa::path(get, path = "/v1/segments", tag = "segments",
    responses((status = 200, description = "The segments.", body = ListResponse<'static>)),
    security(("api_key" = []), ("bearer" = [])))]
async fn list(
    State(st): State<SegmentsState>,
    caller: Caller,
    access: Option<axum::Extension<Arc<Access>>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_marketing(&caller, access.as_ref().map(|a| &a.0))?;
    let s = current(&st)?;
    let body = ListResponse {
        version: &s.version,
        as_of_ts: s.as_of_ts,
        segments: &s.profiles,
    };
    serde_json::to_value(&body)
        .map(Json)
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// The query of `GET /v1/segments/{segment_id}/users`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct UsersQuery {
    /// The `next_page_token` of the previous page.
    page_token: Option<String>,
    /// Members per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// The body of `GET /v1/segments/{segment_id}/users`.
#[derive(Serialize, ToSchema)]
struct UsersResponse<'a> {
    /// The segment.
    segment_id: &'a str,
    /// The model version the segmentation belongs to.
    version: &'a str,
    /// One page of members (user id, spend, activity), by user id.
    #[schema(value_type = Vec<Object>)]
    users: &'a [SegmentMember],
    /// Pass as `page_token` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_page_token: Option<String>,
}

/// One page of a segment's members with their spend (marketing role, or a key with
/// `segments:read`).
#[utoipa::path(get, path = "/v1/segments/{segment_id}/users", tag = "segments",
    params(("segment_id" = String, Path, description = "1 to 64 printable characters."), UsersQuery),
    responses((status = 200, description = "One page of members.", body = UsersResponse<'static>),
        (status = 404, description = "`not_found`: no such segment.", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
async fn users(
    State(st): State<SegmentsState>,
    caller: Caller,
    access: Option<axum::Extension<Arc<Access>>>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<UsersQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_marketing(&caller, access.as_ref().map(|a| &a.0))?;
    let Path(id) = id?;
    let Query(q) = q?;
    if id.is_empty() || id.len() > 64 || id.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "segment id must be 1 to 64 printable characters",
        ));
    }
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::bad_request(format!(
            "limit must be in 1..={MAX_LIMIT}"
        )));
    }
    let after = match q.page_token.as_deref().filter(|t| !t.is_empty()) {
        Some(t) => Some(decode_token(t)?),
        None => None,
    };
    let s = current(&st)?;
    let (page, next) = s
        .page(&id, after.as_deref(), limit)
        .ok_or_else(|| ApiError::not_found(format!("unknown segment `{id}`")))?;
    let body = UsersResponse {
        segment_id: &id,
        version: &s.version,
        users: page,
        next_page_token: next.map(|u| hex::encode(u.as_bytes())),
    };
    serde_json::to_value(&body)
        .map(Json)
        .map_err(|e| ApiError::internal(e.to_string()))
}

fn decode_token(t: &str) -> Result<String, ApiError> {
    let bad = || ApiError::bad_request("invalid page_token");
    if t.len() > 512 {
        return Err(bad());
    }
    let bytes = hex::decode(t).map_err(|_| bad())?;
    String::from_utf8(bytes).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, to_bytes};
    use axum::http::{Request, StatusCode};
    use recstream_features::{EventCounts, UserFeatures};
    use recstream_model::SegmentParams;
    use tower::ServiceExt;

    fn segments() -> Arc<Segments> {
        let users: Vec<UserFeatures> = (0..40)
            .map(|i| UserFeatures {
                user_id: format!("u{i:02}"),
                counts: EventCounts {
                    view: 1 + (i % 7) as u64,
                    purchase: (i % 3 == 0) as u64,
                    ..Default::default()
                },
                spend_minor: if i % 3 == 0 { 1000 * i as i64 } else { 0 },
                first_ts: 0,
                last_ts: 1000 * i as i64,
                ..Default::default()
            })
            .collect();
        let params = SegmentParams {
            k: 3,
            ..Default::default()
        };
        Arc::new(Segments::fit(&users, &params).unwrap())
    }

    const KEY: &str = "rsk_marketing-export-test-key";

    /// The routes behind an [`Access`] with one `segments:read` key and one without.
    fn app(state: SegmentsState) -> Router {
        let cfg = crate::auth::AccessConfig {
            clients: vec![
                crate::auth::ApiClient {
                    id: "export".into(),
                    scopes: vec![crate::auth::Scope::SegmentsRead],
                    key_sha256: vec![crate::auth::hash_key(KEY)],
                },
                crate::auth::ApiClient {
                    id: "storefront".into(),
                    scopes: vec![crate::auth::Scope::EventsWrite],
                    key_sha256: vec![crate::auth::hash_key("rsk_storefront")],
                },
            ],
            ..Default::default()
        };
        routes(state).layer(axum::Extension(Arc::new(Access::new(&cfg, None))))
    }

    async fn get_as(app: &Router, uri: &str, key: Option<&str>) -> (StatusCode, serde_json::Value) {
        let mut req = Request::get(uri);
        if let Some(k) = key {
            req = req.header(crate::auth::API_KEY_HEADER, k);
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    async fn get(app: &Router, uri: &str) -> (StatusCode, serde_json::Value) {
        get_as(app, uri, Some(KEY)).await
    }

    #[tokio::test]
    async fn members_need_the_marketing_role() {
        let state = SegmentsState::default();
        let segs = segments();
        state.set(Some(segs.clone()));
        let app = app(state);
        let id = &segs.profiles[0].id;
        for uri in [
            "/v1/segments".to_string(),
            format!("/v1/segments/{id}/users"),
        ] {
            let (status, body) = get_as(&app, &uri, None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}: {body}");
            assert_eq!(body["error"]["code"], "unauthorized");
            let (status, body) = get_as(&app, &uri, Some("rsk_not-a-key")).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}: {body}");
            let (status, body) = get_as(&app, &uri, Some("rsk_storefront")).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{uri}: {body}");
            assert_eq!(body["error"]["code"], "forbidden");
            let (status, _) = get_as(&app, &uri, Some(KEY)).await;
            assert_eq!(status, StatusCode::OK, "{uri}");
        }
    }

    #[tokio::test]
    async fn lists_and_pages_through_segments() {
        let state = SegmentsState::default();
        let app: Router = app(state.clone());
        let (status, body) = get(&app, "/v1/segments").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"]["code"], "unavailable");

        let segs = segments();
        state.set(Some(segs.clone()));
        let (status, body) = get(&app, "/v1/segments").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body["segments"].as_array().unwrap().len(),
            segs.profiles.len()
        );

        let id = &segs.profiles[0].id;
        let mut token: Option<String> = None;
        let mut seen = Vec::new();
        loop {
            let uri = match &token {
                Some(t) => format!("/v1/segments/{id}/users?limit=2&page_token={t}"),
                None => format!("/v1/segments/{id}/users?limit=2"),
            };
            let (status, body) = get(&app, &uri).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            for u in body["users"].as_array().unwrap() {
                seen.push(u["user_id"].as_str().unwrap().to_string());
            }
            match body["next_page_token"].as_str() {
                Some(t) => token = Some(t.to_string()),
                None => break,
            }
        }
        let want: Vec<String> = segs
            .members_of(id)
            .unwrap()
            .iter()
            .map(|m| m.user_id.clone())
            .collect();
        assert_eq!(seen, want);

        let (status, body) = get(&app, "/v1/segments/nope/users").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["code"], "not_found");
        let (status, _) = get(&app, &format!("/v1/segments/{id}/users?limit=0")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = get(&app, &format!("/v1/segments/{id}/users?page_token=zz")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = get(&app, &format!("/v1/segments/{id}/users?bogus=1")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
}
