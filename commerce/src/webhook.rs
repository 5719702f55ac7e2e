//! `POST /v1/payments/webhook`: Stripe events, verified and deduplicated, answered fast.
//!
//! ```text
//!  Stripe-Signature: t=<unix s>,v1=<hex>[,v1=<hex>…][,v0=…]
//!    ─► |now − t| ≤ tolerance (300 s)                      else 400 (replay protection)
//!    ─► HMAC-SHA256(secret, "<t>.<raw body>") equals one v1  else 400 (constant-time compare)
//!    ─► webhook#<event id> exists                          yes: 200 {"duplicate": true}
//!    ─► payment_intent.succeeded / .payment_failed about an order whose payment waits
//!       for customer action (3-D Secure): capture ─► ORDER_BILLED, or ─► PAYMENT_FAIL
//!       (see [`crate::saga::payments`]); unknown intent: acknowledged, counted
//!    ─► webhook#<event id> (condition: absent) + payment record + outbox: one transaction
//!    ─► 200 {"received": true}
//! ```
//!
//! Several `v1` values are accepted because Stripe signs with every active secret while
//! one is being rolled. Stored events (type, object id, order id from metadata) are also
//! the reconciliation record. An event about a payment already settled (billed, failed,
//! cancelled) is recorded and changes nothing, so duplicate and out-of-order deliveries
//! are harmless; one that overtakes the payment consumer answers 503 so Stripe redelivers.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::Ctx;
use super::error::CommerceError;
use super::saga::payments::{AsyncOutcome, Payments, WebhookEffect};
use super::saga::{Effects, outbox};
use super::store::{Cond, Key, StoreError, Write};

/// Webhooks by outcome: `applied` (moved the saga), `accepted` (recorded only: another
/// event type, or a payment already settled), `unknown_intent` (a payment event about no
/// payment of ours waiting for it), `duplicate`, `bad_signature`, `malformed`.
pub const WEBHOOKS_TOTAL: &str = "recstream_commerce_webhooks_total";
/// Largest accepted webhook body.
pub const MAX_WEBHOOK_BODY: usize = 256 * 1024;
/// How long event ids are remembered for deduplication (Stripe retries for 3 days).
const DEDUP_TTL_S: i64 = 30 * 24 * 3600;

/// Why a `Stripe-Signature` header was refused (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No header.
    #[error("missing Stripe-Signature header")]
    Missing,
    /// The header is not `t=…,v1=…` pairs.
    #[error("malformed Stripe-Signature header")]
    Malformed,
    /// No `v1` signature in it.
    #[error("no v1 signature")]
    NoV1,
    /// Its timestamp is outside the tolerance (300 s): possibly a replay.
    #[error("timestamp outside the tolerance zone")]
    Stale,
    /// No `v1` signature matches the body under the configured secret.
    #[error("no signature matches the payload")]
    Mismatch,
}

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 over `"<t>.<body>"`; `None` only if the key were refused (HMAC takes any
/// key length, so never in practice).
fn mac(secret: &str, t: i64, body: &[u8]) -> Option<Vec<u8>> {
    let mut m = HmacSha256::new_from_slice(secret.as_bytes()).ok()?;
    m.update(t.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    Some(m.finalize().into_bytes().to_vec())
}

/// The `v1` signature of `body` at time `t` (hex), as Stripe computes it.
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    hex::encode(mac(secret, t, body).unwrap_or_default())
}

/// A complete `Stripe-Signature` header value, for tests and tools.
pub fn signature_header(secret: &str, t: i64, body: &[u8]) -> String {
    format!("t={t},v1={}", sign(secret, t, body))
}

/// Verifies a `Stripe-Signature` header; returns its timestamp.
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secret: &str,
    now_s: i64,
    tolerance_s: u64,
) -> Result<i64, SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    if header.len() > 4096 {
        return Err(SignatureError::Malformed);
    }
    let mut t: Option<i64> = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed)?;
        match k {
            "t" => {
                if t.is_some() {
                    return Err(SignatureError::Malformed);
                }
                t = Some(v.parse().map_err(|_| SignatureError::Malformed)?);
            }
            "v1" => v1.push(v),
            _ => {} // v0 and future schemes are ignored
        }
    }
    let t = t.ok_or(SignatureError::Malformed)?;
    if v1.is_empty() {
        return Err(SignatureError::NoV1);
    }
    if now_s.abs_diff(t) > tolerance_s {
        return Err(SignatureError::Stale);
    }
    let expected = mac(secret, t, body).ok_or(SignatureError::Mismatch)?;
    let mut ok = subtle::Choice::from(0u8);
    for sig in v1 {
        // Wrong-length or non-hex candidates compare unequal, in constant time too.
        let candidate = hex::decode(sig).unwrap_or_default();
        ok |= candidate.as_slice().ct_eq(expected.as_slice());
    }
    if bool::from(ok) {
        Ok(t)
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[derive(Debug, Deserialize)]
struct StripeEvent {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Option<EventData>,
}

#[derive(Debug, Deserialize)]
struct EventData {
    #[serde(default)]
    object: serde_json::Value,
}

/// What is kept of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookRecord {
    /// Stripe's event id (`evt_…`), the deduplication key.
    pub event_id: String,
    /// Stripe's event type, e.g. `payment_intent.succeeded`.
    pub kind: String,
    /// Id of the object the event is about (`pi_…`, `re_…`), if any.
    pub object_id: Option<String>,
    /// The order id from the object's metadata, if any.
    pub order_id: Option<String>,
    /// When it was received, epoch ms.
    pub received_at_ms: i64,
}

/// The store key of a received webhook event.
pub fn webhook_key(event_id: &str) -> Key {
    Key::new("webhook", event_id)
}

/// Handles one delivery: `Ok(true)` if new, `Ok(false)` if a duplicate.
pub(crate) async fn receive(
    ctx: &Ctx,
    signature: Option<&str>,
    body: &[u8],
) -> Result<bool, CommerceError> {
    let Some(secret) = &ctx.webhook_secret else {
        return Err(CommerceError::NotFound(
            "webhooks are not configured".into(),
        ));
    };
    let now = ctx.clock.now_ms();
    if let Err(e) = verify(
        signature,
        body,
        secret.expose(),
        now / 1000,
        ctx.cfg.payments.webhook_tolerance_s,
    ) {
        metrics::counter!(WEBHOOKS_TOTAL, "result" => "bad_signature").increment(1);
        return Err(CommerceError::BadRequest(format!(
            "invalid webhook signature: {e}"
        )));
    }
    let ev: StripeEvent = serde_json::from_slice(body).map_err(|_| {
        metrics::counter!(WEBHOOKS_TOTAL, "result" => "malformed").increment(1);
        CommerceError::BadRequest("webhook body is not a Stripe event".into())
    })?;
    super::check_id("event id", &ev.id)?;
    let object = ev.data.map(|d| d.object).unwrap_or_default();
    let str_at =
        |v: &serde_json::Value| v.as_str().map(|s| s.chars().take(256).collect::<String>());
    let rec = WebhookRecord {
        object_id: str_at(&object["id"]),
        order_id: str_at(&object["metadata"]["order_id"]),
        kind: ev.kind.chars().take(128).collect(),
        event_id: ev.id.clone(),
        received_at_ms: now,
    };
    // A delivery already recorded is dropped before anything is asked of the provider.
    if ctx.store.get(&webhook_key(&ev.id)).await?.is_some() {
        metrics::counter!(WEBHOOKS_TOTAL, "result" => "duplicate").increment(1);
        return Ok(false);
    }
    let outcome = match rec.kind.as_str() {
        "payment_intent.succeeded" => Some(AsyncOutcome::Succeeded),
        "payment_intent.payment_failed" => Some(AsyncOutcome::Failed(
            str_at(&object["last_payment_error"]["decline_code"])
                .or_else(|| str_at(&object["last_payment_error"]["code"]))
                .unwrap_or_else(|| "payment_failed".into()),
        )),
        _ => None,
    };
    let value = super::store::to_json(&rec)?;
    for attempt in 0..4u32 {
        let effect = match (&outcome, &rec.order_id, &rec.object_id) {
            (Some(o), Some(order), Some(intent)) if super::check_id("order id", order).is_ok() => {
                Payments::settle_async(ctx, order, intent, o.clone()).await?
            }
            (Some(_), _, _) => WebhookEffect::UnknownIntent,
            (None, _, _) => WebhookEffect::Stale,
        };
        let (result, effects) = match effect {
            WebhookEffect::Apply(e) => ("applied", e),
            WebhookEffect::UnknownIntent => ("unknown_intent", Effects::none()),
            WebhookEffect::Stale => ("accepted", Effects::none()),
        };
        let emits = !effects.emit.is_empty();
        let mut writes = vec![Write::Put {
            key: webhook_key(&ev.id),
            value: value.clone(),
            cond: Cond::Absent,
            expires_at_s: Some(now / 1000 + DEDUP_TTL_S),
        }];
        writes.extend(effects.writes);
        for m in &effects.emit {
            writes.push(outbox::write(m)?);
        }
        match ctx.store.transact(writes).await {
            Ok(()) => {
                metrics::counter!(WEBHOOKS_TOTAL, "result" => result).increment(1);
                if emits {
                    ctx.signals.outbox.notify_one();
                }
                tracing::info!(event_id = %rec.event_id, kind = %rec.kind, result, "stripe webhook received");
                return Ok(true);
            }
            Err(StoreError::Conflict { .. }) => {
                if ctx.store.get(&webhook_key(&ev.id)).await?.is_some() {
                    // A concurrent delivery of the same event won.
                    metrics::counter!(WEBHOOKS_TOTAL, "result" => "duplicate").increment(1);
                    return Ok(false);
                }
                // The payment record moved under us (the saga or another event): re-read.
                tokio::time::sleep(crate::saga::backoff(attempt) / 4).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(CommerceError::Unavailable(
        "webhook kept conflicting with the saga; retry".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test_secret";

    #[test]
    fn matches_an_independent_hmac() {
        // python3 -c "import hmac,hashlib;print(hmac.new(b'whsec_test_secret',
        //   b'1700000000.{\"id\":\"evt_1\"}',hashlib.sha256).hexdigest())"
        assert_eq!(
            sign(SECRET, 1_700_000_000, br#"{"id":"evt_1"}"#),
            "248a374f50f943a28b0f6ab50faf9a7e7e29b710fa26df9fb1618b9bf8ea9c9a"
        );
    }

    #[test]
    fn accepts_good_signatures_and_any_of_several_v1() {
        let body = br#"{"id":"evt_1","type":"payment_intent.succeeded"}"#;
        let t = 1_700_000_000;
        let h = signature_header(SECRET, t, body);
        assert_eq!(verify(Some(&h), body, SECRET, t + 10, 300), Ok(t));
        let several = format!(
            "t={t},v1={},v1={},v0=abc",
            "00".repeat(32),
            sign(SECRET, t, body)
        );
        assert_eq!(verify(Some(&several), body, SECRET, t, 300), Ok(t));
        let rolled = format!("t={t},v1={},v1=zz", sign("whsec_old", t, body));
        assert_eq!(
            verify(Some(&rolled), body, SECRET, t, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn rejects_tampering_staleness_and_garbage() {
        let body = br#"{"id":"evt_1"}"#;
        let t = 1_700_000_000;
        let h = signature_header(SECRET, t, body);
        assert_eq!(
            verify(Some(&h), br#"{"id":"evt_2"}"#, SECRET, t, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some(&h), body, "whsec_other", t, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some(&h), body, SECRET, t + 301, 300),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(Some(&h), body, SECRET, t - 301, 300),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(None, body, SECRET, t, 300),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(Some("garbage"), body, SECRET, t, 300),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(Some(&format!("t={t}")), body, SECRET, t, 300),
            Err(SignatureError::NoV1)
        );
        assert_eq!(
            verify(Some(&format!("t={t},t={t},v1=00")), body, SECRET, t, 300),
            Err(SignatureError::Malformed)
        );
        let short = format!("t={t},v1={}", &sign(SECRET, t, body)[..10]);
        assert_eq!(
            verify(Some(&short), body, SECRET, t, 300),
            Err(SignatureError::Mismatch)
        );
    }
}
