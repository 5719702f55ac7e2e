//! The commerce error type: typed, with a retry hint, mapped onto the API's JSON error
//! body `{"error": {"code", "message"}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::payment::PaymentError;
use super::store::StoreError;
use crate::api_error::ApiError;

/// Errors of the commerce flows, each with its HTTP status ([`CommerceError::to_api`])
/// and a retry hint ([`CommerceError::retriable`]).
#[derive(Debug, thiserror::Error)]
pub enum CommerceError {
    /// The request is malformed: bad JSON, a bad header, an invalid field (400).
    #[error("{0}")]
    BadRequest(String),
    /// Missing, malformed, expired or wrongly signed bearer token (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated, but not the owner of the resource (403).
    #[error("{0}")]
    Forbidden(String),
    /// The order, cart item or product does not exist, or is not the caller's (404).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state (409).
    #[error("{message}")]
    Conflict {
        /// Machine-readable code, e.g. `currency_mismatch`.
        code: &'static str,
        /// What conflicts, for people.
        message: String,
    },
    /// Well-formed but not acceptable (422).
    #[error("{message}")]
    Unprocessable {
        /// Machine-readable code, e.g. `amount_too_large`.
        code: &'static str,
        /// What is wrong, for people.
        message: String,
    },
    /// The commerce store failed; a write conflict maps to 409, a retriable failure to 503.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The payment provider failed: 402 when declined or invalid, 503 when unavailable.
    #[error(transparent)]
    Payment(#[from] PaymentError),
    /// A dependency is down or not configured; retriable (503).
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an impossible state; the details are logged, not returned (500).
    #[error("{0}")]
    Internal(String),
    /// An already-shaped API error (extractor rejections).
    #[error("{}", .0.message)]
    Api(ApiError),
}

impl CommerceError {
    /// A [`CommerceError::Conflict`] with `code`.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> CommerceError {
        CommerceError::Conflict {
            code,
            message: message.into(),
        }
    }

    /// A [`CommerceError::Unprocessable`] with `code`.
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> CommerceError {
        CommerceError::Unprocessable {
            code,
            message: message.into(),
        }
    }

    /// Whether the same operation may succeed later (consumers retry these).
    pub fn retriable(&self) -> bool {
        match self {
            CommerceError::Store(e) => e.retriable(),
            CommerceError::Payment(e) => e.retriable(),
            CommerceError::Unavailable(_) => true,
            _ => false,
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.to_api().status
    }

    /// The JSON error body and status this error answers with.
    pub fn to_api(&self) -> ApiError {
        use CommerceError as E;
        match self {
            E::BadRequest(m) => ApiError::bad_request(m.clone()),
            E::Unauthorized(m) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m.clone())
            }
            E::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", m.clone()),
            E::NotFound(m) => ApiError::not_found(m.clone()),
            E::Conflict { code, message } => {
                ApiError::new(StatusCode::CONFLICT, code, message.clone())
            }
            E::Unprocessable { code, message } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message.clone())
            }
            E::Store(StoreError::Conflict { .. }) => ApiError::new(
                StatusCode::CONFLICT,
                "concurrent_update",
                "the resource changed concurrently; retry the request",
            ),
            E::Store(e) if e.retriable() => ApiError::unavailable("commerce store unavailable"),
            E::Store(StoreError::Invalid(m)) => ApiError::bad_request(m.clone()),
            E::Store(_) => ApiError::internal("commerce store error"),
            E::Payment(e) if e.retriable() => ApiError::unavailable("payment provider unavailable"),
            E::Payment(e) => ApiError::new(
                StatusCode::PAYMENT_REQUIRED,
                "payment_failed",
                e.to_string(),
            ),
            E::Unavailable(m) => ApiError::unavailable(m.clone()),
            E::Internal(m) => ApiError::internal(m.clone()),
            E::Api(a) => a.clone(),
        }
    }
}

impl IntoResponse for CommerceError {
    fn into_response(self) -> Response {
        let api = self.to_api();
        if api.status.is_server_error() {
            // The details stay in the log; the client gets the generic message.
            tracing::error!(error = %self, "commerce request failed");
        }
        let mut resp = api.into_response();
        if matches!(self, CommerceError::Unauthorized(_)) {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        resp
    }
}

macro_rules! rejection {
    ($($t:ty),*) => {$(
        impl From<$t> for CommerceError {
            fn from(r: $t) -> Self {
                CommerceError::Api(ApiError::new(r.status(), crate::api_error::code_for_status(r.status()), r.body_text()))
            }
        }
    )*};
}
rejection!(
    axum::extract::rejection::PathRejection,
    axum::extract::rejection::QueryRejection,
    axum::extract::rejection::JsonRejection,
    axum::extract::rejection::BytesRejection
);
