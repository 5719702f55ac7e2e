//! The OpenAPI 3.1 description of the public API, generated from the handlers.
//!
//! ```text
//!  #[utoipa::path] on each handler ─► routes!(…) registers handler + description together
//!  app / segments / commerce OpenApiRouters ─merge─► split_for_parts ─► (Router, OpenApi)
//!  complete(): info, security schemes (x-api-key, bearer JWT), the shared error answers
//!  GET /openapi.json ─► that document (public)
//! ```
//!
//! This module owns the parts no single handler owns: the document's `info`, the two
//! security schemes, and the error answers every operation can give (each the JSON
//! [`ErrorBody`] with its stable `code`), added to each operation by what it has: every
//! operation can answer 400, 408, 414, 500 and 503; a secured one 401 and 403; one with a
//! body 413, 415 and 422. The handlers' annotations list the answers specific to them.

use std::sync::Arc;

use axum::Extension;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, InfoBuilder, OpenApi, Ref, RefOr, Response as OaResponse, ResponseBuilder,
};

use crate::error::ErrorBody;

/// The security scheme of API keys (header `x-api-key`).
pub const API_KEY_SCHEME: &str = "api_key";
/// The security scheme of bearer JWTs (`Authorization: Bearer <jwt>`).
pub const BEARER_SCHEME: &str = "bearer";

/// The serialized document, shared by `GET /openapi.json`.
#[derive(Clone)]
pub struct SpecJson(pub Bytes);

/// The shared error answers: status, component name, code(s), description; and which
/// operations get them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Applies {
    All,
    Secured,
    WithBody,
}

const COMMON_ERRORS: &[(&str, &str, &str, &str, Applies)] = &[
    (
        "400",
        "BadRequest",
        "bad_request",
        "`bad_request` (or a more specific 400 code such as `card_number_refused`): a malformed path, query, header or body.",
        Applies::All,
    ),
    (
        "401",
        "Unauthorized",
        "unauthorized",
        "`unauthorized`: no credential, or one that does not verify (`WWW-Authenticate` says which are accepted).",
        Applies::Secured,
    ),
    (
        "403",
        "Forbidden",
        "forbidden",
        "`forbidden`: the credential may not do this (scope, role, or another user's data).",
        Applies::Secured,
    ),
    (
        "408",
        "RequestTimeout",
        "request_timeout",
        "`request_timeout`: the request took longer than `server.limits.request_timeout_ms`.",
        Applies::All,
    ),
    (
        "413",
        "PayloadTooLarge",
        "payload_too_large",
        "`payload_too_large`: the body is over the endpoint's limit.",
        Applies::WithBody,
    ),
    (
        "414",
        "UriTooLong",
        "uri_too_long",
        "`uri_too_long`: the request target is over `server.limits.max_uri_bytes`.",
        Applies::All,
    ),
    (
        "415",
        "UnsupportedMediaType",
        "unsupported_media_type",
        "`unsupported_media_type`: a JSON body without `Content-Type: application/json`.",
        Applies::WithBody,
    ),
    (
        "422",
        "Unprocessable",
        "unprocessable",
        "`unprocessable` (or a more specific 422 code): well-formed JSON that is not an acceptable body.",
        Applies::WithBody,
    ),
    (
        "500",
        "Internal",
        "internal",
        "`internal`: a bug; the details are logged, not returned.",
        Applies::All,
    ),
    (
        "503",
        "Unavailable",
        "unavailable",
        "`unavailable` or `busy`: a dependency is down or overloaded; retry later.",
        Applies::All,
    ),
];

fn error_response(code: &str, description: &str) -> OaResponse {
    let example =
        serde_json::json!({"error": {"code": code, "message": "what went wrong, for people"}});
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .example(Some(example))
                .build(),
        )
        .build()
}

fn operations(spec: &mut OpenApi) -> impl Iterator<Item = &mut Operation> {
    spec.paths.paths.values_mut().flat_map(|item| {
        [
            item.get.as_mut(),
            item.put.as_mut(),
            item.post.as_mut(),
            item.delete.as_mut(),
            item.options.as_mut(),
            item.head.as_mut(),
            item.patch.as_mut(),
            item.trace.as_mut(),
        ]
        .into_iter()
        .flatten()
    })
}

/// Completes the document the routers produced: `info`, the security schemes, the
/// `ErrorBody` schema and the shared error answers on every operation.
pub fn complete(mut spec: OpenApi) -> OpenApi {
    spec.info = InfoBuilder::new()
        .title("recstream API")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "Real-time recommendations, the clickstream collector, marketing segments and the \
             shop (carts, checkout, orders, catalog, payment webhook). Every error is \
             `{\"error\": {\"code\", \"message\"}}` with a stable `code`.",
        ))
        .build();
    let components = spec.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        API_KEY_SCHEME,
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            crate::auth::API_KEY_HEADER,
            "A service's API key (scopes `events:write`, `recommendations:read`, `segments:read`).",
        ))),
    );
    components.add_security_scheme(
        BEARER_SCHEME,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some(
                    "A person's JWT (HS256 or RS256 via JWKS): `sub` is the user; groups \
                     (`cognito:groups` by default) carry the marketing and admin roles.",
                ))
                .build(),
        ),
    );
    let mut error_body = vec![];
    <ErrorBody as utoipa::ToSchema>::schemas(&mut error_body);
    error_body.push((
        "ErrorBody".to_string(),
        <ErrorBody as utoipa::PartialSchema>::schema(),
    ));
    components.schemas.extend(error_body);
    for (_, name, code, description, _) in COMMON_ERRORS {
        components.responses.insert(
            name.to_string(),
            RefOr::T(error_response(code, description)),
        );
    }
    for op in operations(&mut spec) {
        let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
        let with_body = op.request_body.is_some();
        for (status, name, _, _, applies) in COMMON_ERRORS {
            let wanted = match applies {
                Applies::All => true,
                Applies::Secured => secured,
                Applies::WithBody => with_body,
            };
            if wanted && !op.responses.responses.contains_key(*status) {
                op.responses.responses.insert(
                    status.to_string(),
                    RefOr::Ref(Ref::from_response_name(*name)),
                );
            }
        }
    }
    spec
}

/// This document (OpenAPI 3.1), public.
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 description of this API.",
        content_type = "application/json", body = Object)))]
pub async fn openapi_json(Extension(spec): Extension<Arc<SpecJson>>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], spec.0.clone()).into_response()
}
