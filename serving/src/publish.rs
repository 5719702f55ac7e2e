//! Served lists on the stream: every recommendations response becomes a `recommendation`
//! event on the stream the collector writes to, without adding to the endpoint's latency.
//!
//! ```text
//!  GET /v1/recommendations ─► ServedLists::publish(event)   try_send: never waits
//!        │ full ─► dropped, counted (recstream_serving_served_lists_dropped_total{reason="full"})
//!        ▼
//!  bounded queue (`capacity` lists) ─► one task: up to `batch` lists or `linger_ms`
//!        ─► JSON (a list over the record limit loses its feature rows (counted); still
//!           over it, it is dropped (reason="too_large"))
//!        ─► EventSink::send (partition key = user id: the list and the user's clicks
//!           land on one shard, in order) ─► channel shard | Kinesis PutRecords
//!        a failed send ─► the batch is dropped, counted (reason="sink")
//! ```
//!
//! The task ends once every [`ServedLists`] handle is gone and the queue is drained.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use recstream_ingest::Event;
use recstream_ingest::sink::{EventSink, OutRecord};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::metrics as m;

/// The `[server.served_lists]` section: how served lists are published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServedListsConfig {
    /// Publish every served list as a `recommendation` event (default true). Without
    /// it, the online learners get no feedback and the archive holds no served lists.
    pub enabled: bool,
    /// Lists waiting to be sent; when full, new lists are dropped and counted.
    pub capacity: usize,
    /// Most lists per send (one PutRecords call holds at most 500 records).
    pub batch: usize,
    /// How long the first list of a batch waits for more, ms.
    pub linger_ms: u64,
}

impl Default for ServedListsConfig {
    fn default() -> Self {
        ServedListsConfig {
            enabled: true,
            capacity: 10_000,
            batch: 200,
            linger_ms: 20,
        }
    }
}

impl ServedListsConfig {
    /// Checks the bounds; `Err` names the bad setting.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=1_000_000).contains(&self.capacity) {
            return Err("server.served_lists.capacity must be in 1..=1000000".into());
        }
        if !(1..=500).contains(&self.batch) {
            return Err("server.served_lists.batch must be in 1..=500".into());
        }
        if self.linger_ms > 10_000 {
            return Err("server.served_lists.linger_ms must be at most 10000".into());
        }
        Ok(())
    }
}

/// The handle the recommendations handler publishes through (cheap to clone).
#[derive(Clone)]
pub struct ServedLists {
    tx: mpsc::Sender<Event>,
}

impl ServedLists {
    /// Starts the publishing task over `sink`; records over `max_record_bytes` are not
    /// sent (the processor would dead-letter them).
    pub fn spawn(
        sink: Arc<dyn EventSink>,
        cfg: &ServedListsConfig,
        max_record_bytes: usize,
    ) -> (ServedLists, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(cfg.capacity.max(1));
        let task = tokio::spawn(run(
            rx,
            sink,
            cfg.batch.max(1),
            Duration::from_millis(cfg.linger_ms),
            max_record_bytes,
        ));
        (ServedLists { tx }, task)
    }

    /// Queues a served list; never waits. Returns false (and counts it) when the queue is
    /// full or the task is gone.
    pub fn publish(&self, event: Event) -> bool {
        match self.tx.try_send(event) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!(m::SERVED_LISTS_DROPPED_TOTAL, "reason" => "full").increment(1);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                metrics::counter!(m::SERVED_LISTS_DROPPED_TOTAL, "reason" => "closed").increment(1);
                false
            }
        }
    }
}

async fn run(
    mut rx: mpsc::Receiver<Event>,
    sink: Arc<dyn EventSink>,
    batch: usize,
    linger: Duration,
    max_record_bytes: usize,
) {
    let mut lists = Vec::with_capacity(batch);
    while let Some(first) = rx.recv().await {
        lists.push(first);
        let deadline = tokio::time::Instant::now() + linger;
        while lists.len() < batch {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(e)) => lists.push(e),
                Ok(None) | Err(_) => break,
            }
        }
        let records: Vec<OutRecord> = lists
            .drain(..)
            .filter_map(|e| encode(e, max_record_bytes))
            .collect();
        if records.is_empty() {
            continue;
        }
        let n = records.len() as u64;
        match sink.send(records).await {
            Ok(()) => metrics::counter!(m::SERVED_LISTS_PUBLISHED_TOTAL).increment(n),
            Err(e) => {
                tracing::warn!(error = %e, lists = n, "served lists not published");
                metrics::counter!(m::SERVED_LISTS_DROPPED_TOTAL, "reason" => "sink").increment(n);
            }
        }
    }
}

/// The record of one list; a list too large for a record is sent without its feature
/// rows, and dropped (counted) when even that is too large.
fn encode(mut e: Event, max_record_bytes: usize) -> Option<OutRecord> {
    let mut data = e.to_json();
    if data.len() > max_record_bytes {
        e.items.iter_mut().for_each(|i| i.features.clear());
        data = e.to_json();
        metrics::counter!(m::SERVED_LISTS_TRIMMED_TOTAL).increment(1);
        if data.len() > max_record_bytes {
            metrics::counter!(m::SERVED_LISTS_DROPPED_TOTAL, "reason" => "too_large").increment(1);
            return None;
        }
    }
    Some(OutRecord {
        partition_key: e.user_id.to_string(),
        data: Bytes::from(data),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use recstream_ingest::sink::SinkError;
    use recstream_ingest::{ServedItem, Timestamp};
    use std::sync::Mutex;

    /// Records every send; blocks sends while `gate` is closed.
    struct Recording {
        sent: Mutex<Vec<Vec<OutRecord>>>,
        gate: tokio::sync::Semaphore,
    }

    #[async_trait::async_trait]
    impl EventSink for Recording {
        async fn send(&self, records: Vec<OutRecord>) -> Result<(), SinkError> {
            let _permit = self.gate.acquire().await.expect("gate open");
            self.sent.lock().unwrap().push(records);
            Ok(())
        }
    }

    fn list(i: usize, features: usize) -> Event {
        let items = (0..3)
            .map(|p| ServedItem {
                product_id: format!("p{p}").into(),
                position: p + 1,
                score: 1.0,
                features: vec![0.5; features],
            })
            .collect();
        Event::recommendation(
            &format!("r{i}"),
            Timestamp(1_700_000_000_000),
            &format!("u{i}"),
            "personalized",
            Some("v1"),
            items,
        )
    }

    #[tokio::test]
    async fn lists_are_batched_partitioned_by_user_and_dropped_when_the_queue_is_full() {
        let sink = Arc::new(Recording {
            sent: Mutex::new(Vec::new()),
            gate: tokio::sync::Semaphore::new(0),
        });
        let cfg = ServedListsConfig {
            capacity: 4,
            batch: 3,
            linger_ms: 5,
            ..Default::default()
        };
        let (served, task) = ServedLists::spawn(sink.clone(), &cfg, 64 * 1024);
        // The sink is stuck: the task holds one batch, the queue fills, the rest drop —
        // and publish never waits.
        let started = std::time::Instant::now();
        let accepted = (0..20).filter(|i| served.publish(list(*i, 39))).count();
        assert!(started.elapsed() < Duration::from_millis(50));
        assert!(accepted < 20, "a bounded queue drops under back-pressure");
        assert!(accepted >= 4, "{accepted}");
        sink.gate.add_permits(1000);
        drop(served);
        task.await.unwrap();
        let sent = sink.sent.lock().unwrap();
        let records: Vec<&OutRecord> = sent.iter().flatten().collect();
        assert_eq!(records.len(), accepted, "every accepted list is sent");
        assert!(sent.iter().all(|b| b.len() <= 3), "batches of at most 3");
        for r in records {
            let e = recstream_ingest::decode(&r.data).unwrap();
            assert_eq!(r.partition_key, e.user_id.as_str());
            assert_eq!(e.items[0].features.len(), 39);
        }
    }

    #[tokio::test]
    async fn a_list_over_the_record_limit_goes_without_its_features() {
        let sink = Arc::new(Recording {
            sent: Mutex::new(Vec::new()),
            gate: tokio::sync::Semaphore::new(1000),
        });
        let (served, task) = ServedLists::spawn(sink.clone(), &ServedListsConfig::default(), 1024);
        assert!(served.publish(list(1, 100)));
        drop(served);
        task.await.unwrap();
        let sent = sink.sent.lock().unwrap();
        let e = recstream_ingest::decode(&sent[0][0].data).unwrap();
        assert!(e.items.iter().all(|i| i.features.is_empty()));
        assert_eq!(e.items.len(), 3);
    }
}
