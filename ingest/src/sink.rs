//! The event sink seam: where producers of clickstream records (`POST /v1/events` in
//! serving, the commerce flows) put them, whatever stream is behind it.
//!
//! ```text
//!  POST /v1/events (serving) ─┐
//!  commerce outbox relay ─────┴─► EventSink::send ─┬─► in-process channel (embedded): ChannelSender
//!                                                  └─► Kinesis PutRecords, partition key = user id (AWS)
//! ```

use async_trait::async_trait;
use bytes::Bytes;

/// One validated record for the stream.
#[derive(Debug, Clone)]
pub struct OutRecord {
    /// The key that selects the shard; the user id, so that one user's events stay in order.
    pub partition_key: String,
    /// The encoded event (JSON).
    pub data: Bytes,
}

/// Why an [`EventSink`] did not accept records.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The stream is full or throttling: the client should retry later (503).
    #[error("stream is busy: {0}")]
    Busy(String),
    /// The stream cannot take the records for a reason other than load (it is gone, or a
    /// call failed after its retries): the client gets a 503.
    #[error("stream unavailable: {0}")]
    Unavailable(String),
}

/// Where producers put clickstream records: the in-process channel (embedded mode) or
/// Kinesis.
#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    /// Sends `records`; returns once every one was accepted, or the first error. Records
    /// sent before an error may still reach the stream (at-least-once).
    async fn send(&self, records: Vec<OutRecord>) -> Result<(), SinkError>;
}

#[async_trait]
impl EventSink for crate::source::channel::ChannelSender {
    async fn send(&self, records: Vec<OutRecord>) -> Result<(), SinkError> {
        for r in records {
            self.try_send(r.data)
                .map_err(|e| SinkError::Busy(e.to_string()))?;
        }
        Ok(())
    }
}
