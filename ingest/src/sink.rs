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
    pub partition_key: String,
    pub data: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The stream is full or throttling: the client should retry later (503).
    #[error("stream is busy: {0}")]
    Busy(String),
    #[error("stream unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait EventSink: Send + Sync + 'static {
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
