//! Commerce configuration (`[commerce]`): serde, `deny_unknown_fields`, named defaults, a
//! pure `validate()` before anything opens. Secrets never live here: they come from the
//! environment through [`Secrets::from_env`].

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which commerce store backs carts, orders and the saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// redb file `<data_dir>/commerce.redb`.
    #[default]
    Embedded,
    /// DynamoDB table `<aws.table_prefix>commerce`.
    Dynamodb,
}

/// Which payment provider charges orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Local, with Stripe's test-card semantics.
    #[default]
    Simulated,
    /// Stripe's HTTP API; needs `STRIPE_SECRET_KEY`.
    Stripe,
}

/// The `[commerce]` section: store, catalog seed, cart and checkout bounds, saga timing,
/// authentication and payments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommerceConfig {
    /// Which store (default `embedded`).
    pub store: StoreKind,
    /// Embedded database, notification outbox file.
    pub data_dir: PathBuf,
    /// Products to seed the catalog with: a product feed (JSON lines, or CSV
    /// `id,title,category,price,stock,active`) or a JSON array / seed CSV; `None` = the
    /// built-in demo catalog. Seeding only adds products that do not exist yet.
    pub catalog_seed: Option<PathBuf>,
    /// Most units of one product in a cart.
    pub max_quantity: u32,
    /// Most distinct products in a cart.
    pub max_lines: usize,
    /// How often the availability sweep re-checks every cart.
    pub sweep_interval_ms: u64,
    /// How long inventory holds a reservation before it expires and the order is cancelled.
    pub reservation_ttl_ms: u64,
    /// How long an `Idempotency-Key` and its response are kept.
    pub idempotency_ttl_s: u64,
    /// After this long an in-flight idempotent request is presumed dead and may be retried.
    pub idempotency_lock_ms: u64,
    /// Relay polling interval (it is also woken right after each commit).
    pub relay_poll_ms: u64,
    /// Consumer polling interval (they are also woken when the relay publishes).
    pub consumer_poll_ms: u64,
    /// Log entries a consumer takes at once (handled concurrently across orders).
    pub consumer_batch: usize,
    /// How often timers (reservation expiry, simulated delivery) are checked.
    pub timer_poll_ms: u64,
    /// Simulated carrier: time from shipment to delivery.
    pub delivery_delay_ms: u64,
    /// Bearer-token authentication.
    pub auth: AuthConfig,
    /// The payment provider and its timeouts.
    pub payments: PaymentsConfig,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data/commerce")
}

impl Default for CommerceConfig {
    fn default() -> Self {
        CommerceConfig {
            store: StoreKind::Embedded,
            data_dir: default_data_dir(),
            catalog_seed: None,
            max_quantity: 99,
            max_lines: 50,
            sweep_interval_ms: 30_000,
            reservation_ttl_ms: 15 * 60 * 1000,
            idempotency_ttl_s: 24 * 3600,
            idempotency_lock_ms: 30_000,
            relay_poll_ms: 250,
            consumer_poll_ms: 250,
            consumer_batch: 32,
            timer_poll_ms: 500,
            delivery_delay_ms: 2_000,
            auth: AuthConfig::default(),
            payments: PaymentsConfig::default(),
        }
    }
}

impl CommerceConfig {
    /// Settings for tests and demos: fast polling and delivery, files under `dir`.
    pub fn for_tests(dir: impl Into<PathBuf>) -> CommerceConfig {
        CommerceConfig {
            data_dir: dir.into(),
            sweep_interval_ms: 200,
            relay_poll_ms: 20,
            consumer_poll_ms: 20,
            timer_poll_ms: 20,
            delivery_delay_ms: 0,
            ..CommerceConfig::default()
        }
    }

    /// Checks the bounds and intervals of this section; `Err` names the bad setting.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=10_000).contains(&self.max_quantity) {
            return Err("commerce.max_quantity must be in 1..=10000".into());
        }
        if !(1..=90).contains(&self.max_lines) {
            // A reservation touches every line's stock item in one transaction (≤ 100 writes).
            return Err("commerce.max_lines must be in 1..=90".into());
        }
        for (name, v, min) in [
            ("sweep_interval_ms", self.sweep_interval_ms, 10),
            ("reservation_ttl_ms", self.reservation_ttl_ms, 100),
            ("idempotency_lock_ms", self.idempotency_lock_ms, 100),
            ("relay_poll_ms", self.relay_poll_ms, 1),
            ("consumer_poll_ms", self.consumer_poll_ms, 1),
            ("timer_poll_ms", self.timer_poll_ms, 1),
        ] {
            if v < min {
                return Err(format!("commerce.{name} must be at least {min}"));
            }
        }
        if !(1..=1000).contains(&self.consumer_batch) {
            return Err("commerce.consumer_batch must be in 1..=1000".into());
        }
        if self.idempotency_ttl_s < 60 {
            return Err("commerce.idempotency_ttl_s must be at least 60".into());
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err("commerce.data_dir must not be empty".into());
        }
        self.auth.validate()?;
        self.payments.validate()
    }
}

/// The `[commerce.auth]` section: where token keys come from and which claims are
/// required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// A JWKS file (as Cognito publishes at `…/.well-known/jwks.json`) for RS256 tokens.
    pub jwks_path: Option<PathBuf>,
    /// The same, fetched over HTTP(S) at start-up (e.g.
    /// `https://cognito-idp.<region>.amazonaws.com/<pool id>/.well-known/jwks.json`).
    pub jwks_url: Option<String>,
    /// Required `iss` (e.g. `https://cognito-idp.<region>.amazonaws.com/<pool id>`).
    pub issuer: Option<String>,
    /// Accepted `aud` values (Cognito id tokens); empty = `aud` not checked.
    pub audience: Vec<String>,
    /// Accepted `token_use` (Cognito: `access` or `id`); empty = not checked.
    pub token_use: Vec<String>,
    /// Clock skew allowed on `exp` / `nbf`, seconds.
    pub leeway_s: u64,
    /// The claim that lists the caller's groups (roles such as `marketing`, `admin`):
    /// Cognito's `cognito:groups` by default; an array of strings or a space-separated
    /// string.
    pub groups_claim: String,
    /// Groups (in `groups_claim`) that administer the catalog: create and update
    /// products, set stock, deactivate.
    pub admin_groups: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwks_path: None,
            jwks_url: None,
            issuer: None,
            audience: Vec::new(),
            token_use: Vec::new(),
            leeway_s: 30,
            groups_claim: "cognito:groups".into(),
            admin_groups: vec!["admin".into()],
        }
    }
}

impl AuthConfig {
    /// Checks the leeway (at most 300 s) and the JWKS source (a path or an http(s) URL,
    /// not both); `Err` names the bad setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.leeway_s > 300 {
            return Err("commerce.auth.leeway_s must be at most 300".into());
        }
        if self.groups_claim.is_empty() || self.groups_claim.len() > 128 {
            return Err("commerce.auth.groups_claim must be 1 to 128 characters".into());
        }
        if self.admin_groups.iter().any(String::is_empty) {
            return Err("commerce.auth.admin_groups: group names must not be empty".into());
        }
        if self.jwks_path.is_some() && self.jwks_url.is_some() {
            return Err("commerce.auth: set jwks_path or jwks_url, not both".into());
        }
        if let Some(u) = &self.jwks_url
            && !(u.starts_with("https://") || u.starts_with("http://"))
        {
            return Err("commerce.auth.jwks_url must be an http(s) URL".into());
        }
        Ok(())
    }
}

/// The `[commerce.payments]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PaymentsConfig {
    /// Which provider (default `simulated`).
    pub provider: ProviderKind,
    /// Stripe API base URL (tests point it at a local server).
    pub stripe_api_base: String,
    /// Per-request timeout to the provider.
    pub timeout_ms: u64,
    /// Webhook signatures older (or newer) than this are rejected.
    pub webhook_tolerance_s: u64,
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        PaymentsConfig {
            provider: ProviderKind::Simulated,
            stripe_api_base: "https://api.stripe.com".into(),
            timeout_ms: 10_000,
            webhook_tolerance_s: 300,
        }
    }
}

impl PaymentsConfig {
    /// Checks the Stripe base URL (HTTPS, or a loopback address for tests) and the
    /// timeouts; `Err` names the bad setting.
    pub fn validate(&self) -> Result<(), String> {
        if !self.stripe_api_base.starts_with("https://")
            && !self.stripe_api_base.starts_with("http://127.0.0.1")
            && !self.stripe_api_base.starts_with("http://localhost")
        {
            return Err(
                "commerce.payments.stripe_api_base must be https (or loopback http)".into(),
            );
        }
        if self.timeout_ms == 0 || self.webhook_tolerance_s == 0 {
            return Err("commerce.payments timeouts must be positive".into());
        }
        Ok(())
    }
}

/// A secret string: never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `s`.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The secret itself; only for the place that sends it (a header, an HMAC key).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Secrets, from the environment only.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    /// `RECSTREAM_JWT_HS256_SECRET`: enables HS256 tokens (local use).
    pub jwt_hs256: Option<Secret>,
    /// `STRIPE_SECRET_KEY` (`sk_test_…` / `sk_live_…`).
    pub stripe_secret_key: Option<Secret>,
    /// `STRIPE_WEBHOOK_SECRET` (`whsec_…`): enables `POST /v1/payments/webhook`.
    pub stripe_webhook_secret: Option<Secret>,
}

impl Secrets {
    /// The variable holding the HS256 JWT secret.
    pub const JWT_HS256_ENV: &'static str = "RECSTREAM_JWT_HS256_SECRET";
    /// The variable holding the Stripe secret key.
    pub const STRIPE_KEY_ENV: &'static str = "STRIPE_SECRET_KEY";
    /// The variable holding the Stripe webhook signing secret.
    pub const STRIPE_WEBHOOK_ENV: &'static str = "STRIPE_WEBHOOK_SECRET";

    /// Reads the variables above; unset or empty ones are `None`.
    pub fn from_env() -> Secrets {
        let get = |k: &str| {
            std::env::var(k)
                .ok()
                .filter(|v| !v.is_empty())
                .map(Secret::new)
        };
        Secrets {
            jwt_hs256: get(Self::JWT_HS256_ENV),
            stripe_secret_key: get(Self::STRIPE_KEY_ENV),
            stripe_webhook_secret: get(Self::STRIPE_WEBHOOK_ENV),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_unknown_fields_are_rejected() {
        CommerceConfig::default().validate().unwrap();
        CommerceConfig::for_tests("/tmp/x").validate().unwrap();
        let bad: Result<CommerceConfig, _> = serde_json::from_str(r#"{"max_qty": 5}"#);
        assert!(bad.is_err());
        let c = CommerceConfig {
            max_quantity: 0,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("max_quantity"));
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secrets {
            jwt_hs256: Some(Secret::new("hunter2")),
            ..Default::default()
        };
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
