//! Who may call what: API keys for services (the storefront's backend) and the shopper's,
//! marketing's or an admin's JWT, verified by commerce's one [`Authenticator`].
//!
//! ```text
//!  x-api-key: <key> ─► SHA-256 ─► AccessConfig.clients[*].key_sha256 ─► Caller::Client { id, scopes }
//!  Authorization: Bearer <jwt> ─► recstream_commerce::Authenticator ─► Caller::User(Principal)
//!
//!  POST /v1/events                  client with events:write | user (every event's user_id = sub)
//!  GET  /v1/recommendations/{user}  client with recommendations:read | user == sub
//!  GET  /v1/segments…               client with segments:read | user in a marketing group
//! ```
//!
//! Keys are stored hashed (SHA-256, hex), several per client so a key can be rotated
//! without downtime (add the new hash, move the client over, remove the old one). Missing
//! or invalid credentials are a 401, a valid credential without the right scope, role or
//! user a 403, both with the JSON error body. Keys and tokens are never logged.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use recstream_commerce::{Authenticator, Principal};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// The header a service sends its API key in.
pub const API_KEY_HEADER: &str = "x-api-key";

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// `POST /v1/events` for any user (the storefront's backend).
    #[serde(rename = "events:write")]
    EventsWrite,
    /// `GET /v1/recommendations/{user}` for any user.
    #[serde(rename = "recommendations:read")]
    RecommendationsRead,
    /// The marketing endpoints (segments and their members).
    #[serde(rename = "segments:read")]
    SegmentsRead,
}

impl Scope {
    /// The scope as written in configuration and error messages (`events:write`).
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::EventsWrite => "events:write",
            Scope::RecommendationsRead => "recommendations:read",
            Scope::SegmentsRead => "segments:read",
        }
    }
}

/// One API client (a service) with its scopes and the hashes of its current keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiClient {
    /// A name for logs and metrics (`storefront`).
    pub id: String,
    /// What this client's keys may do.
    pub scopes: Vec<Scope>,
    /// SHA-256 of each valid key, lower-case hex (`printf %s "$KEY" | sha256sum`). More than
    /// one while a key is being rotated.
    pub key_sha256: Vec<String>,
}

/// `[server.auth]`: API clients and the JWT groups that may read marketing data. (The
/// catalog's admin role is commerce's: `commerce.auth.admin_groups`.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// The API clients (services) and their key hashes; empty = no API key accepted.
    pub clients: Vec<ApiClient>,
    /// JWT groups that may read marketing data (segments, members, spend).
    pub marketing_groups: Vec<String>,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            clients: Vec::new(),
            marketing_groups: vec!["marketing".into(), "admin".into()],
        }
    }
}

impl AccessConfig {
    /// Checks ids (1 to 64 printable characters, unique), scopes and key hashes.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for c in &self.clients {
            if c.id.is_empty() || c.id.len() > 64 || c.id.chars().any(|ch| ch.is_control()) {
                return Err("server.auth.clients: id must be 1 to 64 printable characters".into());
            }
            if c.key_sha256.is_empty() {
                return Err(format!("server.auth.clients `{}`: no key_sha256", c.id));
            }
            for h in &c.key_sha256 {
                if h.len() != 64 || !h.chars().all(|ch| ch.is_ascii_hexdigit()) {
                    return Err(format!(
                        "server.auth.clients `{}`: key_sha256 must be 64 hex digits (a SHA-256)",
                        c.id
                    ));
                }
                if !seen.insert(h.to_ascii_lowercase()) {
                    return Err(format!(
                        "server.auth.clients `{}`: a key hash is listed twice",
                        c.id
                    ));
                }
            }
        }
        if self.marketing_groups.iter().any(String::is_empty) {
            return Err("server.auth: group names must not be empty".into());
        }
        Ok(())
    }
}

/// SHA-256 of a key, lower-case hex: what `key_sha256` holds.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A new random API key (`rsk_` + 256 bits, hex) and its hash.
pub fn new_key() -> (String, String) {
    let key = format!(
        "rsk_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let hash = hash_key(&key);
    (key, hash)
}

#[derive(Debug)]
struct ClientEntry {
    id: String,
    scopes: Vec<Scope>,
}

/// The verifiers, shared by every request (in an [`axum::Extension`]).
#[derive(Debug)]
pub struct Access {
    keys: HashMap<String, Arc<ClientEntry>>,
    jwt: Option<Arc<Authenticator>>,
    marketing_groups: Vec<String>,
}

impl Access {
    /// From the configuration and the JWT verifier (commerce's; `None` when no way to
    /// verify tokens is configured: then only API keys are accepted).
    pub fn new(cfg: &AccessConfig, jwt: Option<Arc<Authenticator>>) -> Access {
        let mut keys = HashMap::new();
        for c in &cfg.clients {
            let entry = Arc::new(ClientEntry {
                id: c.id.clone(),
                scopes: c.scopes.clone(),
            });
            for h in &c.key_sha256 {
                keys.insert(h.to_ascii_lowercase(), entry.clone());
            }
        }
        Access {
            keys,
            jwt,
            marketing_groups: cfg.marketing_groups.clone(),
        }
    }

    /// Authenticates a request's headers: an API key, else a bearer token.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, AuthError> {
        if let Some(v) = headers.get(API_KEY_HEADER) {
            let key = v
                .to_str()
                .map_err(|_| AuthError::Unauthorized("malformed api key".into()))?;
            if key.is_empty() || key.len() > 256 {
                return Err(AuthError::Unauthorized("invalid api key".into()));
            }
            // The map is keyed by the hash: the lookup never compares the secret itself.
            return match self.keys.get(&hash_key(key)) {
                Some(c) => Ok(Caller::Client {
                    id: c.id.clone(),
                    scopes: c.scopes.clone(),
                }),
                None => Err(AuthError::Unauthorized("invalid api key".into())),
            };
        }
        let token = recstream_commerce::auth::bearer_token(headers).map_err(|_| {
            AuthError::Unauthorized(format!(
                "credentials required: an `{API_KEY_HEADER}` header or `Authorization: Bearer <token>`"
            ))
        })?;
        let jwt = self
            .jwt
            .as_ref()
            .ok_or_else(|| AuthError::Unauthorized("bearer tokens are not accepted here".into()))?;
        jwt.verify(token)
            .map(Caller::User)
            .map_err(|e| AuthError::Unauthorized(e.to_string()))
    }

    /// JWT groups that may read marketing data.
    pub fn marketing_groups(&self) -> &[String] {
        &self.marketing_groups
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A service, by API key.
    Client {
        /// The client's configured id.
        id: String,
        /// Its scopes.
        scopes: Vec<Scope>,
    },
    /// A person, by JWT.
    User(Principal),
}

impl Caller {
    /// 403 unless a client holds `scope`.
    fn client_has(&self, scope: Scope) -> bool {
        matches!(self, Caller::Client { scopes, .. } if scopes.contains(&scope))
    }

    /// Events for `user_id` may be written: a client with `events:write`, or that user.
    pub fn may_write_events_of(&self, user_id: &str) -> Result<(), AuthError> {
        match self {
            Caller::User(p) if p.user_id == user_id => Ok(()),
            Caller::User(_) => Err(AuthError::Forbidden(
                "a shopper's token may only send that shopper's events (user_id must be the token's sub)".into(),
            )),
            c if c.client_has(Scope::EventsWrite) => Ok(()),
            _ => Err(AuthError::Forbidden(
                "this api key lacks the events:write scope".into(),
            )),
        }
    }

    /// `user_id`'s recommendations may be read: that user, or a client with
    /// `recommendations:read`.
    pub fn may_read_recommendations_of(&self, user_id: &str) -> Result<(), AuthError> {
        match self {
            Caller::User(p) if p.user_id == user_id => Ok(()),
            Caller::User(_) => Err(AuthError::Forbidden(
                "these recommendations belong to another user".into(),
            )),
            c if c.client_has(Scope::RecommendationsRead) => Ok(()),
            _ => Err(AuthError::Forbidden(
                "this api key lacks the recommendations:read scope".into(),
            )),
        }
    }

    /// Marketing data: a user in a marketing group, or a client with `segments:read`.
    pub fn may_read_marketing(&self, access: &Access) -> Result<(), AuthError> {
        match self {
            Caller::User(p) if p.in_any_group(&access.marketing_groups) => Ok(()),
            c if c.client_has(Scope::SegmentsRead) => Ok(()),
            _ => Err(AuthError::Forbidden("this needs the marketing role".into())),
        }
    }
}

/// 401 (no or a bad credential) or 403 (not allowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No credential, or one that does not verify (401).
    Unauthorized(String),
    /// A valid credential that may not do this (403).
    Forbidden(String),
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        match e {
            AuthError::Unauthorized(m) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m)
            }
            AuthError::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", m),
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let unauthorized = matches!(self, AuthError::Unauthorized(_));
        let mut resp = ApiError::from(self).into_response();
        if unauthorized {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer, ApiKey header=\"x-api-key\""),
            );
        }
        resp
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let access = parts
            .extensions
            .get::<Arc<Access>>()
            .cloned()
            .ok_or_else(|| AuthError::Unauthorized("no credentials are accepted".into()))?;
        access.authenticate(&parts.headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> (Access, String) {
        let (key, hash) = new_key();
        let cfg = AccessConfig {
            clients: vec![ApiClient {
                id: "storefront".into(),
                scopes: vec![Scope::EventsWrite],
                key_sha256: vec!["00".repeat(32), hash],
            }],
            ..AccessConfig::default()
        };
        cfg.validate().unwrap();
        (Access::new(&cfg, None), key)
    }

    fn headers(k: &str, v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
        h
    }

    #[test]
    fn keys_are_checked_by_hash_and_scoped() {
        let (a, key) = access();
        let c = a.authenticate(&headers(API_KEY_HEADER, &key)).unwrap();
        assert!(c.may_write_events_of("anyone").is_ok());
        assert!(matches!(
            c.may_read_recommendations_of("anyone"),
            Err(AuthError::Forbidden(_))
        ));
        assert!(matches!(
            a.authenticate(&headers(API_KEY_HEADER, "rsk_wrong")),
            Err(AuthError::Unauthorized(_))
        ));
        assert!(matches!(
            a.authenticate(&HeaderMap::new()),
            Err(AuthError::Unauthorized(_))
        ));
        // No JWT verifier configured: a bearer token is a 401, not a pass.
        assert!(matches!(
            a.authenticate(&headers("authorization", "Bearer x.y.z")),
            Err(AuthError::Unauthorized(_))
        ));
    }

    #[test]
    fn users_reach_only_their_own_data_and_roles_gate_the_rest() {
        let (a, _) = access();
        let shopper = Caller::User(Principal::user("u1"));
        assert!(shopper.may_read_recommendations_of("u1").is_ok());
        assert!(shopper.may_read_recommendations_of("u2").is_err());
        assert!(shopper.may_write_events_of("u1").is_ok());
        assert!(shopper.may_write_events_of("u2").is_err());
        assert!(shopper.may_read_marketing(&a).is_err());
        let marketing = Caller::User(Principal {
            user_id: "m".into(),
            groups: vec!["marketing".into()],
        });
        assert!(marketing.may_read_marketing(&a).is_ok());
        let admin = Caller::User(Principal {
            user_id: "root".into(),
            groups: vec!["admin".into()],
        });
        assert!(admin.may_read_marketing(&a).is_ok());
        let other = Caller::User(Principal {
            user_id: "o".into(),
            groups: vec!["ops".into()],
        });
        assert!(other.may_read_marketing(&a).is_err());
    }

    #[test]
    fn config_is_validated() {
        let mut cfg = AccessConfig {
            clients: vec![ApiClient {
                id: "s".into(),
                scopes: vec![],
                key_sha256: vec!["not-hex".into()],
            }],
            ..AccessConfig::default()
        };
        assert!(cfg.validate().unwrap_err().contains("64 hex"));
        cfg.clients[0].key_sha256 = vec![];
        assert!(cfg.validate().unwrap_err().contains("no key_sha256"));
        let bad: Result<AccessConfig, _> = serde_json::from_str(
            r#"{"clients":[{"id":"s","scopes":["events:delete"],"key_sha256":[]}]}"#,
        );
        assert!(bad.is_err());
    }
}
