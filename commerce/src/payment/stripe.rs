//! The Stripe client: PaymentIntents and Refunds over Stripe's form-encoded HTTPS API.
//!
//! Every mutating call sends the caller's `Idempotency-Key` (derived from the order id by
//! the saga) so Stripe replays instead of charging twice; the API version is pinned with
//! `Stripe-Version`. The secret key comes from `STRIPE_SECRET_KEY` and is only ever put
//! in the `Authorization` header (never logged, never in errors).
//!
//! | status | meaning here |
//! |---|---|
//! | 2xx | the object |
//! | 402 (`card_error`) | [`PaymentError::Declined`] |
//! | 400 `idempotency_error` | [`PaymentError::IdempotencyMismatch`] |
//! | 400, 404 | [`PaymentError::Invalid`] |
//! | 401, 403 | [`PaymentError::Auth`] |
//! | 409, 429, 5xx, network | [`PaymentError::Unavailable`] (retry with the same key) |

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{
    CaptureMethod, CreateIntent, PaymentError, PaymentFailure, PaymentIntent, PaymentProvider,
    Refund,
};
use crate::config::Secret;

/// The API version this client is written against.
pub const STRIPE_VERSION: &str = "2024-06-20";

/// The Stripe [`PaymentProvider`]: PaymentIntents and Refunds over HTTPS.
pub struct StripeClient {
    http: reqwest::Client,
    base: String,
    key: Secret,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: StripeError,
}

#[derive(Deserialize, Default)]
struct StripeError {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    decline_code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

fn id_ok(id: &str) -> Result<(), PaymentError> {
    if !id.is_empty()
        && id.len() <= 255
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        Ok(())
    } else {
        Err(PaymentError::Invalid("malformed object id".into()))
    }
}

impl StripeClient {
    /// A client for the API at `base` (`https://api.stripe.com` in production) with
    /// secret `key`, each call bounded by `timeout`. `Err` for an empty key or a client
    /// that cannot be built.
    pub fn new(base: &str, key: Secret, timeout: Duration) -> Result<StripeClient, String> {
        if key.expose().is_empty() {
            return Err("empty Stripe secret key".into());
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("recstream/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        Ok(StripeClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            key,
        })
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        form: &[(String, String)],
        idem: &str,
    ) -> Result<T, PaymentError> {
        if idem.is_empty() || idem.len() > 255 {
            return Err(PaymentError::Invalid(
                "Idempotency-Key must be 1..=255 characters".into(),
            ));
        }
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(self.key.expose())
            .header("Stripe-Version", STRIPE_VERSION)
            .header("Idempotency-Key", idem)
            .form(form);
        self.send(req).await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, PaymentError> {
        let resp = req.send().await.map_err(|e| {
            PaymentError::Unavailable(format!("stripe request failed: {}", e.without_url()))
        })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| {
            PaymentError::Unavailable(format!("stripe response: {}", e.without_url()))
        })?;
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|e| {
                PaymentError::Unavailable(format!("unexpected stripe response: {e}"))
            });
        }
        let err = serde_json::from_slice::<ErrorBody>(&body)
            .map(|b| b.error)
            .unwrap_or_default();
        let msg = err.message.clone().unwrap_or_else(|| status.to_string());
        Err(match status.as_u16() {
            402 => PaymentError::Declined(PaymentFailure {
                code: err.code,
                decline_code: err.decline_code,
                message: err.message,
            }),
            400 if err.kind.as_deref() == Some("idempotency_error") => {
                PaymentError::IdempotencyMismatch
            }
            401 | 403 => PaymentError::Auth,
            400 | 404 => PaymentError::Invalid(msg),
            _ => PaymentError::Unavailable(format!("stripe {status}: {msg}")),
        })
    }
}

#[async_trait]
impl PaymentProvider for StripeClient {
    fn name(&self) -> &'static str {
        "stripe"
    }

    fn test_mode(&self) -> bool {
        self.key.expose().starts_with("sk_test_") || self.key.expose().starts_with("rk_test_")
    }

    async fn create(&self, req: &CreateIntent, idem: &str) -> Result<PaymentIntent, PaymentError> {
        let capture = match req.capture_method {
            CaptureMethod::Automatic => "automatic",
            CaptureMethod::AutomaticAsync => "automatic_async",
            CaptureMethod::Manual => "manual",
        };
        let mut form = vec![
            ("amount".to_string(), req.amount.to_string()),
            ("currency".to_string(), req.currency.to_ascii_lowercase()),
            ("capture_method".to_string(), capture.to_string()),
            ("payment_method_types[]".to_string(), "card".to_string()),
        ];
        for (k, v) in &req.metadata {
            form.push((format!("metadata[{k}]"), v.clone()));
        }
        self.post("/v1/payment_intents", &form, idem).await
    }

    async fn confirm(
        &self,
        id: &str,
        payment_method: &str,
        idem: &str,
    ) -> Result<PaymentIntent, PaymentError> {
        id_ok(id)?;
        let form = vec![("payment_method".to_string(), payment_method.to_string())];
        self.post(&format!("/v1/payment_intents/{id}/confirm"), &form, idem)
            .await
    }

    async fn capture(&self, id: &str, idem: &str) -> Result<PaymentIntent, PaymentError> {
        id_ok(id)?;
        self.post(&format!("/v1/payment_intents/{id}/capture"), &[], idem)
            .await
    }

    async fn cancel(&self, id: &str, idem: &str) -> Result<PaymentIntent, PaymentError> {
        id_ok(id)?;
        self.post(&format!("/v1/payment_intents/{id}/cancel"), &[], idem)
            .await
    }

    async fn refund(
        &self,
        id: &str,
        amount: Option<i64>,
        idem: &str,
    ) -> Result<Refund, PaymentError> {
        id_ok(id)?;
        let mut form = vec![("payment_intent".to_string(), id.to_string())];
        if let Some(a) = amount {
            form.push(("amount".to_string(), a.to_string()));
        }
        self.post("/v1/refunds", &form, idem).await
    }

    async fn retrieve(&self, id: &str) -> Result<PaymentIntent, PaymentError> {
        id_ok(id)?;
        let req = self
            .http
            .get(format!("{}/v1/payment_intents/{id}", self.base))
            .bearer_auth(self.key.expose())
            .header("Stripe-Version", STRIPE_VERSION);
        self.send(req).await
    }
}

#[cfg(test)]
mod tests {
    //! The client against a local axum server standing in for api.stripe.com.

    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::{get, post};
    use serde_json::json;

    use super::*;
    use crate::payment::IntentStatus;

    #[derive(Debug, Clone)]
    struct Seen {
        path: String,
        auth: String,
        idem: Option<String>,
        version: Option<String>,
        content_type: Option<String>,
        form: Vec<(String, String)>,
    }

    type Log = Arc<Mutex<Vec<Seen>>>;

    fn record(log: &Log, path: String, h: &HeaderMap, body: &[u8]) {
        let hv = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
        let form = url_pairs(body);
        log.lock().unwrap().push(Seen {
            path,
            auth: hv("authorization").unwrap_or_default(),
            idem: hv("idempotency-key"),
            version: hv("stripe-version"),
            content_type: hv("content-type"),
            form,
        });
    }

    /// A minimal `application/x-www-form-urlencoded` decoder for the assertions.
    fn url_pairs(body: &[u8]) -> Vec<(String, String)> {
        let dec = |s: &str| {
            let s = s.replace('+', " ");
            let mut out = Vec::new();
            let b = s.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'%' && i + 2 < b.len() {
                    let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                    out.push(u8::from_str_radix(h, 16).unwrap());
                    i += 3;
                } else {
                    out.push(b[i]);
                    i += 1;
                }
            }
            String::from_utf8(out).unwrap()
        };
        std::str::from_utf8(body)
            .unwrap()
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (dec(k), dec(v))
            })
            .collect()
    }

    fn pi(id: &str, status: &str) -> serde_json::Value {
        json!({"id": id, "object": "payment_intent", "amount": 1999, "currency": "usd",
               "status": status, "capture_method": "manual", "amount_received": 0,
               "payment_method": null, "last_payment_error": null,
               "metadata": {"order_id": "ord_1"}, "livemode": false})
    }

    async fn fake_stripe() -> (String, Log) {
        let log: Log = Arc::default();
        let app = Router::new()
            .route(
                "/v1/payment_intents",
                post(|State(log): State<Log>, h: HeaderMap, body: Bytes| async move {
                    record(&log, "/v1/payment_intents".into(), &h, &body);
                    axum::Json(pi("pi_123", "requires_payment_method")).into_response()
                }),
            )
            .route(
                "/v1/payment_intents/{id}/{action}",
                post(
                    |State(log): State<Log>, Path((id, action)): Path<(String, String)>, h: HeaderMap, body: Bytes| async move {
                        record(&log, format!("/v1/payment_intents/{id}/{action}"), &h, &body);
                        let form = url_pairs(&body);
                        match action.as_str() {
                            "confirm" if form.iter().any(|(_, v)| v == "pm_card_chargeDeclined") => (
                                StatusCode::PAYMENT_REQUIRED,
                                axum::Json(json!({"error": {"type": "card_error", "code": "card_declined",
                                    "decline_code": "generic_decline", "message": "Your card was declined."}})),
                            )
                                .into_response(),
                            "confirm" => axum::Json(pi(&id, "requires_capture")).into_response(),
                            "capture" => axum::Json(pi(&id, "succeeded")).into_response(),
                            "cancel" => (
                                StatusCode::BAD_REQUEST,
                                axum::Json(json!({"error": {"type": "idempotency_error",
                                    "message": "Keys for idempotent requests can only be used with the same parameters"}})),
                            )
                                .into_response(),
                            _ => StatusCode::SERVICE_UNAVAILABLE.into_response(),
                        }
                    },
                ),
            )
            .route(
                "/v1/payment_intents/{id}",
                get(|Path(id): Path<String>| async move { axum::Json(pi(&id, "succeeded")) }),
            )
            .route(
                "/v1/refunds",
                post(|State(log): State<Log>, h: HeaderMap, body: Bytes| async move {
                    record(&log, "/v1/refunds".into(), &h, &body);
                    if h.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer sk_test_abc") {
                        return StatusCode::UNAUTHORIZED.into_response();
                    }
                    axum::Json(json!({"id": "re_1", "object": "refund", "amount": 1999, "currency": "usd",
                        "payment_intent": "pi_123", "status": "succeeded"}))
                    .into_response()
                }),
            )
            .with_state(log.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), log)
    }

    fn client(base: &str, key: &str) -> StripeClient {
        StripeClient::new(base, Secret::new(key), Duration::from_secs(5)).unwrap()
    }

    #[tokio::test]
    async fn builds_stripe_requests_and_parses_answers() {
        let (base, log) = fake_stripe().await;
        let c = client(&base, "sk_test_abc");
        assert!(c.test_mode());
        let req = CreateIntent {
            amount: 1999,
            currency: "USD".into(),
            capture_method: CaptureMethod::Manual,
            metadata: [("order_id".to_string(), "ord_1".to_string())].into(),
        };
        let created = c.create(&req, "order-ord_1-create").await.unwrap();
        assert_eq!(created.status, IntentStatus::RequiresPaymentMethod);
        assert_eq!(created.metadata["order_id"], "ord_1");
        let confirmed = c
            .confirm("pi_123", "pm_card_visa", "order-ord_1-confirm")
            .await
            .unwrap();
        assert_eq!(confirmed.status, IntentStatus::RequiresCapture);
        let captured = c.capture("pi_123", "order-ord_1-capture").await.unwrap();
        assert_eq!(captured.status, IntentStatus::Succeeded);
        let refund = c
            .refund("pi_123", Some(1999), "order-ord_1-refund")
            .await
            .unwrap();
        assert_eq!((refund.id.as_str(), refund.amount), ("re_1", 1999));
        assert_eq!(
            c.retrieve("pi_123").await.unwrap().status,
            IntentStatus::Succeeded
        );

        let seen = log.lock().unwrap().clone();
        assert_eq!(seen.len(), 4);
        let create = &seen[0];
        assert_eq!(create.path, "/v1/payment_intents");
        assert_eq!(create.auth, "Bearer sk_test_abc");
        assert_eq!(create.idem.as_deref(), Some("order-ord_1-create"));
        assert_eq!(create.version.as_deref(), Some(STRIPE_VERSION));
        assert_eq!(
            create.content_type.as_deref(),
            Some("application/x-www-form-urlencoded")
        );
        for pair in [
            ("amount", "1999"),
            ("currency", "usd"),
            ("capture_method", "manual"),
            ("metadata[order_id]", "ord_1"),
        ] {
            assert!(
                create
                    .form
                    .contains(&(pair.0.to_string(), pair.1.to_string())),
                "{pair:?} in {:?}",
                create.form
            );
        }
        assert_eq!(seen[1].path, "/v1/payment_intents/pi_123/confirm");
        assert_eq!(
            seen[1].form,
            vec![("payment_method".to_string(), "pm_card_visa".to_string())]
        );
        assert_eq!(seen[1].idem.as_deref(), Some("order-ord_1-confirm"));
        assert_eq!(seen[2].path, "/v1/payment_intents/pi_123/capture");
        assert_eq!(seen[3].path, "/v1/refunds");
        assert!(
            seen[3]
                .form
                .contains(&("payment_intent".to_string(), "pi_123".to_string()))
        );
    }

    #[tokio::test]
    async fn maps_stripe_errors() {
        let (base, _log) = fake_stripe().await;
        let c = client(&base, "sk_test_abc");
        match c.confirm("pi_9", "pm_card_chargeDeclined", "k1").await {
            Err(PaymentError::Declined(f)) => {
                assert_eq!(f.reason(), "generic_decline");
                assert_eq!(f.code.as_deref(), Some("card_declined"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            c.cancel("pi_9", "k2").await,
            Err(PaymentError::IdempotencyMismatch)
        );
        assert!(
            c.post::<PaymentIntent>("/v1/payment_intents/pi_9/other", &[], "k3")
                .await
                .unwrap_err()
                .retriable()
        );
        let wrong_key = client(&base, "sk_test_wrong");
        assert_eq!(
            wrong_key.refund("pi_1", None, "k4").await,
            Err(PaymentError::Auth)
        );
        assert!(matches!(
            c.capture("pi/../x", "k5").await,
            Err(PaymentError::Invalid(_))
        ));
        // Nothing listens there: a retriable error that does not leak the key.
        let down = client("http://127.0.0.1:9", "sk_test_secret_value");
        let e = down.capture("pi_1", "k6").await.unwrap_err();
        assert!(e.retriable());
        assert!(!e.to_string().contains("sk_test_secret_value"));
    }
}
