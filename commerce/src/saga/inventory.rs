//! Inventory: reserves stock for new orders, commits it when billed, releases it when
//! payment fails or the reservation expires.
//!
//! ```text
//!  ORDER_CREATED ─► every line: stock.reserved += qty if on_hand − reserved ≥ qty
//!                   (conditional on each stock item's version; all lines or none)
//!                ─► ORDER_PREPARED{expires} + timer due#reservation   |  ORDER_REJECTED
//!  ORDER_BILLED  ─► Held: on_hand −= qty, reserved −= qty (Committed)
//!                   Released (expired first): STOCK_LOST → payment refunds
//!  PAYMENT_FAIL  ─► Held: reserved −= qty (Released) ─► STOCK_RELEASED
//!  timer         ─► Held past expiry: release ─► RESERVATION_EXPIRED + STOCK_RELEASED
//! ```
//!
//! Two checkouts for the last unit: both reservations read version v of the stock item;
//! the first commit bumps it, the second fails its condition, is re-run, sees 0 left and
//! rejects its order. Stock never goes negative.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::outbox::{self, OutboxMessage};
use super::{Effects, SagaEvent, SagaKind, Service};
use crate::Ctx;
use crate::catalog::{Stock, stock_key};
use crate::error::CommerceError;
use crate::store::{Cond, Key, StoreError, Write, get_json};

/// Where a reservation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationState {
    /// Stock is reserved; waits for billing or expiry.
    Held,
    /// Billed: the reserved units left stock for good.
    Committed,
    /// Released after a failed payment or expiry.
    Released,
    /// Not every line was in stock: the order was rejected.
    Rejected,
}

/// The inventory service's reservation of one order (`reservation#<order>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// The order reserved for.
    pub order_id: String,
    /// product id → units.
    pub lines: BTreeMap<String, u32>,
    /// Where the reservation stands.
    pub state: ReservationState,
    /// When a held reservation expires, epoch ms.
    pub expires_at_ms: i64,
}

/// The store key of an order's reservation.
pub fn reservation_key(order_id: &str) -> Key {
    Key::new(format!("reservation#{order_id}"), "-")
}

const TIMERS: &str = "due#reservation";

fn timer_key(expires_at_ms: i64, order_id: &str) -> Key {
    Key::new(TIMERS, format!("{expires_at_ms:013}#{order_id}"))
}

/// The inventory saga service: reserves, commits and releases stock (see the module
/// docs).
pub struct Inventory {
    ctx: Arc<Ctx>,
}

impl Inventory {
    pub(crate) fn new(ctx: Arc<Ctx>) -> Inventory {
        Inventory { ctx }
    }

    async fn reservation(&self, order_id: &str) -> Result<Option<(Reservation, u64)>, StoreError> {
        get_json(
            self.ctx.store.as_ref(),
            "reservation",
            &reservation_key(order_id),
        )
        .await
    }

    /// Stock writes that apply `f(stock, qty)` to every line, conditional on the versions read.
    async fn stock_writes(
        &self,
        lines: &BTreeMap<String, u32>,
        f: impl Fn(&mut Stock, i64) -> Result<(), String>,
    ) -> Result<Result<Vec<Write>, String>, CommerceError> {
        let mut writes = Vec::with_capacity(lines.len());
        for (pid, qty) in lines {
            let Some((mut s, v)) =
                get_json::<Stock>(self.ctx.store.as_ref(), "stock", &stock_key(pid)).await?
            else {
                return Ok(Err(format!("unknown product {pid}")));
            };
            if let Err(why) = f(&mut s, i64::from(*qty)) {
                return Ok(Err(format!("{why}: {pid}")));
            }
            writes.push(Write::put_json(stock_key(pid), &s, Cond::Version(v))?);
        }
        Ok(Ok(writes))
    }

    async fn reserve(
        &self,
        ev: &SagaEvent,
        lines: &[super::OrderLine],
    ) -> Result<Effects, CommerceError> {
        if self.reservation(&ev.order_id).await?.is_some() {
            return Ok(Effects::none());
        }
        let mut wanted: BTreeMap<String, u32> = BTreeMap::new();
        for l in lines {
            *wanted.entry(l.product_id.clone()).or_default() += l.quantity;
        }
        let now = self.ctx.clock.now_ms();
        let expires = now + self.ctx.cfg.reservation_ttl_ms as i64;
        let stock = self
            .stock_writes(&wanted, |s, q| {
                if s.available() < q {
                    return Err("out_of_stock".into());
                }
                s.reserved += q;
                Ok(())
            })
            .await?;
        let (state, mut writes, emit) = match stock {
            Ok(writes) => (
                ReservationState::Held,
                writes,
                SagaKind::OrderPrepared {
                    reservation_expires_at_ms: expires,
                },
            ),
            Err(reason) => (
                ReservationState::Rejected,
                Vec::new(),
                SagaKind::OrderRejected { reason },
            ),
        };
        let r = Reservation {
            order_id: ev.order_id.clone(),
            lines: wanted,
            state,
            expires_at_ms: expires,
        };
        writes.push(Write::put_json(
            reservation_key(&ev.order_id),
            &r,
            Cond::Absent,
        )?);
        if state == ReservationState::Held {
            writes.push(Write::put(
                timer_key(expires, &ev.order_id),
                Vec::new(),
                Cond::Any,
            ));
        }
        Ok(Effects {
            writes,
            emit: vec![OutboxMessage::saga(SagaEvent::new(&ev.order_id, now, emit))],
        })
    }

    /// Releases a held reservation: the writes, or `None` if it is not held.
    async fn release_writes(&self, order_id: &str) -> Result<Option<Vec<Write>>, CommerceError> {
        let Some((mut r, v)) = self.reservation(order_id).await? else {
            return Ok(None);
        };
        if r.state != ReservationState::Held {
            return Ok(None);
        }
        let mut writes = match self
            .stock_writes(&r.lines, |s, q| {
                s.reserved = (s.reserved - q).max(0);
                Ok(())
            })
            .await?
        {
            Ok(w) => w,
            Err(why) => {
                return Err(CommerceError::Internal(format!(
                    "release of {order_id}: {why}"
                )));
            }
        };
        r.state = ReservationState::Released;
        writes.push(Write::delete(
            timer_key(r.expires_at_ms, order_id),
            Cond::Any,
        ));
        writes.push(Write::put_json(
            reservation_key(order_id),
            &r,
            Cond::Version(v),
        )?);
        Ok(Some(writes))
    }

    async fn commit(&self, ev: &SagaEvent) -> Result<Effects, CommerceError> {
        let Some((mut r, v)) = self.reservation(&ev.order_id).await? else {
            return Ok(Effects::none());
        };
        let now = self.ctx.clock.now_ms();
        match r.state {
            ReservationState::Held => {
                let mut writes = match self
                    .stock_writes(&r.lines, |s, q| {
                        s.on_hand -= q;
                        s.reserved = (s.reserved - q).max(0);
                        Ok(())
                    })
                    .await?
                {
                    Ok(w) => w,
                    Err(why) => return Err(CommerceError::Internal(why)),
                };
                r.state = ReservationState::Committed;
                writes.push(Write::delete(
                    timer_key(r.expires_at_ms, &ev.order_id),
                    Cond::Any,
                ));
                writes.push(Write::put_json(
                    reservation_key(&ev.order_id),
                    &r,
                    Cond::Version(v),
                )?);
                Ok(Effects {
                    writes,
                    emit: vec![],
                })
            }
            ReservationState::Released | ReservationState::Rejected => Ok(Effects {
                writes: vec![],
                emit: vec![OutboxMessage::saga(SagaEvent::new(
                    &ev.order_id,
                    now,
                    SagaKind::StockLost {
                        reason: "the reservation expired before payment completed".into(),
                    },
                ))],
            }),
            ReservationState::Committed => Ok(Effects::none()),
        }
    }
}

#[async_trait]
impl Service for Inventory {
    fn name(&self) -> &'static str {
        "inventory"
    }

    async fn handle(&self, ev: &SagaEvent) -> Result<Effects, CommerceError> {
        match &ev.kind {
            SagaKind::OrderCreated { lines, .. } => self.reserve(ev, lines).await,
            SagaKind::OrderBilled { .. } => self.commit(ev).await,
            SagaKind::PaymentFail { .. } => match self.release_writes(&ev.order_id).await? {
                Some(writes) => Ok(Effects {
                    writes,
                    emit: vec![OutboxMessage::saga(SagaEvent::new(
                        &ev.order_id,
                        self.ctx.clock.now_ms(),
                        SagaKind::StockReleased,
                    ))],
                }),
                None => Ok(Effects::none()),
            },
            _ => Ok(Effects::none()),
        }
    }

    async fn tick(&self) -> Result<(), CommerceError> {
        let now = self.ctx.clock.now_ms();
        let due = self.ctx.store.query(TIMERS, None, 50).await?;
        for (sk, _) in due {
            let Some((at, order_id)) = sk.split_once('#') else {
                continue;
            };
            if at.parse::<i64>().unwrap_or(i64::MAX) > now {
                break;
            }
            let mut writes = match self.release_writes(order_id).await? {
                Some(w) => w,
                None => vec![Write::delete(Key::new(TIMERS, sk.clone()), Cond::Any)],
            };
            if writes.len() > 1 {
                for kind in [SagaKind::ReservationExpired, SagaKind::StockReleased] {
                    writes.push(outbox::write(&OutboxMessage::saga(SagaEvent::new(
                        order_id, now, kind,
                    )))?);
                }
            }
            match self.ctx.store.transact(writes).await {
                Ok(()) => {
                    tracing::info!(order_id, "reservation expired; stock released");
                    self.ctx.signals.outbox.notify_one();
                }
                // Billed (committed) or released meanwhile: the next tick re-checks.
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
