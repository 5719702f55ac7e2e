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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Email,
    Sms,
    Push,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Template {
    OrderConfirmed,
    OrderShipped,
    OrderDelivered,
    OrderCancelled,
    OrderRefunded,
}

impl Template {
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Stable: `<order id>:<template>`.
    pub id: String,
    pub user_id: String,
    pub order_id: String,
    pub channel: Channel,
    pub template: Template,
    pub subject: String,
    pub body: String,
    pub at_ms: i64,
}

impl Notification {
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

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("notification outbox file: {0}")]
    Io(String),
    #[error("notification gateway unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Notifier: Send + Sync + 'static {
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
