//! The embedded commerce store: one redb database file (durable, ACID, crash-safe).
//!
//! | table | key | value |
//! |---|---|---|
//! | `commerce_items` | (pk, sk) | version (u64 LE) · expires_at_s (i64 LE, 0 = never) · bytes |
//! | `commerce_expiry` | (expires_at_s, pk, sk) | — (index for [`CommerceStore::purge_expired`]) |
//!
//! `transact` goes to one writer thread that applies queued transactions in order inside
//! a single redb write transaction and commits them together (group commit, one fsync,
//! `Durability::Immediate`). Each transaction's conditions are checked against the state
//! left by the ones before it, all before any of its writes, so each is still
//! all-or-nothing and they never interleave; a failed condition rejects only its own
//! transaction.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use super::{CommerceStore, Cond, Item, Key, StoreError, Write, validate_writes};

const ITEMS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("commerce_items");
const EXPIRY: TableDefinition<(i64, &str, &str), u8> = TableDefinition::new("commerce_expiry");
const HEADER: usize = 16;

/// Most transactions committed together.
const GROUP: usize = 128;

struct Job {
    writes: Vec<Write>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// The [`CommerceStore`] of the embedded mode: a redb database with one writer thread
/// that commits transactions (several together when they queue up).
pub struct EmbeddedStore {
    db: Arc<Database>,
    jobs: Option<mpsc::Sender<Job>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // Closing the queue ends the writer after its last group; joining it releases the
        // database file, so it can be opened again right away.
        self.jobs.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Embedded(e.to_string())
}

fn encode(version: u64, expires_at_s: i64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + value.len());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&expires_at_s.to_le_bytes());
    out.extend_from_slice(value);
    out
}

fn decode(raw: &[u8]) -> Result<(u64, i64, &[u8]), StoreError> {
    if raw.len() < HEADER {
        return Err(StoreError::Corrupt {
            what: "embedded item",
            message: format!("{} bytes, shorter than the header", raw.len()),
        });
    }
    let version = u64::from_le_bytes(raw[..8].try_into().unwrap_or_default());
    let expires = i64::from_le_bytes(raw[8..16].try_into().unwrap_or_default());
    Ok((version, expires, &raw[HEADER..]))
}

fn check(cond: Cond, current: Option<u64>) -> bool {
    match (cond, current) {
        (Cond::Any, _) => true,
        (Cond::Absent, None) => true,
        (Cond::Absent, Some(_)) => false,
        (Cond::Version(v), Some(c)) => v == c,
        (Cond::Version(_), None) => false,
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the database file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<EmbeddedStore, StoreError> {
        let path = path.as_ref();
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| db_err(format!("{}: {e}", dir.display())))?;
        }
        let db = Database::create(path).map_err(|e| db_err(format!("{}: {e}", path.display())))?;
        let w = db.begin_write().map_err(db_err)?;
        w.open_table(ITEMS).map_err(db_err)?;
        w.open_table(EXPIRY).map_err(db_err)?;
        w.commit().map_err(db_err)?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel(1024);
        let wdb = db.clone();
        let writer = std::thread::Builder::new()
            .name("commerce-redb-writer".into())
            .spawn(move || writer_loop(&wdb, rx))
            .map_err(|e| db_err(format!("writer thread: {e}")))?;
        Ok(EmbeddedStore {
            db,
            jobs: Some(tx),
            writer: Some(writer),
        })
    }

    /// Checks `writes`' conditions, then applies them; a failed condition applies nothing.
    fn apply(
        items: &mut redb::Table<(&str, &str), &[u8]>,
        expiry: &mut redb::Table<(i64, &str, &str), u8>,
        writes: &[Write],
    ) -> Result<(), StoreError> {
        {
            let mut current = Vec::with_capacity(writes.len());
            for (i, wr) in writes.iter().enumerate() {
                let k = wr.key();
                let cur = match items.get((k.pk.as_str(), k.sk.as_str())).map_err(db_err)? {
                    Some(v) => {
                        let (ver, exp, _) = decode(v.value())?;
                        Some((ver, exp))
                    }
                    None => None,
                };
                let cond = match wr {
                    Write::Put { cond, .. }
                    | Write::Delete { cond, .. }
                    | Write::Check { cond, .. } => *cond,
                };
                if !check(cond, cur.map(|c| c.0)) {
                    return Err(StoreError::Conflict { index: Some(i) });
                }
                current.push(cur);
            }
            for (wr, cur) in writes.iter().zip(current) {
                let k = wr.key();
                let key = (k.pk.as_str(), k.sk.as_str());
                if let Some((_, old_exp)) = cur
                    && old_exp != 0
                    && !matches!(wr, Write::Check { .. })
                {
                    expiry.remove((old_exp, key.0, key.1)).map_err(db_err)?;
                }
                match wr {
                    Write::Put {
                        value,
                        expires_at_s,
                        ..
                    } => {
                        let version = cur.map(|c| c.0).unwrap_or(0) + 1;
                        let exp = expires_at_s.unwrap_or(0);
                        items
                            .insert(key, encode(version, exp, value).as_slice())
                            .map_err(db_err)?;
                        if exp != 0 {
                            expiry.insert((exp, key.0, key.1), 0u8).map_err(db_err)?;
                        }
                    }
                    Write::Delete { .. } => {
                        items.remove(key).map_err(db_err)?;
                    }
                    Write::Check { .. } => {}
                }
            }
        }
        Ok(())
    }

    fn purge_sync(db: &Database, now_s: i64) -> Result<usize, StoreError> {
        let w = db.begin_write().map_err(db_err)?;
        let mut n = 0;
        {
            let mut items = w.open_table(ITEMS).map_err(db_err)?;
            let mut expiry = w.open_table(EXPIRY).map_err(db_err)?;
            let due: Vec<(i64, String, String)> = expiry
                .range((i64::MIN, "", "")..(now_s, "", ""))
                .map_err(db_err)?
                .take(10_000)
                .map(|r| {
                    r.map(|(k, _)| {
                        let (e, pk, sk) = k.value();
                        (e, pk.to_string(), sk.to_string())
                    })
                })
                .collect::<Result<_, _>>()
                .map_err(db_err)?;
            for (exp, pk, sk) in due {
                expiry
                    .remove((exp, pk.as_str(), sk.as_str()))
                    .map_err(db_err)?;
                let still = match items.get((pk.as_str(), sk.as_str())).map_err(db_err)? {
                    Some(v) => decode(v.value())?.1 == exp,
                    None => false,
                };
                if still {
                    items.remove((pk.as_str(), sk.as_str())).map_err(db_err)?;
                    n += 1;
                }
            }
        }
        w.commit().map_err(db_err)?;
        Ok(n)
    }
}

/// The writer thread: takes what is queued (up to [`GROUP`]), applies it in order in one
/// redb write transaction, commits once, answers each.
fn writer_loop(db: &Database, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < GROUP {
            match rx.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        match commit_group(db, &group) {
            Ok(results) => {
                for (job, r) in group.into_iter().zip(results) {
                    let _ = job.done.send(r);
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for job in group {
                    let _ = job.done.send(Err(StoreError::Embedded(msg.clone())));
                }
            }
        }
    }
}

/// `Ok(per-transaction results)` once committed; `Err` if nothing was committed.
fn commit_group(db: &Database, group: &[Job]) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let w = db.begin_write().map_err(db_err)?;
    let mut results = Vec::with_capacity(group.len());
    {
        let mut items = w.open_table(ITEMS).map_err(db_err)?;
        let mut expiry = w.open_table(EXPIRY).map_err(db_err)?;
        for job in group {
            match EmbeddedStore::apply(&mut items, &mut expiry, &job.writes) {
                Ok(()) => results.push(Ok(())),
                Err(e @ StoreError::Conflict { .. }) => results.push(Err(e)),
                // A storage error mid-way may leave this transaction half applied: abort all.
                Err(e) => return Err(e),
            }
        }
    }
    w.commit().map_err(db_err)?;
    Ok(results)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Embedded(format!("store task failed: {e}")))?
}

#[async_trait]
impl CommerceStore for EmbeddedStore {
    fn name(&self) -> &'static str {
        "embedded"
    }

    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        let r = self.db.begin_read().map_err(db_err)?;
        let t = r.open_table(ITEMS).map_err(db_err)?;
        match t.get((key.pk.as_str(), key.sk.as_str())).map_err(db_err)? {
            Some(v) => {
                let (version, _, value) = decode(v.value())?;
                Ok(Some(Item {
                    value: value.to_vec(),
                    version,
                }))
            }
            None => Ok(None),
        }
    }

    async fn query(
        &self,
        pk: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Item)>, StoreError> {
        let r = self.db.begin_read().map_err(db_err)?;
        let t = r.open_table(ITEMS).map_err(db_err)?;
        let lower = match after {
            Some(a) => Bound::Excluded((pk, a)),
            None => Bound::Included((pk, "")),
        };
        let mut out = Vec::new();
        for row in t
            .range::<(&str, &str)>((lower, Bound::Unbounded))
            .map_err(db_err)?
        {
            if out.len() >= limit {
                break;
            }
            let (k, v) = row.map_err(db_err)?;
            let (kpk, ksk) = k.value();
            if kpk != pk {
                break;
            }
            let (version, _, value) = decode(v.value())?;
            out.push((
                ksk.to_string(),
                Item {
                    value: value.to_vec(),
                    version,
                },
            ));
        }
        Ok(out)
    }

    async fn transact(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        validate_writes(&writes)?;
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| StoreError::Embedded("store is closed".into()))?;
        let (done, rx) = oneshot::channel();
        jobs.send(Job { writes, done })
            .await
            .map_err(|_| StoreError::Embedded("writer thread stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Embedded("writer thread stopped".into()))?
    }

    async fn purge_expired(&self, now_s: i64) -> Result<usize, StoreError> {
        let db = self.db.clone();
        blocking(move || EmbeddedStore::purge_sync(&db, now_s)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn embedded_store_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path().join("c.redb")).unwrap();
        super::super::conformance::run_all(&store, "t").await;
        super::super::conformance::run_concurrent(Arc::new(store), "t").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grouped_transactions_stay_independent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path().join("c.redb")).unwrap());
        // 64 concurrent creations of one key: exactly one wins, whatever the grouping.
        let mut tasks = Vec::new();
        for i in 0..64u8 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.transact(vec![
                    Write::put(Key::new("g", "one"), vec![i], Cond::Absent),
                    Write::put(Key::new("g", format!("mine-{i}")), vec![i], Cond::Absent),
                ])
                .await
                .is_ok()
            }));
        }
        let mut wins = 0;
        for t in tasks {
            wins += usize::from(t.await.unwrap());
        }
        assert_eq!(wins, 1);
        // The losers wrote nothing at all.
        assert_eq!(store.query("g", None, 100).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.redb");
        {
            let store = EmbeddedStore::open(&path).unwrap();
            store
                .transact(vec![Write::put(
                    Key::new("a", "b"),
                    b"v".to_vec(),
                    Cond::Absent,
                )])
                .await
                .unwrap();
        }
        let store = EmbeddedStore::open(&path).unwrap();
        let item = store.get(&Key::new("a", "b")).await.unwrap().unwrap();
        assert_eq!(item.value, b"v");
        assert_eq!(item.version, 1);
    }

    #[tokio::test]
    async fn purge_drops_only_expired_items() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path().join("c.redb")).unwrap();
        let put = |sk: &str, exp: Option<i64>| Write::Put {
            key: Key::new("p", sk),
            value: b"x".to_vec(),
            cond: Cond::Any,
            expires_at_s: exp,
        };
        store
            .transact(vec![
                put("old", Some(100)),
                put("new", Some(300)),
                put("never", None),
            ])
            .await
            .unwrap();
        // Re-put "old" with a later expiry: the stale index entry must not drop it.
        store.transact(vec![put("old", Some(500))]).await.unwrap();
        assert_eq!(store.purge_expired(400).await.unwrap(), 1);
        let left: Vec<String> = store
            .query("p", None, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(left, vec!["never", "old"]);
    }
}
