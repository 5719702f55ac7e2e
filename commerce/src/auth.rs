//! Bearer-token authentication for the commerce endpoints.
//!
//! ```text
//!  Authorization: Bearer <jwt> ─► header.alg ─┬─ HS256 ─► configured secret (local use)
//!                                             └─ RS256 ─► JWKS key by `kid` (Cognito)
//!        ─► exp, nbf (± leeway); iss, aud required and checked when configured; token_use
//!        ─► Principal { user_id = sub, groups = <groups_claim> (Cognito: `cognito:groups`) }
//! ```
//!
//! Any other algorithm, a missing `kid`, an unknown key or a bad claim is a 401 with
//! `WWW-Authenticate: Bearer error="invalid_token"`. Handlers then compare the principal
//! with the resource owner ([`Principal::require_owner`], 403 otherwise). Tokens are never
//! logged.

use std::collections::HashMap;
use std::path::Path;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::CommerceState;
use super::config::{AuthConfig, Secret};
use super::error::CommerceError;

/// Re-exported so that tests and tools mint tokens with the same crate version.
pub use jsonwebtoken;

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`: the user id everywhere in the commerce flow.
    pub user_id: String,
    /// The token's groups (the configured `groups_claim`, e.g. Cognito's
    /// `cognito:groups`): roles such as `marketing` or `admin`.
    pub groups: Vec<String>,
}

impl Principal {
    /// A principal with no groups (a shopper).
    pub fn user(user_id: impl Into<String>) -> Principal {
        Principal {
            user_id: user_id.into(),
            groups: Vec::new(),
        }
    }

    /// Whether the caller is in one of `groups`.
    pub fn in_any_group(&self, groups: &[String]) -> bool {
        self.groups.iter().any(|g| groups.contains(g))
    }

    /// 403 unless the caller is in one of `groups` (`what` names the role in the message).
    pub fn require_group(&self, groups: &[String], what: &str) -> Result<(), CommerceError> {
        if self.in_any_group(groups) {
            Ok(())
        } else {
            Err(CommerceError::Forbidden(format!(
                "this needs the {what} role"
            )))
        }
    }

    /// 403 unless the caller is `owner`.
    pub fn require_owner(&self, owner: &str) -> Result<(), CommerceError> {
        if self.user_id == owner {
            Ok(())
        } else {
            Err(CommerceError::Forbidden(
                "this resource belongs to another user".into(),
            ))
        }
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    token_use: Option<String>,
    /// Everything else; the groups claim is looked up here by its configured name.
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

/// A groups claim: an array of strings (Cognito) or one space-separated string (OAuth
/// `scope` style). Anything else counts as no groups.
fn groups_of(v: Option<&serde_json::Value>) -> Vec<String> {
    match v {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|g| g.as_str())
            .filter(|g| !g.is_empty() && g.len() <= 128)
            .take(64)
            .map(str::to_string)
            .collect(),
        Some(serde_json::Value::String(s)) => s
            .split(' ')
            .filter(|g| !g.is_empty() && g.len() <= 128)
            .take(64)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// Verifies bearer tokens (HS256 with the configured secret, RS256 with JWKS keys) and
/// checks the configured claims.
pub struct Authenticator {
    hs256: Option<DecodingKey>,
    rs256: HashMap<String, DecodingKey>,
    cfg: AuthConfig,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("hs256", &self.hs256.is_some())
            .field("rs256_keys", &self.rs256.len())
            .finish()
    }
}

impl Authenticator {
    /// From the configuration: the JWKS file (if any) and the HS256 secret (if any). At
    /// least one must be there.
    pub fn new(cfg: &AuthConfig, hs256: Option<&Secret>) -> Result<Authenticator, String> {
        let jwks = match &cfg.jwks_path {
            Some(p) => Some(load_jwks(p)?),
            None => None,
        };
        Authenticator::with_jwks(cfg, hs256, jwks)
    }

    /// Like [`Authenticator::new`], with the JWKS given instead of read from
    /// `auth.jwks_path`. `Err` when neither keys nor a secret are there, or a key is bad.
    pub fn with_jwks(
        cfg: &AuthConfig,
        hs256: Option<&Secret>,
        jwks: Option<JwkSet>,
    ) -> Result<Authenticator, String> {
        let mut rs256 = HashMap::new();
        for jwk in jwks.iter().flat_map(|s| s.keys.iter()) {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            if !matches!(
                jwk.algorithm,
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_)
            ) {
                continue;
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("jwks key {kid}: {e}"))?;
            rs256.insert(kid, key);
        }
        let hs256 = match hs256 {
            Some(s) if s.expose().len() < 16 => {
                return Err("the HS256 secret must be at least 16 bytes".into());
            }
            Some(s) => Some(DecodingKey::from_secret(s.expose().as_bytes())),
            None => None,
        };
        if hs256.is_none() && rs256.is_empty() {
            return Err(format!(
                "commerce auth needs an RS256 JWKS (commerce.auth.jwks_url or jwks_path) or an HS256 secret ({})",
                super::config::Secrets::JWT_HS256_ENV
            ));
        }
        Ok(Authenticator {
            hs256,
            rs256,
            cfg: cfg.clone(),
        })
    }

    /// An authenticator with no keys: every token is refused. For hosts that serve no
    /// requests (the saga and cart-sweep functions), which need no JWT settings.
    pub fn refuse_all(cfg: &AuthConfig) -> Authenticator {
        Authenticator {
            hs256: None,
            rs256: HashMap::new(),
            cfg: cfg.clone(),
        }
    }

    /// Verifies a compact JWT and returns its principal.
    pub fn verify(&self, token: &str) -> Result<Principal, CommerceError> {
        let bad = |m: &str| CommerceError::Unauthorized(format!("invalid token: {m}"));
        if token.len() > 8 * 1024 {
            return Err(bad("too long"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| bad("malformed"))?;
        let key = match header.alg {
            Algorithm::HS256 => self
                .hs256
                .as_ref()
                .ok_or_else(|| bad("HS256 is not accepted"))?,
            Algorithm::RS256 => {
                let kid = header.kid.as_deref().ok_or_else(|| bad("no kid"))?;
                self.rs256.get(kid).ok_or_else(|| bad("unknown kid"))?
            }
            _ => return Err(bad("algorithm not accepted")),
        };
        let mut v = Validation::new(header.alg);
        v.leeway = self.cfg.leeway_s;
        v.validate_exp = true;
        v.validate_nbf = true;
        // A configured issuer or audience is required, not only checked when present.
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = &self.cfg.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        if self.cfg.audience.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&self.cfg.audience);
            required.push("aud");
        }
        v.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Claims>(token, key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            let why = match e.kind() {
                K::ExpiredSignature => "expired",
                K::InvalidSignature => "bad signature",
                K::InvalidIssuer => "wrong issuer",
                K::InvalidAudience => "wrong audience",
                K::ImmatureSignature => "not yet valid",
                K::MissingRequiredClaim(_) => "missing claim",
                _ => "rejected",
            };
            bad(why)
        })?;
        let claims = data.claims;
        if !self.cfg.token_use.is_empty()
            && !claims
                .token_use
                .as_ref()
                .is_some_and(|u| self.cfg.token_use.contains(u))
        {
            return Err(bad("wrong token_use"));
        }
        super::check_id("sub", &claims.sub).map_err(|_| bad("unusable sub"))?;
        let groups = groups_of(claims.rest.get(&self.cfg.groups_claim));
        Ok(Principal {
            user_id: claims.sub,
            groups,
        })
    }
}

/// Fetches a JWKS over HTTP(S) (Cognito's `/.well-known/jwks.json`), bounded to 10 s.
pub async fn fetch_jwks(url: &str) -> Result<JwkSet, String> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| format!("jwks client: {e}"))?;
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("fetching the JWKS at {url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!(
            "fetching the JWKS at {url}: HTTP {}",
            resp.status()
        ));
    }
    resp.json::<JwkSet>()
        .await
        .map_err(|e| format!("{url}: not a JWKS: {e}"))
}

fn load_jwks(path: &Path) -> Result<JwkSet, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: not a JWKS: {e}", path.display()))
}

/// The bearer token of `Authorization: Bearer <token>`; 401 when missing or malformed.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Result<&str, CommerceError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| CommerceError::Unauthorized("missing bearer token".into()))?;
    let value = value
        .to_str()
        .map_err(|_| CommerceError::Unauthorized("malformed authorization header".into()))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| CommerceError::Unauthorized("expected `Bearer <token>`".into()))?;
    Ok(token)
}

impl FromRequestParts<CommerceState> for Principal {
    type Rejection = CommerceError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &CommerceState,
    ) -> Result<Self, Self::Rejection> {
        state.ctx.auth.verify(bearer_token(&parts.headers)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef-test";

    fn auth(cfg: AuthConfig) -> Authenticator {
        Authenticator::with_jwks(&cfg, Some(&Secret::new(SECRET)), None).unwrap()
    }

    fn token(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    #[test]
    fn accepts_a_good_hs256_token() {
        let a = auth(AuthConfig::default());
        let p = a
            .verify(&token(json!({"sub": "u1", "exp": now() + 60})))
            .unwrap();
        assert_eq!(p.user_id, "u1");
    }

    #[test]
    fn rejects_expired_wrong_key_and_missing_sub() {
        let a = auth(AuthConfig::default());
        let expired = token(json!({"sub": "u1", "exp": now() - 3600}));
        assert!(
            matches!(a.verify(&expired), Err(CommerceError::Unauthorized(m)) if m.contains("expired"))
        );
        let other = encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "u1", "exp": now() + 60}),
            &EncodingKey::from_secret(b"another-secret-of-length"),
        )
        .unwrap();
        assert!(a.verify(&other).is_err());
        assert!(a.verify(&token(json!({"exp": now() + 60}))).is_err());
        assert!(a.verify("not.a.jwt").is_err());
        assert!(
            a.verify(&token(json!({"sub": "", "exp": now() + 60})))
                .is_err()
        );
    }

    #[test]
    fn checks_issuer_audience_and_token_use_when_configured() {
        let a = auth(AuthConfig {
            issuer: Some("https://issuer".into()),
            audience: vec!["shop".into()],
            token_use: vec!["id".into()],
            ..AuthConfig::default()
        });
        let good = json!({"sub": "u", "exp": now() + 60, "iss": "https://issuer", "aud": "shop", "token_use": "id"});
        a.verify(&token(good.clone())).unwrap();
        for (k, v) in [
            ("iss", "https://evil"),
            ("aud", "other"),
            ("token_use", "access"),
        ] {
            let mut c = good.clone();
            c[k] = json!(v);
            assert!(a.verify(&token(c)).is_err(), "{k}");
        }
    }

    #[test]
    fn a_token_not_yet_valid_is_refused_beyond_the_leeway() {
        let a = auth(AuthConfig {
            leeway_s: 30,
            ..AuthConfig::default()
        });
        let later = token(json!({"sub": "u", "exp": now() + 7200, "nbf": now() + 3600}));
        assert!(
            matches!(a.verify(&later), Err(CommerceError::Unauthorized(m)) if m.contains("not yet valid")),
            "a token valid an hour from now"
        );
        // Within the leeway: accepted.
        a.verify(&token(
            json!({"sub": "u", "exp": now() + 60, "nbf": now() + 10}),
        ))
        .unwrap();
        a.verify(&token(
            json!({"sub": "u", "exp": now() + 60, "nbf": now() - 10}),
        ))
        .unwrap();
    }

    #[test]
    fn the_leeway_is_configurable() {
        let expired_20s_ago = token(json!({"sub": "u", "exp": now() - 20}));
        let strict = auth(AuthConfig {
            leeway_s: 0,
            ..AuthConfig::default()
        });
        assert!(strict.verify(&expired_20s_ago).is_err());
        let lenient = auth(AuthConfig {
            leeway_s: 60,
            ..AuthConfig::default()
        });
        lenient.verify(&expired_20s_ago).unwrap();
        let nbf_20s_ahead = token(json!({"sub": "u", "exp": now() + 60, "nbf": now() + 20}));
        assert!(strict.verify(&nbf_20s_ahead).is_err());
        lenient.verify(&nbf_20s_ahead).unwrap();
    }

    #[test]
    fn a_configured_issuer_or_audience_must_be_present() {
        let a = auth(AuthConfig {
            issuer: Some("https://issuer".into()),
            audience: vec!["shop".into()],
            ..AuthConfig::default()
        });
        let no_iss = token(json!({"sub": "u", "exp": now() + 60, "aud": "shop"}));
        assert!(
            matches!(a.verify(&no_iss), Err(CommerceError::Unauthorized(m)) if m.contains("missing claim")),
            "no iss"
        );
        let no_aud = token(json!({"sub": "u", "exp": now() + 60, "iss": "https://issuer"}));
        assert!(
            matches!(a.verify(&no_aud), Err(CommerceError::Unauthorized(m)) if m.contains("missing claim")),
            "no aud"
        );
        // Not configured: not required.
        auth(AuthConfig::default())
            .verify(&token(json!({"sub": "u", "exp": now() + 60})))
            .unwrap();
    }

    #[test]
    fn groups_come_from_the_configured_claim() {
        let a = auth(AuthConfig::default());
        let p = a
            .verify(&token(
                json!({"sub": "m", "exp": now() + 60, "cognito:groups": ["marketing", "x"]}),
            ))
            .unwrap();
        assert_eq!(p.groups, vec!["marketing".to_string(), "x".into()]);
        assert!(p.in_any_group(&["marketing".into()]));
        assert!(p.require_group(&["admin".into()], "admin").is_err());
        let custom = auth(AuthConfig {
            groups_claim: "roles".into(),
            ..AuthConfig::default()
        });
        let p = custom
            .verify(&token(json!({"sub": "m", "exp": now() + 60, "roles": "admin ops", "cognito:groups": ["marketing"]})))
            .unwrap();
        assert_eq!(p.groups, vec!["admin".to_string(), "ops".into()]);
        // A malformed claim is no groups, not an error.
        let p = a
            .verify(&token(
                json!({"sub": "m", "exp": now() + 60, "cognito:groups": {"a": 1}}),
            ))
            .unwrap();
        assert!(p.groups.is_empty());
    }

    #[test]
    fn needs_a_key() {
        assert!(Authenticator::with_jwks(&AuthConfig::default(), None, None).is_err());
        assert!(
            Authenticator::with_jwks(&AuthConfig::default(), Some(&Secret::new("short")), None)
                .is_err()
        );
    }
}
