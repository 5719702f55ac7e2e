//! The order saga, by choreography: services react to each other's events; nobody
//! orchestrates.
//!
//! ```text
//!  checkout ──ORDER_CREATED──► inventory: reserve all lines (expiry) ─┬─ORDER_PREPARED──► payment
//!                                                                    └─ORDER_REJECTED (out of stock)
//!  payment: create → confirm → capture (keys order-<id>-*) ─┬─ORDER_BILLED──► inventory commits stock
//!                                                          │                 delivery ships
//!                                                          └─PAYMENT_FAIL──► inventory releases
//!  delivery ─ORDER_SHIPPED─► (timer) ─ORDER_DELIVERED─► orders ─ORDER_COMPLETED
//!  compensation: RESERVATION_EXPIRED (timer) cancels; DELIVERY_FAILED / STOCK_LOST after
//!  billing ─► payment refunds ─ORDER_REFUNDED
//!  orders: guarded state machine + history, notifications, purchase clickstream events
//! ```
//!
//! Plumbing, the same for every service:
//!
//! ```text
//!  state change + events ──one transaction──► store (items + `outbox` rows)
//!  relay: outbox ─► saga events appended to the `log` partition (same transaction as the
//!         outbox delete), notifications ─► Notifier, clickstream ─► EventSink (retries)
//!  consumer (one per service): log after its cursor ─► drop if `processed#<service>/<event id>`
//!         ─► handle ─► state + emitted events + processed marker + cursor: one transaction
//! ```
//!
//! A consumer that crashes anywhere re-reads from its cursor; what it did not commit is
//! redone, what it did is dropped as a duplicate; external calls (payments) are replayed
//! by the provider under the same idempotency key. Every transition is checked against the
//! order state machine ([`orders::transition`]); illegal ones change nothing.

pub mod delivery;
pub mod inventory;
pub mod orders;
pub mod outbox;
pub mod payments;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use recstream_ingest::Money;
use recstream_ingest::aws::RetryPolicy;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Ctx;
use super::error::CommerceError;
use super::store::{Cond, Key, StoreError, Write, get_json};
pub use outbox::OutboxMessage;

/// Saga events per consumer and outcome (`handled`, `duplicate`, `failed`).
pub const SAGA_EVENTS_TOTAL: &str = "recstream_commerce_saga_events_total";
/// Transitions rejected by the order state machine (label: `event`).
pub const ILLEGAL_TRANSITIONS_TOTAL: &str = "recstream_commerce_illegal_transitions_total";

/// One line of an order, as the services see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderLine {
    /// The catalog's product id.
    pub product_id: String,
    /// Product name at checkout time.
    pub name: String,
    /// Category path at checkout time, when the catalog has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Units ordered (at least 1).
    pub quantity: u32,
    /// Price of one unit at checkout time.
    pub unit_price: Money,
}

/// Where the simulated carrier delivers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Address {
    /// Recipient.
    pub name: String,
    /// Street and number.
    pub line1: String,
    /// Second address line, if any.
    #[serde(default)]
    pub line2: Option<String>,
    /// City.
    pub city: String,
    /// Postal code; the simulated carrier fails [`delivery::UNDELIVERABLE_POSTAL_CODE`].
    pub postal_code: String,
    /// ISO 3166-1 alpha-2.
    pub country: String,
}

/// What happened, in the saga's vocabulary (serialized as `"type": "ORDER_CREATED"`, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SagaKind {
    /// Checkout created the order (pending stock and payment).
    OrderCreated {
        /// The buyer.
        user_id: String,
        /// What was ordered.
        lines: Vec<OrderLine>,
        /// Sum of the lines.
        total: Money,
        /// The payment method to charge (the provider's id, e.g. `pm_card_visa`).
        payment_method: String,
        /// Where to deliver, if the order ships.
        #[serde(default)]
        shipping: Option<Address>,
    },
    /// Inventory reserved every line.
    OrderPrepared {
        /// When the reservation expires unless the order is billed, epoch ms.
        reservation_expires_at_ms: i64,
    },
    /// Inventory could not reserve every line; the order is cancelled.
    OrderRejected {
        /// Why, e.g. which product was short; kept in the order history.
        reason: String,
    },
    /// The payment was declined or invalid; the reservation is released.
    PaymentFail {
        /// The provider's reason.
        reason: String,
    },
    /// The payment was captured.
    OrderBilled {
        /// The provider's payment intent.
        payment_intent_id: String,
        /// The amount captured.
        amount: Money,
    },
    /// The reservation expired before billing; the order is cancelled.
    ReservationExpired,
    /// Inventory released the order's reserved stock (recorded only).
    StockReleased,
    /// The carrier took the order.
    OrderShipped {
        /// The carrier's name.
        carrier: String,
        /// The tracking number.
        tracking_number: String,
    },
    /// The carrier delivered the order.
    OrderDelivered,
    /// The carrier could not deliver; a billed order is refunded.
    DeliveryFailed {
        /// The carrier's reason.
        reason: String,
    },
    /// Billing came after the reservation expired and the stock is gone; the order is
    /// refunded.
    StockLost {
        /// What was lost.
        reason: String,
    },
    /// The payment was refunded.
    OrderRefunded {
        /// The provider's refund id.
        refund_id: String,
        /// The amount refunded.
        amount: Money,
    },
    /// The order reached its end after delivery.
    OrderCompleted,
}

impl SagaKind {
    /// The wire name, e.g. `ORDER_CREATED` (the serde tag).
    pub fn name(&self) -> &'static str {
        match self {
            SagaKind::OrderCreated { .. } => "ORDER_CREATED",
            SagaKind::OrderPrepared { .. } => "ORDER_PREPARED",
            SagaKind::OrderRejected { .. } => "ORDER_REJECTED",
            SagaKind::PaymentFail { .. } => "PAYMENT_FAIL",
            SagaKind::OrderBilled { .. } => "ORDER_BILLED",
            SagaKind::ReservationExpired => "RESERVATION_EXPIRED",
            SagaKind::StockReleased => "STOCK_RELEASED",
            SagaKind::OrderShipped { .. } => "ORDER_SHIPPED",
            SagaKind::OrderDelivered => "ORDER_DELIVERED",
            SagaKind::DeliveryFailed { .. } => "DELIVERY_FAILED",
            SagaKind::StockLost { .. } => "STOCK_LOST",
            SagaKind::OrderRefunded { .. } => "ORDER_REFUNDED",
            SagaKind::OrderCompleted => "ORDER_COMPLETED",
        }
    }
}

/// One event of the saga log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaEvent {
    /// `evt_<uuid v7>`: unique, time-ordered; consumers deduplicate on it.
    pub event_id: String,
    /// The order it is about.
    pub order_id: String,
    /// When it was emitted, epoch ms (wall clock).
    pub at_ms: i64,
    /// What happened (flattened: `type` plus the variant's fields).
    #[serde(flatten)]
    pub kind: SagaKind,
}

impl SagaEvent {
    /// A new event about `order_id` at `at_ms`, with a fresh event id.
    pub fn new(order_id: &str, at_ms: i64, kind: SagaKind) -> SagaEvent {
        SagaEvent {
            event_id: format!("evt_{}", uuid::Uuid::now_v7().simple()),
            order_id: order_id.to_string(),
            at_ms,
            kind,
        }
    }
}

/// What a service does with one event: state writes, and the events they cause, both
/// committed in the consumer's transaction.
#[derive(Debug, Default)]
pub struct Effects {
    /// State writes, committed with the consumer's cursor and processed marker.
    pub writes: Vec<Write>,
    /// Messages to put into the outbox in the same transaction.
    pub emit: Vec<OutboxMessage>,
}

impl Effects {
    /// No writes, nothing to emit (a duplicate or an ignored event).
    pub fn none() -> Effects {
        Effects::default()
    }
}

/// A saga participant.
#[async_trait]
pub trait Service: Send + Sync + 'static {
    /// Consumer name: cursor and processed-id namespace. Never rename a deployed one.
    fn name(&self) -> &'static str;
    /// Reacts to one saga event; the effects are committed by the consumer loop. An error
    /// leaves the cursor before the event: it is retried.
    async fn handle(&self, ev: &SagaEvent) -> Result<Effects, CommerceError>;
    /// Timers (expiry, delivery): called every `timer_poll_ms`; commits on its own.
    async fn tick(&self) -> Result<(), CommerceError> {
        Ok(())
    }
}

/// Processed-event markers are kept this long (then DynamoDB TTL / purge drops them).
const PROCESSED_TTL_S: i64 = 7 * 24 * 3600;
const MAX_ATTEMPTS: u32 = 16;

#[derive(Debug, Serialize, Deserialize)]
struct Cursor {
    after: String,
}

fn cursor_key(consumer: &str) -> Key {
    Key::new("cursor", consumer)
}

/// The retry policy of the saga consumers and the outbox relay: the AWS helper layer's
/// one backoff (exponential with full jitter, so that relays and consumers that collided
/// do not collide again in step), 20 ms doubling to 2 s.
pub(crate) const RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 16,
    base: Duration::from_millis(20),
    max: Duration::from_secs(2),
};

/// The wait before retry `attempt` under [`RETRY`].
pub(crate) fn backoff(attempt: u32) -> Duration {
    RETRY.backoff(attempt)
}

/// Runs one consumer until `stop` turns true.
///
/// It reads up to `consumer_batch` log entries after its cursor, handles them
/// concurrently across orders and in log order within an order, and only then moves the
/// cursor past the batch. A crash in between re-reads the batch; the processed markers
/// drop what was already committed.
pub(crate) async fn run_consumer(
    ctx: Arc<Ctx>,
    svc: Arc<dyn Service>,
    mut stop: watch::Receiver<bool>,
) {
    let name = svc.name();
    let mut log_rx = ctx.signals.log.subscribe();
    let mut failures = 0u32;
    let poll = Duration::from_millis(ctx.cfg.consumer_poll_ms);
    loop {
        if *stop.borrow() {
            return;
        }
        match consume_batch(&ctx, &svc).await {
            Ok(0) => {
                failures = 0;
                tokio::select! {
                    _ = log_rx.changed() => {}
                    _ = tokio::time::sleep(poll) => {}
                    _ = stop.changed() => {}
                }
            }
            Ok(_) => failures = 0,
            Err(e) => {
                failures += 1;
                tracing::warn!(consumer = name, error = %e, failures, "saga consumer step failed; backing off");
                tokio::select! {
                    _ = tokio::time::sleep(backoff(failures)) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
}

/// One batch: returns how many log entries it moved past.
async fn consume_batch(ctx: &Arc<Ctx>, svc: &Arc<dyn Service>) -> Result<usize, CommerceError> {
    let name = svc.name();
    let cursor = get_json::<Cursor>(ctx.store.as_ref(), "cursor", &cursor_key(name)).await?;
    let (after, cursor_version) = match cursor {
        Some((c, v)) => (Some(c.after), Some(v)),
        None => (None, None),
    };
    let batch = ctx
        .store
        .query(outbox::LOG_PK, after.as_deref(), ctx.cfg.consumer_batch)
        .await?;
    let Some((last, _)) = batch.last() else {
        return Ok(0);
    };
    let last = last.clone();
    let n = batch.len();
    // Per order, in log order; undecodable entries are logged and passed over.
    let mut groups: Vec<(String, Vec<SagaEvent>)> = Vec::new();
    for (seq, item) in batch {
        match serde_json::from_slice::<SagaEvent>(&item.value) {
            Ok(ev) => match groups.iter_mut().find(|(o, _)| *o == ev.order_id) {
                Some((_, evs)) => evs.push(ev),
                None => groups.push((ev.order_id.clone(), vec![ev])),
            },
            Err(e) => {
                tracing::error!(consumer = name, seq = %seq, error = %e, "undecodable saga event skipped");
                metrics::counter!(SAGA_EVENTS_TOTAL, "consumer" => name, "result" => "undecodable")
                    .increment(1);
            }
        }
    }
    let mut set = tokio::task::JoinSet::new();
    for (_, evs) in groups {
        let (ctx, svc) = (ctx.clone(), svc.clone());
        set.spawn(async move {
            for ev in &evs {
                process_event(&ctx, svc.as_ref(), ev).await?;
            }
            Ok::<(), CommerceError>(())
        });
    }
    let mut first_err = None;
    while let Some(r) = set.join_next().await {
        let r = r.unwrap_or_else(|e| Err(CommerceError::Internal(format!("consumer task: {e}"))));
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let w = Write::put_json(
        cursor_key(name),
        &Cursor { after: last },
        Cond::from_read(cursor_version),
    )?;
    match ctx.store.transact(vec![w]).await {
        // Another instance moved it: it re-reads from there; markers drop duplicates.
        Ok(()) | Err(StoreError::Conflict { .. }) => Ok(n),
        Err(e) => Err(e.into()),
    }
}

/// Handles one event exactly once (effect-wise): its effects and its processed marker
/// are one transaction.
async fn process_event(ctx: &Ctx, svc: &dyn Service, ev: &SagaEvent) -> Result<(), CommerceError> {
    let name = svc.name();
    let marker = Key::new(format!("processed#{name}"), &ev.event_id);
    for attempt in 0..MAX_ATTEMPTS {
        if ctx.store.get(&marker).await?.is_some() {
            metrics::counter!(SAGA_EVENTS_TOTAL, "consumer" => name, "result" => "duplicate")
                .increment(1);
            return Ok(());
        }
        let effects = match svc.handle(ev).await {
            Ok(e) => e,
            Err(e) if e.retriable() => return Err(e),
            Err(e) => {
                // A bug or bad data: record it and move on, so one order cannot stall all.
                tracing::error!(consumer = name, order_id = %ev.order_id, event = ev.kind.name(), error = %e,
                    "saga event failed permanently; skipped");
                metrics::counter!(SAGA_EVENTS_TOTAL, "consumer" => name, "result" => "failed")
                    .increment(1);
                Effects::none()
            }
        };
        let emits = !effects.emit.is_empty();
        let mut writes = effects.writes;
        for m in &effects.emit {
            writes.push(outbox::write(m)?);
        }
        writes.push(Write::Put {
            key: marker.clone(),
            value: Vec::new(),
            cond: Cond::Absent,
            expires_at_s: Some(ctx.clock.now_ms() / 1000 + PROCESSED_TTL_S),
        });
        match ctx.store.transact(writes).await {
            Ok(()) => {
                metrics::counter!(SAGA_EVENTS_TOTAL, "consumer" => name, "result" => "handled")
                    .increment(1);
                if emits {
                    ctx.signals.outbox.notify_one();
                }
                return Ok(());
            }
            Err(StoreError::Conflict { .. }) => {
                tokio::time::sleep(backoff(attempt) / 4).await;
            }
            Err(e) if e.retriable() => return Err(e.into()),
            Err(e) => {
                // The effects cannot be stored (too large, corrupt): a bug. Skip the event
                // with a loud record rather than stall every order behind it.
                tracing::error!(consumer = name, order_id = %ev.order_id, event = ev.kind.name(), error = %e,
                    "saga effects rejected by the store; event skipped");
                metrics::counter!(SAGA_EVENTS_TOTAL, "consumer" => name, "result" => "failed")
                    .increment(1);
                let w = Write::Put {
                    key: marker.clone(),
                    value: Vec::new(),
                    cond: Cond::Absent,
                    expires_at_s: Some(ctx.clock.now_ms() / 1000 + PROCESSED_TTL_S),
                };
                return match ctx.store.transact(vec![w]).await {
                    Ok(()) | Err(StoreError::Conflict { .. }) => Ok(()),
                    Err(e) => Err(e.into()),
                };
            }
        }
    }
    Err(CommerceError::Store(StoreError::Conflict { index: None }))
}

/// What one on-demand pass of the saga did ([`crate::CommerceState::run_saga_pass`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SagaPass {
    /// Outbox rows delivered: saga events appended to the log, notifications sent,
    /// clickstream events put on the stream.
    pub relayed: usize,
    /// Log entries the consumers moved past (each consumer counts its own).
    pub consumed: usize,
    /// Relay-then-consume rounds run.
    pub rounds: usize,
    /// Outbox rows whose destination failed in this pass: they stay in the outbox and the
    /// next pass retries them (nothing is lost).
    pub outbox_retrying: usize,
    /// True when the last round found nothing to move; false when the time budget ran
    /// out first (the next pass carries on from the cursors).
    pub drained: bool,
}

/// One pass of the whole saga for a caller that runs it on demand rather than as
/// background tasks (the `saga` Lambda function, woken by the commerce table's stream
/// and a schedule): the timers once, then rounds of relay → every consumer until a round
/// moves nothing or `budget` is spent, then the log trim. The same steps as the
/// background tasks, with the same guarantees: the cursors and processed markers live in
/// the store, so a pass that is cut off, or two passes that overlap, redo nothing.
pub(crate) async fn run_pass(
    ctx: &Arc<Ctx>,
    consumers: &[Arc<dyn Service>],
    timers: &[Arc<dyn Service>],
    budget: Duration,
) -> Result<SagaPass, CommerceError> {
    let deadline = tokio::time::Instant::now() + budget;
    let mut pass = SagaPass::default();
    for t in timers {
        t.tick().await?;
    }
    let mut backoffs = std::collections::HashMap::new();
    loop {
        pass.rounds += 1;
        let relayed = outbox::relay_once(ctx, &mut backoffs).await?;
        let mut consumed = 0;
        for c in consumers {
            consumed += consume_batch(ctx, c).await?;
        }
        pass.relayed += relayed;
        pass.consumed += consumed;
        if relayed + consumed == 0 {
            pass.drained = true;
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
    }
    pass.outbox_retrying = backoffs.len();
    if let Err(e) = outbox::trim_log(ctx).await {
        tracing::warn!(error = %e, "log trim failed");
    }
    Ok(pass)
}

/// Runs a service's timers until `stop`.
pub(crate) async fn run_ticker(
    ctx: Arc<Ctx>,
    svc: Arc<dyn Service>,
    mut stop: watch::Receiver<bool>,
) {
    let every = Duration::from_millis(ctx.cfg.timer_poll_ms);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
        if let Err(e) = svc.tick().await {
            tracing::warn!(service = svc.name(), error = %e, "saga timer failed");
        }
    }
}

/// The running background tasks: relay, consumers, timers, cart sweep, purge. Dropping
/// it aborts them; [`Workers::shutdown`] stops them between steps.
pub struct Workers {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Workers {
    pub(crate) fn new(stop: watch::Sender<bool>, tasks: Vec<JoinHandle<()>>) -> Workers {
        Workers { stop, tasks }
    }

    /// Asks every task to stop after its current step, waits up to `grace`, aborts the rest.
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut self.tasks);
        let deadline = tokio::time::Instant::now() + grace;
        for mut t in tasks {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                t.abort();
                let _ = t.await;
            }
        }
    }

    /// Kills every task at once, wherever it is (a crash, for tests), and waits until
    /// they are gone.
    pub async fn kill(mut self) {
        let tasks = std::mem::take(&mut self.tasks);
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
