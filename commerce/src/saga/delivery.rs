//! Delivery: a simulated carrier. Ships billed orders and reports delivery.
//!
//! ```text
//!  ORDER_CREATED ─► shipment#<order> = AwaitingPayment{address}
//!  ORDER_BILLED  ─► InTransit{tracking} + timer due#delivery ─► ORDER_SHIPPED
//!                   postal code "00000" (undeliverable) ─► DELIVERY_FAILED (payment refunds)
//!  timer (delivery_delay_ms after shipping) ─► Delivered ─► ORDER_DELIVERED
//!  PAYMENT_FAIL / ORDER_REJECTED / RESERVATION_EXPIRED / STOCK_LOST ─► Cancelled
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::outbox::{self, OutboxMessage};
use super::{Address, Effects, SagaEvent, SagaKind, Service};
use crate::Ctx;
use crate::error::CommerceError;
use crate::store::{Cond, Key, StoreError, Write, get_json};

/// The simulated carrier's name.
pub const CARRIER: &str = "recstream-sim-post";
/// A postal code the simulated carrier cannot deliver to (to exercise refunds).
pub const UNDELIVERABLE_POSTAL_CODE: &str = "00000";

/// Where a shipment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShipmentStatus {
    /// Created with the order; waits for ORDER_BILLED.
    AwaitingPayment,
    /// Handed to the carrier (ORDER_SHIPPED); the delivery timer is set.
    InTransit,
    /// Delivered (ORDER_DELIVERED).
    Delivered,
    /// The carrier could not deliver (DELIVERY_FAILED); the payment is refunded.
    Failed,
    /// The order was cancelled before shipping.
    Cancelled,
}

/// The delivery service's state of one order (`shipment#<order>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shipment {
    /// The order shipped.
    pub order_id: String,
    /// Where to deliver; `None` for an order without a shipping address.
    #[serde(default)]
    pub address: Option<Address>,
    /// Where the shipment stands.
    pub status: ShipmentStatus,
    /// The carrier's tracking number, once in transit.
    #[serde(default)]
    pub tracking_number: Option<String>,
    /// When the delivery timer fires, epoch ms (while in transit).
    #[serde(default)]
    pub deliver_at_ms: Option<i64>,
}

/// The store key of an order's shipment.
pub fn shipment_key(order_id: &str) -> Key {
    Key::new(format!("shipment#{order_id}"), "-")
}

const TIMERS: &str = "due#delivery";

fn timer_key(at_ms: i64, order_id: &str) -> Key {
    Key::new(TIMERS, format!("{at_ms:013}#{order_id}"))
}

/// The delivery saga service: the simulated carrier (see the module docs).
pub struct Delivery {
    ctx: Arc<Ctx>,
}

impl Delivery {
    pub(crate) fn new(ctx: Arc<Ctx>) -> Delivery {
        Delivery { ctx }
    }

    async fn shipment(&self, order_id: &str) -> Result<Option<(Shipment, u64)>, StoreError> {
        get_json(self.ctx.store.as_ref(), "shipment", &shipment_key(order_id)).await
    }

    async fn ship(&self, ev: &SagaEvent) -> Result<Effects, CommerceError> {
        let Some((mut s, v)) = self.shipment(&ev.order_id).await? else {
            return Ok(Effects::none());
        };
        if s.status != ShipmentStatus::AwaitingPayment {
            return Ok(Effects::none());
        }
        let now = self.ctx.clock.now_ms();
        let undeliverable = s
            .address
            .as_ref()
            .is_some_and(|a| a.postal_code.trim() == UNDELIVERABLE_POSTAL_CODE);
        let mut writes = Vec::new();
        let kind = if undeliverable {
            s.status = ShipmentStatus::Failed;
            SagaKind::DeliveryFailed {
                reason: "the carrier cannot deliver to this address".into(),
            }
        } else {
            let at = now + self.ctx.cfg.delivery_delay_ms as i64;
            let tracking =
                format!("SIM{}", &uuid::Uuid::now_v7().simple().to_string()[20..]).to_uppercase();
            s.status = ShipmentStatus::InTransit;
            s.tracking_number = Some(tracking.clone());
            s.deliver_at_ms = Some(at);
            writes.push(Write::put(
                timer_key(at, &ev.order_id),
                Vec::new(),
                Cond::Any,
            ));
            SagaKind::OrderShipped {
                carrier: CARRIER.into(),
                tracking_number: tracking,
            }
        };
        writes.push(Write::put_json(
            shipment_key(&ev.order_id),
            &s,
            Cond::Version(v),
        )?);
        Ok(Effects {
            writes,
            emit: vec![OutboxMessage::saga(SagaEvent::new(&ev.order_id, now, kind))],
        })
    }

    async fn cancel(&self, ev: &SagaEvent) -> Result<Effects, CommerceError> {
        let Some((mut s, v)) = self.shipment(&ev.order_id).await? else {
            return Ok(Effects::none());
        };
        if !matches!(
            s.status,
            ShipmentStatus::AwaitingPayment | ShipmentStatus::InTransit
        ) {
            return Ok(Effects::none());
        }
        let mut writes = Vec::new();
        if let Some(at) = s.deliver_at_ms {
            writes.push(Write::delete(timer_key(at, &ev.order_id), Cond::Any));
        }
        s.status = ShipmentStatus::Cancelled;
        writes.push(Write::put_json(
            shipment_key(&ev.order_id),
            &s,
            Cond::Version(v),
        )?);
        Ok(Effects {
            writes,
            emit: vec![],
        })
    }
}

#[async_trait]
impl Service for Delivery {
    fn name(&self) -> &'static str {
        "delivery"
    }

    async fn handle(&self, ev: &SagaEvent) -> Result<Effects, CommerceError> {
        match &ev.kind {
            SagaKind::OrderCreated { shipping, .. } => {
                if self.shipment(&ev.order_id).await?.is_some() {
                    return Ok(Effects::none());
                }
                let s = Shipment {
                    order_id: ev.order_id.clone(),
                    address: shipping.clone(),
                    status: ShipmentStatus::AwaitingPayment,
                    tracking_number: None,
                    deliver_at_ms: None,
                };
                Ok(Effects {
                    writes: vec![Write::put_json(
                        shipment_key(&ev.order_id),
                        &s,
                        Cond::Absent,
                    )?],
                    emit: vec![],
                })
            }
            SagaKind::OrderBilled { .. } => self.ship(ev).await,
            SagaKind::PaymentFail { .. }
            | SagaKind::OrderRejected { .. }
            | SagaKind::ReservationExpired
            | SagaKind::StockLost { .. } => self.cancel(ev).await,
            _ => Ok(Effects::none()),
        }
    }

    async fn tick(&self) -> Result<(), CommerceError> {
        let now = self.ctx.clock.now_ms();
        for (sk, _) in self.ctx.store.query(TIMERS, None, 50).await? {
            let Some((at, order_id)) = sk.split_once('#') else {
                continue;
            };
            if at.parse::<i64>().unwrap_or(i64::MAX) > now {
                break;
            }
            let timer = Write::delete(Key::new(TIMERS, sk.clone()), Cond::Any);
            let writes = match self.shipment(order_id).await? {
                Some((mut s, v)) if s.status == ShipmentStatus::InTransit => {
                    s.status = ShipmentStatus::Delivered;
                    vec![
                        timer,
                        Write::put_json(shipment_key(order_id), &s, Cond::Version(v))?,
                        outbox::write(&OutboxMessage::saga(SagaEvent::new(
                            order_id,
                            now,
                            SagaKind::OrderDelivered,
                        )))?,
                    ]
                }
                _ => vec![timer],
            };
            match self.ctx.store.transact(writes).await {
                Ok(()) => self.ctx.signals.outbox.notify_one(),
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
