//! Payments on Stripe's PaymentIntent model, behind [`PaymentProvider`].
//!
//! ```text
//!  saga payment service ─► create (manual capture) ─► confirm(payment method) ─► capture
//!        │  every call carries an Idempotency-Key derived from the order
//!        │  (`order-<id>-create|confirm|capture|cancel|refund`): a retry after a crash
//!        │  replays the provider's first answer, so an order is charged at most once
//!        ├─► SimulatedProvider (default): Stripe's test-card semantics, in process
//!        └─► StripeClient: HTTPS form API, secret key from STRIPE_SECRET_KEY
//! ```
//!
//! Card numbers never enter the system: checkout accepts a payment method id (what
//! Stripe.js returns) or one of Stripe's public test card numbers, which
//! [`normalize_payment_method`] maps to Stripe's matching test payment method
//! (`4242…` → `pm_card_visa`), so nothing resembling a PAN is stored or logged.

pub mod simulated;
pub mod stripe;

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::error::CommerceError;

pub use simulated::{Fault, FaultKind, Op, SimulatedProvider};
pub use stripe::StripeClient;

/// Stripe's PaymentIntent status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntentStatus {
    /// No payment method attached yet.
    RequiresPaymentMethod,
    /// A payment method is attached; waits for confirmation.
    RequiresConfirmation,
    /// The customer must act (3-D Secure): `pm_card_threeDSecure2Required` on the simulated
    /// provider, as on Stripe.
    RequiresAction,
    /// The provider is working on it.
    Processing,
    /// Authorised; waits for capture (manual capture).
    RequiresCapture,
    /// Cancelled; nothing will be charged.
    Canceled,
    /// Charged.
    Succeeded,
}

/// When an authorised intent is captured (Stripe's `capture_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CaptureMethod {
    /// On confirmation.
    Automatic,
    /// On confirmation, asynchronously.
    AutomaticAsync,
    /// Only by an explicit capture call (the saga's choice: capture after confirmation).
    #[default]
    Manual,
}

/// Why a payment failed (Stripe's `last_payment_error` / card error).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PaymentFailure {
    /// Stripe's error code, e.g. `card_declined`.
    #[serde(default)]
    pub code: Option<String>,
    /// The issuer's decline code, e.g. `insufficient_funds`.
    #[serde(default)]
    pub decline_code: Option<String>,
    /// A human-readable message.
    #[serde(default)]
    pub message: Option<String>,
}

impl PaymentFailure {
    /// The most specific reason: `insufficient_funds` over `card_declined`.
    pub fn reason(&self) -> &str {
        self.decline_code
            .as_deref()
            .or(self.code.as_deref())
            .unwrap_or("payment_failed")
    }
}

/// The subset of Stripe's PaymentIntent this service uses; unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentIntent {
    /// The provider's id (`pi_…`).
    pub id: String,
    /// Minor units.
    pub amount: i64,
    /// Lower-case ISO code, as Stripe writes it.
    pub currency: String,
    /// Where the intent stands.
    pub status: IntentStatus,
    /// When it is captured.
    #[serde(default)]
    pub capture_method: CaptureMethod,
    /// Minor units captured so far.
    #[serde(default)]
    pub amount_received: i64,
    /// The attached payment method's id (`pm_…`).
    #[serde(default)]
    pub payment_method: Option<String>,
    /// Why the last attempt failed, if it did.
    #[serde(default)]
    pub last_payment_error: Option<PaymentFailure>,
    /// Key-value pairs the caller attached (the order id).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The secret the customer's browser uses to complete a required action (3-D Secure)
    /// with Stripe.js; only ever handed to the order's owner.
    #[serde(default)]
    pub client_secret: Option<String>,
}

/// The subset of Stripe's Refund this service uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    /// The provider's id (`re_…`).
    pub id: String,
    /// The intent refunded.
    pub payment_intent: Option<String>,
    /// Minor units refunded.
    pub amount: i64,
    /// Lower-case ISO code.
    pub currency: String,
    /// Stripe's refund status, e.g. `succeeded`.
    pub status: String,
}

/// Parameters of a new intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreateIntent {
    /// Minor units to charge.
    pub amount: i64,
    /// Upper or lower case; providers send lower case.
    pub currency: String,
    /// When to capture (the saga uses manual capture).
    pub capture_method: CaptureMethod,
    /// Key-value pairs stored with the intent (the order id).
    pub metadata: BTreeMap<String, String>,
}

/// Why a provider call failed; [`PaymentError::retriable`] tells retries from final
/// answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    /// The card was declined (Stripe `card_error`, HTTP 402). Final for this order.
    #[error("payment declined: {}", .0.reason())]
    Declined(PaymentFailure),
    /// The request is wrong (bad state, unknown payment method). Final.
    #[error("payment request rejected: {0}")]
    Invalid(String),
    /// The same Idempotency-Key was used with other parameters. Final.
    #[error("idempotency key reused with other parameters")]
    IdempotencyMismatch,
    /// The provider refused our credentials. Final until reconfigured.
    #[error("payment provider rejected the credentials")]
    Auth,
    /// Network trouble, timeouts, 429, 5xx, key in use: retry with the same key.
    #[error("payment provider unavailable: {0}")]
    Unavailable(String),
}

impl PaymentError {
    /// Whether the same call, with the same idempotency key, may succeed later (only
    /// [`PaymentError::Unavailable`]).
    pub fn retriable(&self) -> bool {
        matches!(self, PaymentError::Unavailable(_))
    }
}

/// A payment provider with Stripe's PaymentIntent semantics: the simulated one or
/// Stripe. Every mutating call takes an idempotency key; the same key with the same
/// parameters returns the first answer.
#[async_trait]
pub trait PaymentProvider: Send + Sync + 'static {
    /// A short name for logs and metrics (`simulated`, `stripe`).
    fn name(&self) -> &'static str;
    /// Whether raw test card numbers may be mapped to test payment methods.
    fn test_mode(&self) -> bool;
    /// Creates an intent for `req`.
    async fn create(&self, req: &CreateIntent, idem: &str) -> Result<PaymentIntent, PaymentError>;
    /// Confirms with `payment_method`. A decline is `Err(Declined)`.
    async fn confirm(
        &self,
        id: &str,
        payment_method: &str,
        idem: &str,
    ) -> Result<PaymentIntent, PaymentError>;
    /// Captures an authorised intent.
    async fn capture(&self, id: &str, idem: &str) -> Result<PaymentIntent, PaymentError>;
    /// Cancels an intent that is not yet charged.
    async fn cancel(&self, id: &str, idem: &str) -> Result<PaymentIntent, PaymentError>;
    /// Refunds `amount` (all that is left when `None`).
    async fn refund(
        &self,
        id: &str,
        amount: Option<i64>,
        idem: &str,
    ) -> Result<Refund, PaymentError>;
    /// Reads an intent (no side effects, no key).
    async fn retrieve(&self, id: &str) -> Result<PaymentIntent, PaymentError>;
}

/// Stripe's public test cards and the test payment methods that behave like them.
pub const TEST_CARDS: &[(&str, &str)] = &[
    ("4242424242424242", "pm_card_visa"),
    ("4000000000000002", "pm_card_chargeDeclined"),
    (
        "4000000000009995",
        "pm_card_chargeDeclinedInsufficientFunds",
    ),
    ("4000002760003184", "pm_card_threeDSecure2Required"),
];

/// Whether `digits` (ASCII digits only) passes the Luhn check card numbers carry.
pub fn luhn_valid(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d.wrapping_sub(b'0'));
        if v > 9 {
            return false;
        }
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    !digits.is_empty() && sum.is_multiple_of(10)
}

/// Whether `text` holds something that looks like a card number (a PAN): a run of 13 to
/// 19 digits, optionally grouped by single spaces or dashes, starting with a card
/// network's major industry digit (2 to 6: Mastercard, Visa, Amex, Discover, JCB,
/// UnionPay, Maestro) and passing the Luhn check, wherever it is (`pm_5555555555554444`,
/// a shipping name, a note).
pub fn contains_card_number(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        // One run: digits, with single separators between digits.
        let mut digits = Vec::new();
        let mut j = i;
        while j < b.len() {
            if b[j].is_ascii_digit() {
                digits.push(b[j]);
                j += 1;
            } else if (b[j] == b' ' || b[j] == b'-')
                && j + 1 < b.len()
                && b[j + 1].is_ascii_digit()
                && j > i
            {
                j += 1;
            } else {
                break;
            }
        }
        if (13..=19).contains(&digits.len())
            && (b'2'..=b'6').contains(&digits[0])
            && luhn_valid(&digits)
        {
            return true;
        }
        i = j.max(i + 1);
    }
    false
}

/// What checkout accepts as `payment_method`: a payment method id (`pm_…`) or, against a
/// test-mode provider, one of [`TEST_CARDS`]' numbers (spaces and dashes allowed). Any
/// other card-like number is refused without echoing it.
pub fn normalize_payment_method(input: &str, test_mode: bool) -> Result<String, CommerceError> {
    let compact: String = input.chars().filter(|c| *c != ' ' && *c != '-').collect();
    if !compact.is_empty() && compact.chars().all(|c| c.is_ascii_digit()) {
        if test_mode && let Some((_, pm)) = TEST_CARDS.iter().find(|(n, _)| *n == compact) {
            return Ok((*pm).to_string());
        }
        return Err(CommerceError::BadRequest(
            "raw card numbers are not accepted; send a payment method id (pm_…) from Stripe.js"
                .into(),
        ));
    }
    if contains_card_number(input) {
        // A PAN dressed as a payment method id (`pm_5555555555554444`): refused, never
        // echoed, stored or logged.
        return Err(CommerceError::BadRequest(
            "raw card numbers are not accepted; send a payment method id (pm_…) from Stripe.js"
                .into(),
        ));
    }
    let ok = (4..=128).contains(&input.len())
        && input.starts_with("pm_")
        && input.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(CommerceError::BadRequest(
            "payment_method must be a payment method id like pm_card_visa".into(),
        ));
    }
    Ok(input.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_cards_map_to_test_payment_methods_and_pans_are_refused() {
        assert_eq!(
            normalize_payment_method("4242 4242 4242 4242", true).unwrap(),
            "pm_card_visa"
        );
        assert_eq!(
            normalize_payment_method("4000000000009995", true).unwrap(),
            "pm_card_chargeDeclinedInsufficientFunds"
        );
        let e = normalize_payment_method("5555555555554444", true).unwrap_err();
        assert!(!e.to_string().contains("5555"));
        assert!(normalize_payment_method("4242424242424242", false).is_err());
        assert_eq!(
            normalize_payment_method("pm_1NXabc", false).unwrap(),
            "pm_1NXabc"
        );
        assert!(normalize_payment_method("pm_<script>", true).is_err());
        assert!(normalize_payment_method("", true).is_err());
        // A PAN inside a payment method id.
        let e = normalize_payment_method("pm_5555555555554444", true).unwrap_err();
        assert!(!e.to_string().contains("5555"));
        assert!(normalize_payment_method("pm_card_5555555555554444", false).is_err());
    }

    #[test]
    fn card_numbers_are_found_anywhere() {
        for s in [
            "5555555555554444",
            "pm_5555555555554444",
            "my card 4242 4242 4242 4242 thanks",
            "4000-0566-5566-5556",
            "x378282246310005y", // Amex, 15 digits
            "6011111111111117",
        ] {
            assert!(contains_card_number(s), "{s}");
        }
        for s in [
            "pm_card_visa",
            "4242424242424241",             // fails Luhn
            "123456789012",                 // 12 digits
            "order 1569888000000 at 12:00", // an epoch-ms timestamp (Luhn-valid, starts with 1)
            "541312140",
            "",
            "4242  4242 4242 4242", // double space: not one run
            "99995555555555554444", // 20 digits: no card number
        ] {
            assert!(!contains_card_number(s), "{s}");
        }
        assert!(luhn_valid(b"79927398713"));
        assert!(!luhn_valid(b"79927398710"));
    }
}
