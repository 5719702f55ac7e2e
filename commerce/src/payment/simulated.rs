//! The simulated payment provider: Stripe's PaymentIntent state machine and test-card
//! semantics, in process, with Stripe's idempotency behaviour (same key + same parameters
//! → the first answer again, errors included; same key + other parameters → error).
//!
//! | payment method | card | outcome |
//! |---|---|---|
//! | `pm_card_visa`, `pm_card_mastercard`, `pm_card_amex` | 4242 4242 4242 4242 | succeeds |
//! | `pm_card_chargeDeclined` | 4000 0000 0000 0002 | `card_declined` / `generic_decline` |
//! | `pm_card_chargeDeclinedInsufficientFunds` | 4000 0000 0000 9995 | `card_declined` / `insufficient_funds` |
//!
//! Faults can be injected per operation ([`Fault`]) to test retries and crashes: fail
//! before acting, act and lose the answer, or act and never answer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use super::{
    CaptureMethod, CreateIntent, IntentStatus, PaymentError, PaymentFailure, PaymentIntent,
    PaymentProvider, Refund,
};

/// A provider operation, to aim a fault at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`PaymentProvider::create`].
    Create,
    /// [`PaymentProvider::confirm`].
    Confirm,
    /// [`PaymentProvider::capture`].
    Capture,
    /// [`PaymentProvider::cancel`].
    Cancel,
    /// [`PaymentProvider::refund`].
    Refund,
}

/// How an injected fault fails a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Fail with `Unavailable` before doing anything.
    FailBefore,
    /// Do the operation, then fail with `Unavailable` (the answer is lost in transit).
    LoseResponse,
    /// Do the operation, then never answer (the caller hangs until it is dropped).
    HangAfter,
}

/// A fault to inject into the next calls of one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// The operation it hits.
    pub op: Op,
    /// How it fails.
    pub kind: FaultKind,
    /// How many calls it hits.
    pub times: u32,
}

#[derive(Debug, Clone)]
enum Answer {
    Intent(PaymentIntent),
    Refund(Refund),
}

#[derive(Default)]
struct State {
    intents: HashMap<String, PaymentIntent>,
    refunded: HashMap<String, i64>,
    /// Idempotency-Key → (operation fingerprint, first answer).
    idem: HashMap<String, (String, Result<Answer, PaymentError>)>,
    fault: Option<Fault>,
    captures: u64,
    captured_amount: i64,
    refunds: u64,
    calls: u64,
}

/// The default, local payment provider.
#[derive(Default)]
pub struct SimulatedProvider {
    state: Mutex<State>,
    seq: AtomicU64,
}

impl SimulatedProvider {
    /// A provider with no intents and no fault.
    pub fn new() -> SimulatedProvider {
        SimulatedProvider::default()
    }

    /// Injects (or clears) a fault.
    pub fn set_fault(&self, fault: Option<Fault>) {
        self.lock().fault = fault;
    }

    /// Successful captures executed (replays not counted): money actually taken.
    pub fn captures(&self) -> u64 {
        self.lock().captures
    }

    /// Total captured, minor units.
    pub fn captured_amount(&self) -> i64 {
        self.lock().captured_amount
    }

    /// Refunds executed.
    pub fn refunds(&self) -> u64 {
        self.lock().refunds
    }

    /// Intents created (replays not counted).
    pub fn intents(&self) -> usize {
        self.lock().intents.len()
    }

    /// Calls received, replays included.
    pub fn calls(&self) -> u64 {
        self.lock().calls
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-updated state worth keeping
        // out: every mutation below is a few field writes.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next_id(&self, prefix: &str) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}_sim{:016x}{n:06}", rand_u64())
    }

    /// Runs `op` under Stripe's idempotency rules and the injected fault.
    async fn call(
        &self,
        op: Op,
        idem: &str,
        fingerprint: String,
        f: impl FnOnce(&mut State) -> Result<Answer, PaymentError>,
    ) -> Result<Answer, PaymentError> {
        if idem.is_empty() || idem.len() > 255 {
            return Err(PaymentError::Invalid(
                "Idempotency-Key must be 1..=255 characters".into(),
            ));
        }
        let (answer, after) = {
            let mut st = self.lock();
            st.calls += 1;
            let fault = match st.fault {
                Some(f) if f.op == op && f.times > 0 => {
                    let mut f2 = f;
                    f2.times -= 1;
                    st.fault = (f2.times > 0).then_some(f2);
                    Some(f.kind)
                }
                _ => None,
            };
            if fault == Some(FaultKind::FailBefore) {
                return Err(PaymentError::Unavailable(
                    "simulated network failure".into(),
                ));
            }
            let answer = match st.idem.get(idem) {
                Some((fp, _)) if *fp != fingerprint => Err(PaymentError::IdempotencyMismatch),
                Some((_, first)) => first.clone(),
                None => {
                    let r = f(&mut st);
                    // Stripe keeps results of requests that executed, errors included.
                    if !matches!(r, Err(PaymentError::Unavailable(_))) {
                        st.idem.insert(idem.to_string(), (fingerprint, r.clone()));
                    }
                    r
                }
            };
            (answer, fault)
        };
        match after {
            Some(FaultKind::LoseResponse) => {
                Err(PaymentError::Unavailable("simulated lost response".into()))
            }
            Some(FaultKind::HangAfter) => std::future::pending().await,
            _ => answer,
        }
    }

    /// Completes (or fails) the customer's 3-D Secure challenge on an intent that
    /// `requires_action`, as the shopper's browser does with Stripe.js; returns the
    /// intent afterwards, or `None` if there is no such intent or it does not wait for
    /// authentication.
    pub fn authenticate(&self, id: &str, success: bool) -> Option<PaymentIntent> {
        let mut st = self.lock();
        let mut pi = st.intents.get(id).cloned()?;
        if pi.status != IntentStatus::RequiresAction {
            return None;
        }
        if success {
            if pi.capture_method == CaptureMethod::Manual {
                pi.status = IntentStatus::RequiresCapture;
            } else {
                pi.status = IntentStatus::Succeeded;
                pi.amount_received = pi.amount;
                st.captures += 1;
                st.captured_amount += pi.amount;
            }
        } else {
            pi.status = IntentStatus::RequiresPaymentMethod;
            pi.last_payment_error = Some(PaymentFailure {
                code: Some("payment_intent_authentication_failure".into()),
                decline_code: None,
                message: Some("The customer failed 3-D Secure authentication.".into()),
            });
        }
        st.intents.insert(pi.id.clone(), pi.clone());
        Some(pi)
    }

    fn intent(st: &mut State, id: &str) -> Result<PaymentIntent, PaymentError> {
        st.intents
            .get(id)
            .cloned()
            .ok_or_else(|| PaymentError::Invalid(format!("no such payment_intent: {id}")))
    }
}

fn rand_u64() -> u64 {
    let u = uuid::Uuid::new_v4();
    let b = u.as_bytes();
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Test payment methods that always ask for 3-D Secure authentication (Stripe's
/// `pm_card_threeDSecure2Required`, card 4000 0027 6000 3184, and
/// `pm_card_authenticationRequired`).
pub const THREE_DS_REQUIRED: &[&str] = &[
    "pm_card_threeDSecure2Required",
    "pm_card_authenticationRequired",
];

/// The outcome of a test payment method: `Ok` to authorise, or the decline.
fn card_outcome(pm: &str) -> Result<(), Result<PaymentFailure, PaymentError>> {
    let declined = |decline: &str, msg: &str| {
        Err(Ok(PaymentFailure {
            code: Some("card_declined".into()),
            decline_code: Some(decline.into()),
            message: Some(msg.into()),
        }))
    };
    match pm {
        "pm_card_visa" | "pm_card_mastercard" | "pm_card_amex" | "pm_card_visa_debit" => Ok(()),
        "pm_card_chargeDeclined" => declined("generic_decline", "Your card was declined."),
        "pm_card_chargeDeclinedInsufficientFunds" => {
            declined("insufficient_funds", "Your card has insufficient funds.")
        }
        other => Err(Err(PaymentError::Invalid(format!(
            "no such PaymentMethod: '{}'",
            other.chars().take(64).collect::<String>()
        )))),
    }
}

fn intent_answer(a: Answer) -> Result<PaymentIntent, PaymentError> {
    match a {
        Answer::Intent(i) => Ok(i),
        Answer::Refund(_) => Err(PaymentError::IdempotencyMismatch),
    }
}

#[async_trait]
impl PaymentProvider for SimulatedProvider {
    fn name(&self) -> &'static str {
        "simulated"
    }

    fn test_mode(&self) -> bool {
        true
    }

    async fn create(&self, req: &CreateIntent, idem: &str) -> Result<PaymentIntent, PaymentError> {
        if req.amount < 50 || req.amount > 99_999_999 {
            return Err(PaymentError::Invalid(
                "amount must be between 50 and 99999999 minor units".into(),
            ));
        }
        let fp = format!("create:{}", serde_json::to_string(req).unwrap_or_default());
        let id = self.next_id("pi");
        let a = self
            .call(Op::Create, idem, fp, |st| {
                let pi = PaymentIntent {
                    id: id.clone(),
                    amount: req.amount,
                    currency: req.currency.to_ascii_lowercase(),
                    status: IntentStatus::RequiresPaymentMethod,
                    capture_method: req.capture_method,
                    amount_received: 0,
                    payment_method: None,
                    last_payment_error: None,
                    metadata: req.metadata.clone(),
                    client_secret: Some(format!("{id}_secret_{:016x}", rand_u64())),
                };
                st.intents.insert(id.clone(), pi.clone());
                Ok(Answer::Intent(pi))
            })
            .await?;
        intent_answer(a)
    }

    async fn confirm(
        &self,
        id: &str,
        payment_method: &str,
        idem: &str,
    ) -> Result<PaymentIntent, PaymentError> {
        let fp = format!("confirm:{id}:{payment_method}");
        let a = self
            .call(Op::Confirm, idem, fp, |st| {
                let mut pi = Self::intent(st, id)?;
                if !matches!(
                    pi.status,
                    IntentStatus::RequiresPaymentMethod | IntentStatus::RequiresConfirmation
                ) {
                    return Err(PaymentError::Invalid(format!(
                        "this PaymentIntent's status is {:?}; it cannot be confirmed",
                        pi.status
                    )));
                }
                pi.payment_method = Some(payment_method.to_string());
                if THREE_DS_REQUIRED.contains(&payment_method) {
                    // Stripe's 3-D Secure test cards: the customer must authenticate.
                    pi.last_payment_error = None;
                    pi.status = IntentStatus::RequiresAction;
                    st.intents.insert(pi.id.clone(), pi.clone());
                    return Ok(Answer::Intent(pi));
                }
                match card_outcome(payment_method) {
                    Ok(()) => {
                        pi.last_payment_error = None;
                        if pi.capture_method == CaptureMethod::Manual {
                            pi.status = IntentStatus::RequiresCapture;
                        } else {
                            pi.status = IntentStatus::Succeeded;
                            pi.amount_received = pi.amount;
                            st.captures += 1;
                            st.captured_amount += pi.amount;
                        }
                        st.intents.insert(pi.id.clone(), pi.clone());
                        Ok(Answer::Intent(pi))
                    }
                    Err(Ok(failure)) => {
                        pi.status = IntentStatus::RequiresPaymentMethod;
                        pi.last_payment_error = Some(failure.clone());
                        st.intents.insert(pi.id.clone(), pi);
                        Err(PaymentError::Declined(failure))
                    }
                    Err(Err(e)) => Err(e),
                }
            })
            .await?;
        intent_answer(a)
    }

    async fn capture(&self, id: &str, idem: &str) -> Result<PaymentIntent, PaymentError> {
        let a = self
            .call(Op::Capture, idem, format!("capture:{id}"), |st| {
                let mut pi = Self::intent(st, id)?;
                if pi.status != IntentStatus::RequiresCapture {
                    return Err(PaymentError::Invalid(format!(
                        "this PaymentIntent could not be captured because it has a status of {:?}",
                        pi.status
                    )));
                }
                pi.status = IntentStatus::Succeeded;
                pi.amount_received = pi.amount;
                st.captures += 1;
                st.captured_amount += pi.amount;
                st.intents.insert(pi.id.clone(), pi.clone());
                Ok(Answer::Intent(pi))
            })
            .await?;
        intent_answer(a)
    }

    async fn cancel(&self, id: &str, idem: &str) -> Result<PaymentIntent, PaymentError> {
        let a = self
            .call(Op::Cancel, idem, format!("cancel:{id}"), |st| {
                let mut pi = Self::intent(st, id)?;
                if matches!(pi.status, IntentStatus::Succeeded | IntentStatus::Canceled) {
                    return Err(PaymentError::Invalid(format!(
                        "this PaymentIntent could not be canceled because it has a status of {:?}",
                        pi.status
                    )));
                }
                pi.status = IntentStatus::Canceled;
                st.intents.insert(pi.id.clone(), pi.clone());
                Ok(Answer::Intent(pi))
            })
            .await?;
        intent_answer(a)
    }

    async fn refund(
        &self,
        id: &str,
        amount: Option<i64>,
        idem: &str,
    ) -> Result<Refund, PaymentError> {
        let refund_id = self.next_id("re");
        let a = self
            .call(Op::Refund, idem, format!("refund:{id}:{amount:?}"), |st| {
                let pi = Self::intent(st, id)?;
                if pi.status != IntentStatus::Succeeded {
                    return Err(PaymentError::Invalid(format!(
                        "this PaymentIntent has a status of {:?}; nothing to refund",
                        pi.status
                    )));
                }
                let done = st.refunded.get(id).copied().unwrap_or(0);
                let left = pi.amount_received - done;
                let amount = amount.unwrap_or(left);
                if amount <= 0 || amount > left {
                    return Err(PaymentError::Invalid(format!(
                        "refund of {amount} exceeds the {left} left to refund"
                    )));
                }
                st.refunded.insert(id.to_string(), done + amount);
                st.refunds += 1;
                Ok(Answer::Refund(Refund {
                    id: refund_id.clone(),
                    payment_intent: Some(id.to_string()),
                    amount,
                    currency: pi.currency.clone(),
                    status: "succeeded".into(),
                }))
            })
            .await?;
        match a {
            Answer::Refund(r) => Ok(r),
            Answer::Intent(_) => Err(PaymentError::IdempotencyMismatch),
        }
    }

    async fn retrieve(&self, id: &str) -> Result<PaymentIntent, PaymentError> {
        Self::intent(&mut self.lock(), id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(amount: i64) -> CreateIntent {
        CreateIntent {
            amount,
            currency: "USD".into(),
            capture_method: CaptureMethod::Manual,
            metadata: [("order_id".to_string(), "o1".to_string())].into(),
        }
    }

    #[tokio::test]
    async fn visa_authorises_and_captures_once() {
        let p = SimulatedProvider::new();
        let pi = p.create(&req(1000), "o1-create").await.unwrap();
        assert_eq!(pi.currency, "usd");
        let again = p.create(&req(1000), "o1-create").await.unwrap();
        assert_eq!(pi.id, again.id, "same key replays");
        let pi = p
            .confirm(&pi.id, "pm_card_visa", "o1-confirm")
            .await
            .unwrap();
        assert_eq!(pi.status, IntentStatus::RequiresCapture);
        let pi = p.capture(&pi.id, "o1-capture").await.unwrap();
        assert_eq!(pi.status, IntentStatus::Succeeded);
        p.capture(&pi.id, "o1-capture").await.unwrap();
        assert_eq!(p.captures(), 1);
        assert_eq!(p.captured_amount(), 1000);
        // A new key on a captured intent is a state error, not a second capture.
        assert!(matches!(
            p.capture(&pi.id, "other").await,
            Err(PaymentError::Invalid(_))
        ));
        let r = p.refund(&pi.id, None, "o1-refund").await.unwrap();
        assert_eq!(r.amount, 1000);
        assert!(
            p.refund(&pi.id, None, "o1-refund-2").await.is_err(),
            "nothing left"
        );
        assert_eq!(p.refunds(), 1);
    }

    #[tokio::test]
    async fn three_ds_cards_require_action_until_authenticated() {
        let p = SimulatedProvider::new();
        for (order, ok) in [("o1", true), ("o2", false)] {
            let pi = p
                .create(&req(1000), &format!("{order}-create"))
                .await
                .unwrap();
            assert!(
                pi.client_secret
                    .as_deref()
                    .is_some_and(|s| s.starts_with(&pi.id))
            );
            let pi = p
                .confirm(
                    &pi.id,
                    "pm_card_threeDSecure2Required",
                    &format!("{order}-confirm"),
                )
                .await
                .unwrap();
            assert_eq!(pi.status, IntentStatus::RequiresAction);
            assert!(matches!(
                p.capture(&pi.id, &format!("{order}-early")).await,
                Err(PaymentError::Invalid(_))
            ));
            let after = p.authenticate(&pi.id, ok).unwrap();
            assert!(p.authenticate(&pi.id, ok).is_none(), "only once");
            if ok {
                assert_eq!(after.status, IntentStatus::RequiresCapture);
                let pi = p
                    .capture(&pi.id, &format!("{order}-capture"))
                    .await
                    .unwrap();
                assert_eq!(pi.status, IntentStatus::Succeeded);
            } else {
                assert_eq!(after.status, IntentStatus::RequiresPaymentMethod);
                assert_eq!(
                    after.last_payment_error.unwrap().reason(),
                    "payment_intent_authentication_failure"
                );
            }
        }
        assert_eq!(p.captures(), 1);
        assert!(p.authenticate("pi_nope", true).is_none());
    }

    #[tokio::test]
    async fn declines_follow_the_test_cards() {
        let p = SimulatedProvider::new();
        for (pm, reason) in [
            ("pm_card_chargeDeclined", "generic_decline"),
            (
                "pm_card_chargeDeclinedInsufficientFunds",
                "insufficient_funds",
            ),
        ] {
            let pi = p.create(&req(500), &format!("{pm}-c")).await.unwrap();
            match p.confirm(&pi.id, pm, &format!("{pm}-f")).await {
                Err(PaymentError::Declined(f)) => assert_eq!(f.reason(), reason),
                other => panic!("{other:?}"),
            }
            // The stored error is replayed, not re-evaluated.
            assert!(matches!(
                p.confirm(&pi.id, pm, &format!("{pm}-f")).await,
                Err(PaymentError::Declined(_))
            ));
            let pi = p.retrieve(&pi.id).await.unwrap();
            assert_eq!(pi.status, IntentStatus::RequiresPaymentMethod);
            p.cancel(&pi.id, &format!("{pm}-x")).await.unwrap();
        }
        assert_eq!(p.captures(), 0);
    }

    #[tokio::test]
    async fn key_reuse_with_other_parameters_is_an_error() {
        let p = SimulatedProvider::new();
        p.create(&req(1000), "k").await.unwrap();
        assert_eq!(
            p.create(&req(2000), "k").await,
            Err(PaymentError::IdempotencyMismatch)
        );
    }

    #[tokio::test]
    async fn lost_response_then_retry_does_not_charge_twice() {
        let p = SimulatedProvider::new();
        let pi = p.create(&req(1000), "c").await.unwrap();
        p.confirm(&pi.id, "pm_card_visa", "f").await.unwrap();
        p.set_fault(Some(Fault {
            op: Op::Capture,
            kind: FaultKind::LoseResponse,
            times: 1,
        }));
        assert!(p.capture(&pi.id, "cap").await.unwrap_err().retriable());
        let done = p.capture(&pi.id, "cap").await.unwrap();
        assert_eq!(done.status, IntentStatus::Succeeded);
        assert_eq!(p.captures(), 1);
    }
}
