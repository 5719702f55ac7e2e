//! Orders: the order record, its guarded state machine and its history; the source of
//! customer notifications and purchase clickstream events.
//!
//! ```text
//!  created ─PREPARED─► prepared ─BILLED─► billed ─SHIPPED─► shipped ─DELIVERED─► delivered ─COMPLETED─► completed
//!     │                   │                  │                 │
//!     └─REJECTED─► cancelled ◄─PAYMENT_FAIL / RESERVATION_EXPIRED
//!                         │                  └─DELIVERY_FAILED / STOCK_LOST─► refund_pending ─REFUNDED─► refunded
//!                         └─REFUNDED (money taken after a cancel, then returned)─► refunded
//! ```
//!
//! Anything else is illegal for the current status: it changes nothing, is counted
//! ([`ILLEGAL_TRANSITIONS_TOTAL`](super::ILLEGAL_TRANSITIONS_TOTAL)) and logged.

use std::sync::Arc;

use async_trait::async_trait;
use recstream_ingest::{Event, EventType, Money, Timestamp};
use serde::{Deserialize, Serialize};

use super::outbox::OutboxMessage;
use super::{Address, Effects, OrderLine, SagaEvent, SagaKind, Service};
use crate::Ctx;
use crate::error::CommerceError;
use crate::notify::{Notification, Template};
use crate::store::{Cond, Key, Write, get_json};

/// Where an order stands (the state machine is [`transition`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Checkout created it; stock not yet reserved.
    Created,
    /// Stock is reserved; payment pending.
    Prepared,
    /// Payment captured.
    Billed,
    /// Handed to the carrier.
    Shipped,
    /// Delivered.
    Delivered,
    /// Final: delivered and closed.
    Completed,
    /// Final: rejected, payment failed or reservation expired.
    Cancelled,
    /// Billed, then delivery failed or stock was lost: a refund is under way.
    RefundPending,
    /// Final: the payment was refunded.
    Refunded,
}

impl OrderStatus {
    /// Whether no further event changes the status (completed, cancelled, refunded).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            OrderStatus::Completed | OrderStatus::Cancelled | OrderStatus::Refunded
        )
    }
}

/// One step of an order's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    /// When, epoch ms (the saga event's time).
    pub at_ms: i64,
    /// The saga event (`ORDER_BILLED`, …).
    pub event: String,
    /// The status after it.
    pub status: OrderStatus,
    /// A readable note, e.g. the rejection reason or the amount billed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The captured payment of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PaymentSummary {
    /// The provider's payment intent.
    pub payment_intent_id: String,
    /// The amount captured.
    pub amount: Money,
}

/// The shipment of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ShipmentSummary {
    /// The carrier's name.
    pub carrier: String,
    /// The tracking number.
    pub tracking_number: String,
}

/// The refund of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RefundSummary {
    /// The provider's refund id.
    pub refund_id: String,
    /// The amount refunded.
    pub amount: Money,
}

/// An order as `GET /v1/orders/{id}` shows it (`order#<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Order {
    /// The order id checkout assigned.
    pub id: String,
    /// The buyer.
    pub user_id: String,
    /// Where the order stands.
    pub status: OrderStatus,
    /// What was ordered.
    pub lines: Vec<OrderLine>,
    /// Sum of the lines.
    pub total: Money,
    /// Where to deliver, if the order ships.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipping: Option<Address>,
    /// When checkout created it, epoch ms.
    pub created_at_ms: i64,
    /// When the last event changed it, epoch ms.
    pub updated_at_ms: i64,
    /// Set once billed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment: Option<PaymentSummary>,
    /// Set once shipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipment: Option<ShipmentSummary>,
    /// Set once refunded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund: Option<RefundSummary>,
    /// Why the order was cancelled, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    /// Every event applied, oldest first.
    pub history: Vec<HistoryEntry>,
}

/// The store key of an order.
pub fn order_key(order_id: &str) -> Key {
    Key::new(format!("order#{order_id}"), "-")
}

/// The per-user index: `user_orders#<user>/<created ms>#<order id>`.
pub fn user_order_key(user_id: &str, created_at_ms: i64, order_id: &str) -> Key {
    Key::new(
        format!("user_orders#{user_id}"),
        format!("{created_at_ms:013}#{order_id}"),
    )
}

/// What an event does to an order in `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The order moves to this status.
    To(OrderStatus),
    /// Recorded in the history, no status change.
    Record,
    /// Already applied (the checkout wrote ORDER_CREATED's state).
    Ignore,
    /// Not allowed from the current status: nothing changes (counted in
    /// [`super::ILLEGAL_TRANSITIONS_TOTAL`]).
    Illegal,
}

/// The order state machine.
pub fn transition(from: OrderStatus, kind: &SagaKind) -> Transition {
    use OrderStatus as S;
    use SagaKind as K;
    match (from, kind) {
        (_, K::OrderCreated { .. }) => Transition::Ignore,
        (_, K::StockReleased) => Transition::Record,
        (S::Created, K::OrderPrepared { .. }) => Transition::To(S::Prepared),
        (S::Created, K::OrderRejected { .. }) => Transition::To(S::Cancelled),
        (S::Prepared, K::PaymentFail { .. } | K::ReservationExpired) => {
            Transition::To(S::Cancelled)
        }
        (S::Prepared, K::OrderBilled { .. }) => Transition::To(S::Billed),
        (S::Billed, K::OrderShipped { .. }) => Transition::To(S::Shipped),
        (S::Shipped, K::OrderDelivered) => Transition::To(S::Delivered),
        (S::Delivered, K::OrderCompleted) => Transition::To(S::Completed),
        (S::Billed | S::Shipped, K::DeliveryFailed { .. } | K::StockLost { .. }) => {
            Transition::To(S::RefundPending)
        }
        (S::Cancelled, K::StockLost { .. }) => Transition::Record,
        (S::RefundPending | S::Cancelled, K::OrderRefunded { .. }) => Transition::To(S::Refunded),
        _ => Transition::Illegal,
    }
}

/// A human amount for messages: `179.98 USD`, `1200 JPY` (Stripe's zero-decimal currencies).
fn money(m: &Money) -> String {
    const ZERO_DECIMAL: &[&str] = &[
        "BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX", "VND", "VUV",
        "XAF", "XOF", "XPF",
    ];
    if ZERO_DECIMAL.contains(&m.currency.as_str()) {
        return format!("{} {}", m.amount, m.currency);
    }
    let sign = if m.amount < 0 { "-" } else { "" };
    let a = m.amount.unsigned_abs();
    format!("{sign}{}.{:02} {}", a / 100, a % 100, m.currency)
}

/// The orders saga service: applies the state machine, keeps the history, sends
/// notifications and the purchase clickstream events.
pub struct Orders {
    ctx: Arc<Ctx>,
}

impl Orders {
    pub(crate) fn new(ctx: Arc<Ctx>) -> Orders {
        Orders { ctx }
    }

    fn purchase_events(o: &Order, at_ms: i64) -> Vec<Event> {
        o.lines
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let mut e = Event::new(
                    &format!("purchase-{}-{i}", o.id),
                    Timestamp(at_ms),
                    &o.user_id,
                    EventType::Purchase,
                )
                .with_product(&l.product_id, l.category.as_deref());
                e.price = Some(l.unit_price.clone());
                e.quantity = Some(l.quantity);
                e
            })
            .collect()
    }
}

#[async_trait]
impl Service for Orders {
    fn name(&self) -> &'static str {
        "orders"
    }

    async fn handle(&self, ev: &SagaEvent) -> Result<Effects, CommerceError> {
        let Some((mut o, v)) =
            get_json::<Order>(self.ctx.store.as_ref(), "order", &order_key(&ev.order_id)).await?
        else {
            return Err(CommerceError::Internal(format!(
                "event for unknown order {}",
                ev.order_id
            )));
        };
        let now = self.ctx.clock.now_ms();
        let name = ev.kind.name();
        let to = match transition(o.status, &ev.kind) {
            Transition::Ignore => return Ok(Effects::none()),
            Transition::Illegal => {
                metrics::counter!(super::ILLEGAL_TRANSITIONS_TOTAL, "event" => name).increment(1);
                tracing::warn!(order_id = %o.id, status = ?o.status, event = name, "illegal order transition rejected");
                return Ok(Effects::none());
            }
            Transition::Record => o.status,
            Transition::To(s) => s,
        };
        let mut detail = None;
        let mut emit = Vec::new();
        let mut writes = Vec::new();
        // A declined payment gives the shopper the cart back as it was, so they can retry
        // with another payment method (checkout emptied it in the order's transaction).
        if let SagaKind::PaymentFail { .. } = &ev.kind
            && to == OrderStatus::Cancelled
            && o.status != OrderStatus::Cancelled
        {
            writes.push(self.restore_cart(&o, now).await?);
        }
        let notify = |t: Template, subject: String, body: String| OutboxMessage::Notify {
            notification: Notification::new(&o.user_id, &o.id, t, subject, body, now),
        };
        match &ev.kind {
            SagaKind::OrderRejected { reason } | SagaKind::PaymentFail { reason } => {
                o.cancel_reason = Some(reason.clone());
                detail = Some(reason.clone());
            }
            SagaKind::ReservationExpired => {
                o.cancel_reason = Some("reservation_expired".into());
            }
            SagaKind::OrderBilled {
                payment_intent_id,
                amount,
            } => {
                o.payment = Some(PaymentSummary {
                    payment_intent_id: payment_intent_id.clone(),
                    amount: amount.clone(),
                });
                emit.push(notify(
                    Template::OrderConfirmed,
                    format!("Order {} confirmed", o.id),
                    format!(
                        "We received your payment of {} and are preparing your order.",
                        money(amount)
                    ),
                ));
                emit.push(OutboxMessage::Clickstream {
                    events: Self::purchase_events(&o, ev.at_ms),
                });
            }
            SagaKind::OrderShipped {
                carrier,
                tracking_number,
            } => {
                o.shipment = Some(ShipmentSummary {
                    carrier: carrier.clone(),
                    tracking_number: tracking_number.clone(),
                });
                detail = Some(format!("{carrier} {tracking_number}"));
                emit.push(notify(
                    Template::OrderShipped,
                    format!("Order {} shipped", o.id),
                    format!("Your order is on its way with {carrier}, tracking number {tracking_number}."),
                ));
            }
            SagaKind::OrderDelivered => {
                emit.push(notify(
                    Template::OrderDelivered,
                    format!("Order {} delivered", o.id),
                    "Your order was delivered. Enjoy!".into(),
                ));
                emit.push(OutboxMessage::saga(SagaEvent::new(
                    &o.id,
                    now,
                    SagaKind::OrderCompleted,
                )));
            }
            SagaKind::DeliveryFailed { reason } | SagaKind::StockLost { reason } => {
                detail = Some(reason.clone());
            }
            SagaKind::OrderRefunded { refund_id, amount } => {
                o.refund = Some(RefundSummary {
                    refund_id: refund_id.clone(),
                    amount: amount.clone(),
                });
                emit.push(notify(
                    Template::OrderRefunded,
                    format!("Order {} refunded", o.id),
                    format!("We refunded {} to your payment method.", money(amount)),
                ));
            }
            _ => {}
        }
        if to == OrderStatus::Cancelled && o.status != OrderStatus::Cancelled {
            let why = o.cancel_reason.clone().unwrap_or_default();
            emit.push(notify(
                Template::OrderCancelled,
                format!("Order {} cancelled", o.id),
                format!("Your order was cancelled ({why}). You have not been charged."),
            ));
        }
        o.status = to;
        o.updated_at_ms = now;
        o.history.push(HistoryEntry {
            at_ms: ev.at_ms,
            event: name.to_string(),
            status: to,
            detail,
        });
        writes.push(Write::put_json(order_key(&o.id), &o, Cond::Version(v))?);
        Ok(Effects { writes, emit })
    }
}

impl Orders {
    /// The write that puts `o`'s lines back into its owner's cart: the whole cart when
    /// there is none, else the lines the current cart lacks (a shopper who started a new
    /// cart keeps it). Conditional on the cart read here, so a concurrent change makes
    /// the consumer retry with a fresh read.
    async fn restore_cart(&self, o: &Order, now: i64) -> Result<Write, CommerceError> {
        use crate::cart::{Cart, CartLine, cart_key};
        let line = |l: &OrderLine| CartLine {
            product_id: l.product_id.clone(),
            name: l.name.clone(),
            category: l.category.clone(),
            quantity: l.quantity,
            unit_price: l.unit_price.clone(),
            flag: None,
        };
        let key = cart_key(&o.user_id);
        Ok(
            match get_json::<Cart>(self.ctx.store.as_ref(), "cart", &key).await? {
                None => Write::put_json(
                    key,
                    &Cart {
                        lines: o.lines.iter().map(line).collect(),
                        notices: Vec::new(),
                        updated_at_ms: now,
                    },
                    Cond::Absent,
                )?,
                Some((mut cart, v)) => {
                    for l in &o.lines {
                        if cart.lines.len() < self.ctx.cfg.max_lines
                            && !cart.lines.iter().any(|c| c.product_id == l.product_id)
                        {
                            cart.lines.push(line(l));
                        }
                    }
                    cart.updated_at_ms = now;
                    Write::put_json(key, &cart, Cond::Version(v))?
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OrderStatus as S;

    fn billed() -> SagaKind {
        SagaKind::OrderBilled {
            payment_intent_id: "pi".into(),
            amount: Money::new(1, "USD"),
        }
    }

    #[test]
    fn the_happy_path_is_legal_and_shortcuts_are_not() {
        let path = [
            (
                S::Created,
                SagaKind::OrderPrepared {
                    reservation_expires_at_ms: 0,
                },
                S::Prepared,
            ),
            (S::Prepared, billed(), S::Billed),
            (
                S::Billed,
                SagaKind::OrderShipped {
                    carrier: "c".into(),
                    tracking_number: "t".into(),
                },
                S::Shipped,
            ),
            (S::Shipped, SagaKind::OrderDelivered, S::Delivered),
            (S::Delivered, SagaKind::OrderCompleted, S::Completed),
        ];
        for (from, ev, to) in path {
            assert_eq!(
                transition(from, &ev),
                Transition::To(to),
                "{from:?} {}",
                ev.name()
            );
        }
        assert_eq!(
            transition(S::Created, &billed()),
            Transition::Illegal,
            "billing before reservation"
        );
        assert_eq!(
            transition(S::Cancelled, &billed()),
            Transition::Illegal,
            "billing a cancelled order"
        );
        assert_eq!(
            transition(S::Created, &SagaKind::OrderDelivered),
            Transition::Illegal
        );
        assert_eq!(
            transition(S::Completed, &SagaKind::OrderCompleted),
            Transition::Illegal,
            "twice"
        );
        assert_eq!(
            transition(S::Billed, &SagaKind::PaymentFail { reason: "x".into() }),
            Transition::Illegal,
            "a late failure cannot cancel a billed order"
        );
        assert_eq!(
            transition(S::Billed, &SagaKind::ReservationExpired),
            Transition::Illegal
        );
    }

    #[test]
    fn amounts_in_messages() {
        assert_eq!(money(&Money::new(17998, "USD")), "179.98 USD");
        assert_eq!(money(&Money::new(5, "EUR")), "0.05 EUR");
        assert_eq!(money(&Money::new(1200, "JPY")), "1200 JPY");
    }

    #[test]
    fn compensations() {
        assert_eq!(
            transition(S::Prepared, &SagaKind::PaymentFail { reason: "d".into() }),
            Transition::To(S::Cancelled)
        );
        assert_eq!(
            transition(S::Prepared, &SagaKind::ReservationExpired),
            Transition::To(S::Cancelled)
        );
        assert_eq!(
            transition(S::Shipped, &SagaKind::DeliveryFailed { reason: "x".into() }),
            Transition::To(S::RefundPending)
        );
        let refunded = SagaKind::OrderRefunded {
            refund_id: "re".into(),
            amount: Money::new(1, "USD"),
        };
        assert_eq!(
            transition(S::RefundPending, &refunded),
            Transition::To(S::Refunded)
        );
        assert_eq!(
            transition(S::Cancelled, &refunded),
            Transition::To(S::Refunded)
        );
        assert_eq!(transition(S::Completed, &refunded), Transition::Illegal);
    }
}
