//! Customer notifications (order confirmation, shipping and delivery status, cancellation,
//! refund), written by the orders service into the outbox and delivered by the relay to a
//! [`Notifier`].
//!
//! ```text
//!  orders service ─(same transaction as the status change)─► outbox Notify(message)
//!  relay ─► Notifier::send ─┬─► FileNotifier: one JSON line per message in
//!                           │   <data_dir>/notifications.jsonl (the embedded default)
//!                           └─► (production: an email/SMS/push gateway behind the same trait)
//! ```
//!
//! Delivery is at least once; every message has a stable id (`<order id>:<template>`), and
//! the file notifier drops ids it has already written, so a relay retry after a crash does
//! not write a message twice.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

/// How a notification reaches the customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// By email (what the orders service sends).
    Email,
    /// By text message.
    Sms,
    /// By push notification.
    Push,
}

/// Which message a notification is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Template {
    /// The order was placed.
    OrderConfirmed,
    /// The order was handed to the carrier.
    OrderShipped,
    /// The order was delivered.
    OrderDelivered,
    /// The order was cancelled.
    OrderCancelled,
    /// The payment was refunded.
    OrderRefunded,
}

impl Template {
    /// The template's name, as in the notification id (`order_confirmed`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Template::OrderConfirmed => "order_confirmed",
            Template::OrderShipped => "order_shipped",
            Template::OrderDelivered => "order_delivered",
            Template::OrderCancelled => "order_cancelled",
            Template::OrderRefunded => "order_refunded",
        }
    }
}

/// One message to a customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Stable: `<order id>:<template>`.
    pub id: String,
    /// The recipient.
    pub user_id: String,
    /// The order it is about.
    pub order_id: String,
    /// How it is sent.
    pub channel: Channel,
    /// Which message it is.
    pub template: Template,
    /// Subject line.
    pub subject: String,
    /// Message text.
    pub body: String,
    /// When it was produced, epoch ms.
    pub at_ms: i64,
}

impl Notification {
    /// An email about `order_id` with the stable id `<order id>:<template>`.
    pub fn new(
        user_id: &str,
        order_id: &str,
        template: Template,
        subject: String,
        body: String,
        at_ms: i64,
    ) -> Notification {
        Notification {
            id: format!("{order_id}:{}", template.as_str()),
            user_id: user_id.to_string(),
            order_id: order_id.to_string(),
            channel: Channel::Email,
            template,
            subject,
            body,
            at_ms,
        }
    }
}

/// Why a notification was not delivered; the relay retries the row.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The notifications file could not be created or written.
    #[error("notification outbox file: {0}")]
    Io(String),
    /// The notification gateway cannot take messages now.
    #[error("notification gateway unavailable: {0}")]
    Unavailable(String),
}

/// Where notifications go: the JSON-lines file (embedded), or a gateway.
#[async_trait]
pub trait Notifier: Send + Sync + 'static {
    /// Delivers `n`; at least once, so a notifier should drop ids it has delivered.
    async fn send(&self, n: &Notification) -> Result<(), NotifyError>;
}

/// Appends messages as JSON lines to a local file a user (or a test) can read.
pub struct FileNotifier {
    path: PathBuf,
    seen: tokio::sync::Mutex<HashSet<String>>,
}

impl FileNotifier {
    /// Opens (creating the directory) and loads the ids already written.
    pub fn open(path: impl Into<PathBuf>) -> Result<FileNotifier, NotifyError> {
        let path = path.into();
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| NotifyError::Io(format!("{}: {e}", dir.display())))?;
        }
        let mut seen = HashSet::new();
        if let Ok(text) = std::fs::read_to_string(&path) {
            for line in text.lines() {
                if let Ok(n) = serde_json::from_str::<Notification>(line) {
                    seen.insert(n.id);
                }
            }
        }
        Ok(FileNotifier {
            path,
            seen: tokio::sync::Mutex::new(seen),
        })
    }

    /// The file the messages are appended to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every message in the file, oldest first.
    pub fn read_all(path: &Path) -> Vec<Notification> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

#[async_trait]
impl Notifier for FileNotifier {
    async fn send(&self, n: &Notification) -> Result<(), NotifyError> {
        let mut seen = self.seen.lock().await;
        if seen.contains(&n.id) {
            return Ok(());
        }
        let mut line = serde_json::to_vec(n).map_err(|e| NotifyError::Io(e.to_string()))?;
        line.push(b'\n');
        let mut f = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .await
            .map_err(|e| NotifyError::Io(format!("{}: {e}", self.path.display())))?;
        f.write_all(&line)
            .await
            .map_err(|e| NotifyError::Io(e.to_string()))?;
        f.sync_data()
            .await
            .map_err(|e| NotifyError::Io(e.to_string()))?;
        seen.insert(n.id.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn appends_json_lines_once_per_id_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n/notifications.jsonl");
        let n = Notification::new(
            "u1",
            "o1",
            Template::OrderConfirmed,
            "s".into(),
            "b".into(),
            1,
        );
        let f = FileNotifier::open(&path).unwrap();
        f.send(&n).await.unwrap();
        f.send(&n).await.unwrap();
        let f = FileNotifier::open(&path).unwrap();
        f.send(&n).await.unwrap();
        let mut n2 = n.clone();
        n2.template = Template::OrderShipped;
        n2.id = "o1:order_shipped".into();
        f.send(&n2).await.unwrap();
        let all = FileNotifier::read_all(&path);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0], n);
    }
}
