//! The transactional outbox and its relay.
//!
//! ```text
//!  any transaction ─► outbox/<time-ordered id> = OutboxMessage      (same transaction)
//!  relay (woken on commit, else every relay_poll_ms):
//!     Saga(event)         ─► log/<seq:020> + delete outbox row + log head   (one transaction)
//!     Notify(message)     ─► Notifier::send, then delete the row              (at least once)
//!     Clickstream(events) ─► EventSink::send, then delete the row             (at least once)
//!  failures back off per row (20 ms → 30 s), so one stuck row never blocks the others
//! ```
//!
//! The log is the saga's event stream in the store (consumers read it by cursor); with
//! one relay appending under a conditional head, its order is the order consumers see.
//! Notifications and clickstream events carry stable ids (`<order>:<template>`,
//! `purchase-<order>-<line>`), so the at-least-once legs can be deduplicated downstream.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use recstream_ingest::Event;
use recstream_ingest::aws::RetryPolicy;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use super::SagaEvent;
use crate::Ctx;
use crate::error::CommerceError;
use crate::notify::Notification;
use crate::store::{Cond, Key, StoreError, Write, from_json, get_json};
use recstream_ingest::sink::OutRecord;

/// Partition of the outbox rows.
pub const OUTBOX_PK: &str = "outbox";
/// Partition of the saga log.
pub const LOG_PK: &str = "log";

/// Rows relayed, by destination and result.
pub const RELAYED_TOTAL: &str = "recstream_commerce_outbox_relayed_total";

/// What an outbox row carries, by destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "dest", rename_all = "snake_case")]
pub enum OutboxMessage {
    /// A saga event for the log.
    Saga {
        /// The event.
        event: SagaEvent,
    },
    /// A notification for the [`crate::notify::Notifier`].
    Notify {
        /// The notification.
        notification: Notification,
    },
    /// Clickstream events for the event sink.
    Clickstream {
        /// The events.
        events: Vec<Event>,
    },
}

impl OutboxMessage {
    /// A row for the saga log.
    pub fn saga(event: SagaEvent) -> OutboxMessage {
        OutboxMessage::Saga { event }
    }
}

/// A time-ordered, unique outbox row id: 16 hex digits of (ms << 20 | counter), strictly
/// increasing within the process, then 8 random hex digits against other processes.
pub fn next_id() -> String {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut prev = LAST.load(Ordering::Relaxed);
    let v = loop {
        let cand = (now << 20).max(prev + 1);
        match LAST.compare_exchange_weak(prev, cand, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => break cand,
            Err(p) => prev = p,
        }
    };
    let r = uuid::Uuid::new_v4().as_u128() as u32;
    format!("{v:016x}{r:08x}")
}

/// The write that puts `msg` in the outbox.
pub fn write(msg: &OutboxMessage) -> Result<Write, StoreError> {
    Write::put_json(Key::new(OUTBOX_PK, next_id()), msg, Cond::Absent)
}

#[derive(Debug, Serialize, Deserialize, Default)]
struct LogHead {
    seq: u64,
}

fn head_key() -> Key {
    Key::new("meta", "log_head")
}

/// The store key of the log entry with sequence number `seq`.
pub fn log_key(seq: u64) -> Key {
    Key::new(LOG_PK, format!("{seq:020}"))
}

pub(crate) struct Backoff {
    attempts: u32,
    next: Instant,
}

/// Runs the relay until `stop`.
pub(crate) async fn run_relay(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let poll = Duration::from_millis(ctx.cfg.relay_poll_ms);
    let mut backoffs: HashMap<String, Backoff> = HashMap::new();
    let mut failures = 0u32;
    let mut last_trim = Instant::now();
    loop {
        if *stop.borrow() {
            return;
        }
        match relay_once(&ctx, &mut backoffs).await {
            Ok(0) => {
                failures = 0;
                let wait = backoffs
                    .values()
                    .map(|b| b.next)
                    .min()
                    .map(|n| n.saturating_duration_since(Instant::now()).min(poll))
                    .unwrap_or(poll);
                tokio::select! {
                    _ = ctx.signals.outbox.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => {}
                }
            }
            Ok(_) => failures = 0,
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, failures, "outbox relay failed; backing off");
                tokio::select! {
                    _ = tokio::time::sleep(super::backoff(failures)) => {}
                    _ = stop.changed() => {}
                }
            }
        }
        if last_trim.elapsed() > Duration::from_secs(30) {
            last_trim = Instant::now();
            if let Err(e) = trim_log(&ctx).await {
                tracing::warn!(error = %e, "log trim failed");
            }
        }
    }
}

/// One pass over the outbox; returns how many rows were relayed.
pub(crate) async fn relay_once(
    ctx: &Ctx,
    backoffs: &mut HashMap<String, Backoff>,
) -> Result<usize, CommerceError> {
    // Rows waiting out a backoff must not hide the rows behind them: page past them.
    let mut rows = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..8 {
        let page = ctx.store.query(OUTBOX_PK, after.as_deref(), 256).await?;
        let full = page.len() == 256;
        after = page.last().map(|(k, _)| k.clone());
        let now = Instant::now();
        let ready = page
            .iter()
            .any(|(k, _)| backoffs.get(k).is_none_or(|b| b.next <= now));
        rows.extend(page);
        if ready || !full {
            break;
        }
    }
    let now = Instant::now();
    if rows.len() < 256 {
        let live: std::collections::HashSet<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
        backoffs.retain(|k, _| live.contains(k.as_str()));
    }
    let mut saga = Vec::new();
    let mut delivered = Vec::new();
    let mut done = 0;
    for (sk, item) in &rows {
        if backoffs.get(sk).is_some_and(|b| b.next > now) {
            continue;
        }
        let msg: OutboxMessage = match from_json("outbox row", &item.value) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(row = %sk, error = %e, "undecodable outbox row dropped");
                ctx.store
                    .transact(vec![Write::delete(Key::new(OUTBOX_PK, sk), Cond::Any)])
                    .await?;
                continue;
            }
        };
        let (dest, r) = match msg {
            OutboxMessage::Saga { event } => {
                saga.push((sk.clone(), item.version, event));
                continue;
            }
            OutboxMessage::Notify { notification } => (
                "notify",
                ctx.notifier
                    .send(&notification)
                    .await
                    .map_err(|e| CommerceError::Unavailable(e.to_string())),
            ),
            OutboxMessage::Clickstream { events } => {
                ("clickstream", send_clickstream(ctx, &events).await)
            }
        };
        match r {
            Ok(()) => {
                delivered.push(Write::delete(Key::new(OUTBOX_PK, sk), Cond::Any));
                backoffs.remove(sk);
                metrics::counter!(RELAYED_TOTAL, "dest" => dest, "result" => "ok").increment(1);
                done += 1;
            }
            Err(e) => {
                metrics::counter!(RELAYED_TOTAL, "dest" => dest, "result" => "retry").increment(1);
                let b = backoffs.entry(sk.clone()).or_insert(Backoff {
                    attempts: 0,
                    next: now,
                });
                b.attempts += 1;
                let wait = ROW_RETRY.backoff(b.attempts);
                b.next = now + wait;
                tracing::warn!(row = %sk, dest, attempts = b.attempts, error = %e, "outbox delivery failed; will retry");
            }
        }
    }
    // Delivered rows go in batches (a crash before this only means a redelivery).
    for chunk in delivered.chunks(super::super::store::MAX_WRITES) {
        ctx.store.transact(chunk.to_vec()).await?;
    }
    // Saga events: appended in outbox order, 30 per transaction (2 writes each + head).
    for chunk in saga.chunks(30) {
        append(ctx, chunk).await?;
        done += chunk.len();
        metrics::counter!(RELAYED_TOTAL, "dest" => "saga", "result" => "ok")
            .increment(chunk.len() as u64);
    }
    Ok(done)
}

/// Per-row redelivery backoff of a failing destination: the AWS helper layer's one
/// backoff (exponential with full jitter), 20 ms doubling to 30 s; rows are retried
/// until delivered, so `max_attempts` is not used.
const ROW_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: u32::MAX,
    base: Duration::from_millis(20),
    max: Duration::from_secs(30),
};

/// Conflicting appends tried per chunk before the chunk is left to the next relay pass
/// (its rows stay in the outbox, so nothing is lost).
const APPEND_ATTEMPTS: u32 = 4;

async fn append(ctx: &Ctx, chunk: &[(String, u64, SagaEvent)]) -> Result<(), CommerceError> {
    for attempt in 0..APPEND_ATTEMPTS {
        let head = get_json::<LogHead>(ctx.store.as_ref(), "log head", &head_key()).await?;
        let (mut h, cond) = match head {
            Some((h, v)) => (h, Cond::Version(v)),
            None => (LogHead::default(), Cond::Absent),
        };
        let mut writes = Vec::with_capacity(chunk.len() * 2 + 1);
        for (sk, version, ev) in chunk {
            h.seq += 1;
            writes.push(Write::put_json(log_key(h.seq), ev, Cond::Absent)?);
            // The row must still be there: two relays never append it twice.
            writes.push(Write::delete(
                Key::new(OUTBOX_PK, sk),
                Cond::Version(*version),
            ));
        }
        writes.push(Write::put_json(head_key(), &h, cond)?);
        match ctx.store.transact(writes).await {
            Ok(()) => {
                ctx.signals.log.send_modify(|s| *s = h.seq);
                return Ok(());
            }
            Err(StoreError::Conflict { .. }) => {
                // Another relay moved the head or took these rows: re-read, after a
                // jittered pause, or leave them to the next pass.
                if attempt + 1 < APPEND_ATTEMPTS {
                    tokio::time::sleep(super::backoff(attempt) / 4).await;
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn send_clickstream(ctx: &Ctx, events: &[Event]) -> Result<(), CommerceError> {
    let mut records = Vec::with_capacity(events.len());
    for ev in events {
        let data = serde_json::to_vec(ev).map_err(|e| CommerceError::Internal(e.to_string()))?;
        records.push(OutRecord {
            partition_key: ev.user_id.to_string(),
            data: Bytes::from(data),
        });
    }
    ctx.sink
        .send(records)
        .await
        .map_err(|e| CommerceError::Unavailable(e.to_string()))
}

/// Deletes log entries every known consumer has passed (at most 1 000 per call).
pub(crate) async fn trim_log(ctx: &Ctx) -> Result<(), CommerceError> {
    let cursors = ctx.store.query("cursor", None, 64).await?;
    let expected = ctx.consumer_names.len();
    if cursors.len() < expected || expected == 0 {
        return Ok(());
    }
    let mut min: Option<String> = None;
    for (name, item) in &cursors {
        if !ctx.consumer_names.iter().any(|n| n == name) {
            continue;
        }
        let c: super::Cursor = from_json("cursor", &item.value)?;
        if min.as_ref().is_none_or(|m| c.after < *m) {
            min = Some(c.after);
        }
    }
    let Some(min) = min else { return Ok(()) };
    let old = ctx.store.query(LOG_PK, None, 1000).await?;
    let doomed: Vec<Write> = old
        .into_iter()
        .filter(|(sk, _)| *sk < min)
        .map(|(sk, _)| Write::delete(Key::new(LOG_PK, sk), Cond::Any))
        .collect();
    for chunk in doomed.chunks(100) {
        ctx.store.transact(chunk.to_vec()).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_strictly_increasing_and_fixed_width() {
        let ids: Vec<String> = (0..10_000).map(|_| next_id()).collect();
        assert!(ids.windows(2).all(|w| w[0][..16] < w[1][..16]));
        assert!(ids.iter().all(|i| i.len() == 24));
    }

    #[test]
    fn messages_round_trip() {
        let m = OutboxMessage::saga(SagaEvent::new(
            "o1",
            5,
            super::super::SagaKind::OrderDelivered,
        ));
        let bytes = serde_json::to_vec(&m).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.contains(r#""dest":"saga""#) && text.contains(r#""type":"ORDER_DELIVERED""#),
            "{text}"
        );
        assert_eq!(serde_json::from_slice::<OutboxMessage>(&bytes).unwrap(), m);
    }
}
