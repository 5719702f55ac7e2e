//! HTTP errors: every failure is a status code plus a JSON body
//! `{"error": {"code": "...", "message": "..."}}` — the [`ApiError`] shared with the
//! commerce handlers, plus the mapping of scoring's errors onto it.

pub use recstream_commerce::{ApiError, ErrorBody};

/// A scoring failure as an API error: bad input is a 400, anything else a 503.
pub fn from_scoring(e: recstream_scoring::ScoringError) -> ApiError {
    match e {
        recstream_scoring::ScoringError::BadRequest(m) => ApiError::bad_request(m),
        other => ApiError::unavailable(other.to_string()),
    }
}
