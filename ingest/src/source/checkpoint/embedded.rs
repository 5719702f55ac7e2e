//! The embedded checkpoint store: table `checkpoints` (shard → JSON [`ShardCheckpoint`])
//! in a redb database on local disk — its own file, or the embedded feature store's file
//! shared through [`EmbeddedCheckpoints::with_database`].

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, TableDefinition};

use super::CheckpointStore;
use crate::error::IngestError;
use crate::record::{ShardCheckpoint, ShardId};

const CHECKPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("checkpoints");

/// Checkpoints in a redb database (durable, crash-safe).
#[derive(Clone)]
pub struct EmbeddedCheckpoints {
    db: Arc<Database>,
}

impl std::fmt::Debug for EmbeddedCheckpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedCheckpoints")
            .finish_non_exhaustive()
    }
}

fn db_error(e: impl std::fmt::Display) -> IngestError {
    IngestError::Checkpoint(e.to_string())
}

impl EmbeddedCheckpoints {
    /// Opens (or creates) a database of its own at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<EmbeddedCheckpoints, IngestError> {
        let path = path.as_ref();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| IngestError::io(dir.display().to_string(), e))?;
        }
        let db = Database::create(path).map_err(db_error)?;
        EmbeddedCheckpoints::with_database(Arc::new(db))
    }

    /// Keeps the checkpoints in an already open database (redb allows one handle per
    /// file, so a process that keeps its features in redb shares that handle).
    pub fn with_database(db: Arc<Database>) -> Result<EmbeddedCheckpoints, IngestError> {
        let w = db.begin_write().map_err(db_error)?;
        w.open_table(CHECKPOINTS).map_err(db_error)?;
        w.commit().map_err(db_error)?;
        Ok(EmbeddedCheckpoints { db })
    }
}

#[async_trait]
impl CheckpointStore for EmbeddedCheckpoints {
    async fn load_checkpoint(
        &self,
        shard: &ShardId,
    ) -> Result<Option<ShardCheckpoint>, IngestError> {
        let r = self.db.begin_read().map_err(db_error)?;
        let t = r.open_table(CHECKPOINTS).map_err(db_error)?;
        match t.get(shard.as_str()).map_err(db_error)? {
            Some(v) => serde_json::from_slice(v.value()).map(Some).map_err(|e| {
                IngestError::Checkpoint(format!("corrupt checkpoint of {shard}: {e}"))
            }),
            None => Ok(None),
        }
    }

    async fn save_checkpoint(
        &self,
        shard: &ShardId,
        cp: &ShardCheckpoint,
    ) -> Result<(), IngestError> {
        let db = self.db.clone();
        let key = shard.to_string();
        let value = serde_json::to_vec(cp).map_err(db_error)?;
        // A redb commit fsyncs: off the async threads.
        tokio::task::spawn_blocking(move || {
            let w = db.begin_write().map_err(db_error)?;
            w.open_table(CHECKPOINTS)
                .map_err(db_error)?
                .insert(key.as_str(), value.as_slice())
                .map_err(db_error)?;
            w.commit().map_err(db_error)
        })
        .await
        .map_err(|e| IngestError::Checkpoint(format!("checkpoint task failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::SeqNo;

    #[tokio::test]
    async fn saves_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.redb");
        let shard = ShardId::new("shard-1");
        let cp = ShardCheckpoint {
            committed: SeqNo::parse("42"),
            pending_end: None,
            snapshot: Some("state/shard-1/42.bin".into()),
            finished: false,
        };
        {
            let store = EmbeddedCheckpoints::open(&path).unwrap();
            assert_eq!(store.load_checkpoint(&shard).await.unwrap(), None);
            store.save_checkpoint(&shard, &cp).await.unwrap();
        }
        let store = EmbeddedCheckpoints::open(&path).unwrap();
        assert_eq!(store.load_checkpoint(&shard).await.unwrap(), Some(cp));
        assert_eq!(
            store.load_checkpoint(&ShardId::new("other")).await.unwrap(),
            None
        );
    }
}
