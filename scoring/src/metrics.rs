//! Metrics of the scoring stage, named `recstream_scoring_<what>_<unit>`.

/// Recommendation requests (label: `strategy` = personalized | cold_start | fallback).
pub const REQUESTS_TOTAL: &str = "recstream_scoring_requests_total";
/// Requests answered in degraded mode (label: `dependency`).
pub const DEGRADED_TOTAL: &str = "recstream_scoring_degraded_total";
/// Candidates considered per request (the blended pool, before the catalog filter).
pub const CANDIDATES: &str = "recstream_scoring_candidates";
/// Time to build one response.
pub const SECONDS: &str = "recstream_scoring_seconds";
/// Joined feedback read by the online learner (label: `outcome` = `learned`: engaged
/// impressions learned, `other_version`: rows of another model version or of a list no
/// model ranked, `rejected`, `corrupt`: objects).
pub const FEEDBACK_TOTAL: &str = "recstream_scoring_feedback_total";
/// Rows (impressions) the online model learned from.
pub const ONLINE_ROWS_TOTAL: &str = "recstream_scoring_online_rows_total";
