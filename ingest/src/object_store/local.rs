//! A directory standing in for an S3 bucket: keys are relative paths, writes go to a
//! temporary file that is fsynced and renamed into place.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::ObjectStore;
use crate::error::IngestError;

/// An [`ObjectStore`] over a local directory: keys are relative paths under `root`.
/// Used by the embedded mode and by tests.
#[derive(Debug, Clone)]
pub struct LocalObjectStore {
    root: PathBuf,
}

impl LocalObjectStore {
    /// A store whose keys are paths under `root`.
    pub fn new(root: impl Into<PathBuf>) -> LocalObjectStore {
        LocalObjectStore { root: root.into() }
    }

    /// The directory the keys live under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, IngestError> {
        let bad = key.is_empty()
            || key.starts_with('/')
            || key
                .split('/')
                .any(|part| part.is_empty() || part == "." || part == "..");
        if bad {
            return Err(IngestError::ObjectStore(format!(
                "invalid object key `{key}`"
            )));
        }
        Ok(self.root.join(key))
    }
}

fn put_sync(path: &Path, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().expect("object paths have a parent");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("object"),
        std::process::id()
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn list_sync(root: &Path, prefix: &str) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    // Walk from the deepest directory the prefix names, then filter by the full prefix.
    let base = match prefix.rfind('/') {
        Some(i) => root.join(&prefix[..i]),
        None => root.to_path_buf(),
    };
    let mut stack = vec![base];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(root) {
                let key = rel.to_string_lossy().replace('\\', "/");
                if key.starts_with(prefix) {
                    out.push(key);
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

#[async_trait]
impl ObjectStore for LocalObjectStore {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), IngestError> {
        let path = self.path_of(key)?;
        let shown = path.display().to_string();
        tokio::task::spawn_blocking(move || put_sync(&path, &body))
            .await
            .map_err(|e| IngestError::ObjectStore(e.to_string()))?
            .map_err(|e| IngestError::io(shown, e))
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, IngestError> {
        let path = self.path_of(key)?;
        match tokio::fs::read(&path).await {
            Ok(b) => Ok(Some(Bytes::from(b))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(IngestError::io(path.display().to_string(), e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, IngestError> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || list_sync(&root, &prefix))
            .await
            .map_err(|e| IngestError::ObjectStore(e.to_string()))?
            .map_err(|e| IngestError::io(self.root.display().to_string(), e))
    }

    async fn delete(&self, key: &str) -> Result<(), IngestError> {
        let path = self.path_of(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(IngestError::io(path.display().to_string(), e)),
        }
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalObjectStore::new(dir.path());
        store
            .put(
                "events/dt=2019-10-01/hour=00/a.parquet",
                Bytes::from_static(b"a"),
            )
            .await
            .unwrap();
        store
            .put(
                "events/dt=2019-10-01/hour=01/b.parquet",
                Bytes::from_static(b"b"),
            )
            .await
            .unwrap();
        store
            .put("dead-letter/x.jsonl", Bytes::from_static(b"x"))
            .await
            .unwrap();
        assert_eq!(
            store.list("events/").await.unwrap(),
            vec![
                "events/dt=2019-10-01/hour=00/a.parquet",
                "events/dt=2019-10-01/hour=01/b.parquet"
            ]
        );
        assert_eq!(
            store.get("dead-letter/x.jsonl").await.unwrap().unwrap(),
            "x"
        );
        store.delete("dead-letter/x.jsonl").await.unwrap();
        assert!(store.get("dead-letter/x.jsonl").await.unwrap().is_none());
        assert!(store.put("../escape", Bytes::new()).await.is_err());
    }
}
