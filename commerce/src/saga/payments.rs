//! Payment: charges prepared orders, refunds them when a failure follows billing.
//!
//! ```text
//!  ORDER_CREATED  ─► payment#<order> = Pending{amount, payment method}
//!  ORDER_PREPARED ─► create (manual capture) ─► confirm ─► capture      keys order-<id>-<step>
//!                    ├─ succeeded ─► Captured ─► ORDER_BILLED
//!                    ├─ requires_action (3-D Secure) ─► RequiresAction: the order waits
//!                    │    webhook payment_intent.succeeded ─► capture ─► Captured ─► ORDER_BILLED
//!                    │    webhook payment_intent.payment_failed ─► Failed ─► PAYMENT_FAIL
//!                    ├─ declined / invalid ─► Failed ─► PAYMENT_FAIL{reason}
//!                    └─ provider unavailable ─► error: the consumer retries the event later
//!  STOCK_LOST / DELIVERY_FAILED ─► Captured ─► refund (key order-<id>-refund) ─► ORDER_REFUNDED
//! ```
//!
//! Every provider call is idempotent under its key, and the record is written only with
//! the outcome, in the consumer's transaction: a crash between capture and commit re-runs
//! the handler, the provider replays its answers, and the order is charged once.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use recstream_ingest::Money;
use serde::{Deserialize, Serialize};

use super::outbox::OutboxMessage;
use super::{Effects, SagaEvent, SagaKind, Service};
use crate::Ctx;
use crate::error::CommerceError;
use crate::payment::{CaptureMethod, CreateIntent, IntentStatus, PaymentError};
use crate::store::{Cond, Key, Write, get_json};

/// Where an order's payment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// Recorded at order creation; not charged yet.
    Pending,
    /// The provider asked for customer authentication (3-D Secure); waits for the
    /// `payment_intent.succeeded` / `payment_intent.payment_failed` webhook.
    RequiresAction,
    /// Charged.
    Captured,
    /// Declined or invalid; the order is cancelled.
    Failed,
    /// Captured, then refunded.
    Refunded,
    /// The order was cancelled before it was charged (rejected, or the reservation
    /// expired).
    Canceled,
}

/// The payment service's record of one order (`payment#<order>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRecord {
    /// The order paid for.
    pub order_id: String,
    /// The buyer.
    pub user_id: String,
    /// The order total to charge.
    pub amount: Money,
    /// The payment method to charge.
    pub payment_method: String,
    /// Where the payment stands.
    pub status: PaymentStatus,
    /// The provider's payment intent, once created.
    #[serde(default)]
    pub intent_id: Option<String>,
    /// The provider's reason, when the payment failed.
    #[serde(default)]
    pub failure: Option<String>,
    /// The provider's refund id, once refunded.
    #[serde(default)]
    pub refund_id: Option<String>,
    /// The intent's client secret while the customer must act (3-D Secure), for the
    /// order's owner to complete the challenge with Stripe.js.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
}

/// How the provider settled a payment that required customer action (from a webhook).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AsyncOutcome {
    /// `payment_intent.succeeded`: authorised, capture it.
    Succeeded,
    /// `payment_intent.payment_failed`, with the provider's reason.
    Failed(String),
}

/// What a payment webhook does to the saga.
#[derive(Debug)]
pub(crate) enum WebhookEffect {
    /// No payment of ours waits on this intent.
    UnknownIntent,
    /// The payment is already settled (billed, failed, cancelled): nothing changes.
    Stale,
    /// Commit these with the webhook record.
    Apply(Effects),
}

/// The store key of an order's payment record.
pub fn payment_key(order_id: &str) -> Key {
    Key::new(format!("payment#{order_id}"), "-")
}

/// The payment saga service: charges prepared orders and refunds failed ones (see the
/// module docs).
pub struct Payments {
    ctx: Arc<Ctx>,
}

enum Outcome {
    Captured(String),
    RequiresAction(String, Option<String>),
    Failed(String, Option<String>),
}

impl Payments {
    pub(crate) fn new(ctx: Arc<Ctx>) -> Payments {
        Payments { ctx }
    }

    async fn charge(&self, rec: &PaymentRecord) -> Result<Outcome, CommerceError> {
        let p = &self.ctx.provider;
        let key = |step: &str| format!("order-{}-{step}", rec.order_id);
        let req = CreateIntent {
            amount: rec.amount.amount,
            currency: rec.amount.currency.to_string(),
            capture_method: CaptureMethod::Manual,
            metadata: BTreeMap::from([
                ("order_id".to_string(), rec.order_id.clone()),
                ("user_id".to_string(), rec.user_id.clone()),
            ]),
        };
        let settle = |e: PaymentError, intent: Option<String>| -> Result<Outcome, CommerceError> {
            match e {
                PaymentError::Declined(f) => Ok(Outcome::Failed(f.reason().to_string(), intent)),
                PaymentError::Invalid(m) => {
                    tracing::warn!(order_id = %rec.order_id, error = %m, "payment request rejected");
                    Ok(Outcome::Failed("payment_error".into(), intent))
                }
                PaymentError::IdempotencyMismatch => {
                    Ok(Outcome::Failed("payment_error".into(), intent))
                }
                // Our credentials: keep the order waiting (alerting on the log) rather than fail it.
                PaymentError::Auth => Err(CommerceError::Unavailable(
                    "payment provider rejected our credentials".into(),
                )),
                e @ PaymentError::Unavailable(_) => Err(e.into()),
            }
        };
        let pi = match p.create(&req, &key("create")).await {
            Ok(pi) => pi,
            Err(e) => return settle(e, None),
        };
        let id = pi.id.clone();
        let pi = match p.confirm(&id, &rec.payment_method, &key("confirm")).await {
            Ok(pi) => pi,
            Err(e) => return settle(e, Some(id)),
        };
        match pi.status {
            IntentStatus::RequiresCapture => {}
            IntentStatus::Succeeded => return Ok(Outcome::Captured(id)),
            IntentStatus::RequiresAction => {
                return Ok(Outcome::RequiresAction(id, pi.client_secret));
            }
            IntentStatus::RequiresPaymentMethod => {
                // Not authorised: give the intent back.
                if let Err(e) = p.cancel(&id, &key("cancel")).await
                    && e.retriable()
                {
                    return Err(e.into());
                }
                return Ok(Outcome::Failed("authentication_required".into(), Some(id)));
            }
            other => {
                return Err(CommerceError::Unavailable(format!(
                    "payment intent in state {other:?}; retrying"
                )));
            }
        }
        match p.capture(&id, &key("capture")).await {
            Ok(pi) if pi.status == IntentStatus::Succeeded => Ok(Outcome::Captured(id)),
            Ok(pi) => Err(CommerceError::Unavailable(format!(
                "capture left the intent {:?}",
                pi.status
            ))),
            Err(e) => settle(e, Some(id)),
        }
    }

    async fn on_prepared(&self, ev: &SagaEvent) -> Result<Effects, CommerceError> {
        let Some((mut rec, v)) = get_json::<PaymentRecord>(
            self.ctx.store.as_ref(),
            "payment",
            &payment_key(&ev.order_id),
        )
        .await?
        else {
            return Err(CommerceError::Internal(format!(
                "no payment record for {}",
                ev.order_id
            )));
        };
        if rec.status != PaymentStatus::Pending {
            return Ok(Effects::none());
        }
        let now = self.ctx.clock.now_ms();
        let kind = match self.charge(&rec).await? {
            Outcome::Captured(intent) => {
                rec.status = PaymentStatus::Captured;
                rec.intent_id = Some(intent.clone());
                SagaKind::OrderBilled {
                    payment_intent_id: intent,
                    amount: rec.amount.clone(),
                }
            }
            Outcome::RequiresAction(intent, client_secret) => {
                // The order waits, prepared, for the provider's webhook.
                tracing::info!(order_id = %ev.order_id, payment_intent = %intent,
                    "payment requires customer action; waiting for the webhook");
                rec.status = PaymentStatus::RequiresAction;
                rec.intent_id = Some(intent);
                rec.client_secret = client_secret;
                return Ok(Effects {
                    writes: vec![Write::put_json(
                        payment_key(&ev.order_id),
                        &rec,
                        Cond::Version(v),
                    )?],
                    emit: vec![],
                });
            }
            Outcome::Failed(reason, intent) => {
                rec.status = PaymentStatus::Failed;
                rec.intent_id = intent;
                rec.failure = Some(reason.clone());
                SagaKind::PaymentFail { reason }
            }
        };
        Ok(Effects {
            writes: vec![Write::put_json(
                payment_key(&ev.order_id),
                &rec,
                Cond::Version(v),
            )?],
            emit: vec![OutboxMessage::saga(SagaEvent::new(&ev.order_id, now, kind))],
        })
    }

    /// Settles a payment that waited for customer action, on a verified webhook about
    /// `intent_id` for `order_id`: captures it (`succeeded`) or fails it (`failed`, with
    /// the provider's reason). Returns the effects to commit with the webhook record, or
    /// [`WebhookEffect`] saying why nothing changes.
    pub(crate) async fn settle_async(
        ctx: &Ctx,
        order_id: &str,
        intent_id: &str,
        outcome: AsyncOutcome,
    ) -> Result<WebhookEffect, CommerceError> {
        let Some((mut rec, v)) =
            get_json::<PaymentRecord>(ctx.store.as_ref(), "payment", &payment_key(order_id))
                .await?
        else {
            return Ok(WebhookEffect::UnknownIntent);
        };
        if rec.status == PaymentStatus::Pending {
            // The event overtook the payment consumer's commit: answer 503 so that Stripe
            // redelivers it once the record names its intent (nothing is stored now).
            return Err(CommerceError::Unavailable(
                "payment not recorded yet; retry the delivery".into(),
            ));
        }
        if rec.intent_id.as_deref() != Some(intent_id) {
            return Ok(WebhookEffect::UnknownIntent);
        }
        if rec.status != PaymentStatus::RequiresAction {
            // Already billed, failed or cancelled (a duplicate or out-of-order delivery).
            return Ok(WebhookEffect::Stale);
        }
        let kind = match outcome {
            AsyncOutcome::Succeeded => {
                let key = format!("order-{order_id}-capture");
                match ctx.provider.capture(intent_id, &key).await {
                    Ok(pi) if pi.status == IntentStatus::Succeeded => {}
                    Ok(pi) => {
                        return Err(CommerceError::Unavailable(format!(
                            "capture left the intent {:?}",
                            pi.status
                        )));
                    }
                    Err(PaymentError::Auth) => {
                        return Err(CommerceError::Unavailable(
                            "payment provider rejected our credentials".into(),
                        ));
                    }
                    Err(e @ PaymentError::Unavailable(_)) => return Err(e.into()),
                    Err(e) => {
                        // The intent is not capturable (e.g. the webhook raced a cancel):
                        // nothing changes; the record stays for reconciliation.
                        tracing::warn!(order_id, payment_intent = intent_id, error = %e,
                            "webhook success but the intent cannot be captured");
                        return Ok(WebhookEffect::Stale);
                    }
                }
                rec.status = PaymentStatus::Captured;
                rec.client_secret = None;
                SagaKind::OrderBilled {
                    payment_intent_id: intent_id.to_string(),
                    amount: rec.amount.clone(),
                }
            }
            AsyncOutcome::Failed(reason) => {
                rec.status = PaymentStatus::Failed;
                rec.failure = Some(reason.clone());
                rec.client_secret = None;
                SagaKind::PaymentFail { reason }
            }
        };
        Ok(WebhookEffect::Apply(Effects {
            writes: vec![Write::put_json(
                payment_key(order_id),
                &rec,
                Cond::Version(v),
            )?],
            emit: vec![OutboxMessage::saga(SagaEvent::new(
                order_id,
                ctx.clock.now_ms(),
                kind,
            ))],
        }))
    }

    async fn refund(&self, ev: &SagaEvent) -> Result<Effects, CommerceError> {
        let Some((mut rec, v)) = get_json::<PaymentRecord>(
            self.ctx.store.as_ref(),
            "payment",
            &payment_key(&ev.order_id),
        )
        .await?
        else {
            return Ok(Effects::none());
        };
        let (PaymentStatus::Captured, Some(intent)) = (rec.status, rec.intent_id.clone()) else {
            return Ok(Effects::none());
        };
        let key = format!("order-{}-refund", ev.order_id);
        let r = match self.ctx.provider.refund(&intent, None, &key).await {
            Ok(r) => r,
            Err(PaymentError::Auth) => {
                return Err(CommerceError::Unavailable(
                    "payment provider rejected our credentials".into(),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        rec.status = PaymentStatus::Refunded;
        rec.refund_id = Some(r.id.clone());
        let amount = Money::new(r.amount, &rec.amount.currency);
        Ok(Effects {
            writes: vec![Write::put_json(
                payment_key(&ev.order_id),
                &rec,
                Cond::Version(v),
            )?],
            emit: vec![OutboxMessage::saga(SagaEvent::new(
                &ev.order_id,
                self.ctx.clock.now_ms(),
                SagaKind::OrderRefunded {
                    refund_id: r.id,
                    amount,
                },
            ))],
        })
    }
}

#[async_trait]
impl Service for Payments {
    fn name(&self) -> &'static str {
        "payment"
    }

    async fn handle(&self, ev: &SagaEvent) -> Result<Effects, CommerceError> {
        match &ev.kind {
            SagaKind::OrderCreated {
                user_id,
                total,
                payment_method,
                ..
            } => {
                let rec = PaymentRecord {
                    order_id: ev.order_id.clone(),
                    user_id: user_id.clone(),
                    amount: total.clone(),
                    payment_method: payment_method.clone(),
                    status: PaymentStatus::Pending,
                    intent_id: None,
                    failure: None,
                    refund_id: None,
                    client_secret: None,
                };
                if self
                    .ctx
                    .store
                    .get(&payment_key(&ev.order_id))
                    .await?
                    .is_some()
                {
                    return Ok(Effects::none());
                }
                Ok(Effects {
                    writes: vec![Write::put_json(
                        payment_key(&ev.order_id),
                        &rec,
                        Cond::Absent,
                    )?],
                    emit: vec![],
                })
            }
            SagaKind::OrderPrepared { .. } => self.on_prepared(ev).await,
            SagaKind::OrderRejected { .. } => {
                let Some((mut rec, v)) = get_json::<PaymentRecord>(
                    self.ctx.store.as_ref(),
                    "payment",
                    &payment_key(&ev.order_id),
                )
                .await?
                else {
                    return Ok(Effects::none());
                };
                if rec.status != PaymentStatus::Pending {
                    return Ok(Effects::none());
                }
                rec.status = PaymentStatus::Canceled;
                Ok(Effects {
                    writes: vec![Write::put_json(
                        payment_key(&ev.order_id),
                        &rec,
                        Cond::Version(v),
                    )?],
                    emit: vec![],
                })
            }
            SagaKind::StockLost { .. } | SagaKind::DeliveryFailed { .. } => self.refund(ev).await,
            _ => Ok(Effects::none()),
        }
    }
}
