//! The conformance suite every [`CommerceStore`] passes (quickwit's `storage_test_suite`
//! pattern): the embedded store in unit tests, DynamoDB in `tests/commerce_dynamodb.rs`.
//!
//! Every key starts with `prefix`, so runs against a shared table do not collide.

use std::sync::Arc;

use super::{CommerceStore, Cond, Key, StoreError, Write};

/// Runs every check; panics (test failure) with the check's name on a mismatch.
pub async fn run_all(store: &dyn CommerceStore, prefix: &str) {
    put_get_and_versions(store, prefix).await;
    conditions(store, prefix).await;
    transactions_are_all_or_nothing(store, prefix).await;
    query_order_and_paging(store, prefix).await;
    invalid_transactions(store, prefix).await;
}

/// Runs the concurrency check on a store that can be shared across tasks.
pub async fn run_concurrent(store: Arc<dyn CommerceStore>, prefix: &str) {
    concurrent_increments_lose_nothing(store, prefix).await;
}

fn k(prefix: &str, pk: &str, sk: &str) -> Key {
    Key::new(format!("{prefix}{pk}"), sk)
}

async fn put_get_and_versions(store: &dyn CommerceStore, p: &str) {
    let key = k(p, "pg", "a");
    assert!(
        store.get(&key).await.unwrap().is_none(),
        "get of a missing key"
    );
    store
        .transact(vec![Write::put(key.clone(), b"one".to_vec(), Cond::Absent)])
        .await
        .unwrap();
    let item = store.get(&key).await.unwrap().expect("put then get");
    assert_eq!((item.value.as_slice(), item.version), (&b"one"[..], 1));
    store
        .transact(vec![Write::put(key.clone(), b"two".to_vec(), Cond::Any)])
        .await
        .unwrap();
    let item = store.get(&key).await.unwrap().unwrap();
    assert_eq!(
        (item.value.as_slice(), item.version),
        (&b"two"[..], 2),
        "put bumps the version"
    );
    // Empty and binary values round-trip.
    let bin: Vec<u8> = (0..=255).collect();
    store
        .transact(vec![
            Write::put(k(p, "pg", "bin"), bin.clone(), Cond::Any),
            Write::put(k(p, "pg", "empty"), Vec::new(), Cond::Any),
        ])
        .await
        .unwrap();
    assert_eq!(
        store.get(&k(p, "pg", "bin")).await.unwrap().unwrap().value,
        bin
    );
    assert!(
        store
            .get(&k(p, "pg", "empty"))
            .await
            .unwrap()
            .unwrap()
            .value
            .is_empty()
    );
    store
        .transact(vec![Write::delete(key.clone(), Cond::Version(2))])
        .await
        .unwrap();
    assert!(store.get(&key).await.unwrap().is_none(), "delete");
    // Deleting a missing item with Cond::Any is a no-op, not an error.
    store
        .transact(vec![Write::delete(key.clone(), Cond::Any)])
        .await
        .unwrap();
    // A re-created item starts again at version 1.
    store
        .transact(vec![Write::put(
            key.clone(),
            b"again".to_vec(),
            Cond::Absent,
        )])
        .await
        .unwrap();
    assert_eq!(
        store.get(&key).await.unwrap().unwrap().version,
        1,
        "re-created"
    );
}

fn is_conflict(r: Result<(), StoreError>) -> bool {
    matches!(r, Err(StoreError::Conflict { .. }))
}

async fn conditions(store: &dyn CommerceStore, p: &str) {
    let key = k(p, "cond", "a");
    store
        .transact(vec![Write::put(key.clone(), b"1".to_vec(), Cond::Absent)])
        .await
        .unwrap();
    assert!(
        is_conflict(
            store
                .transact(vec![Write::put(key.clone(), b"x".to_vec(), Cond::Absent)])
                .await
        ),
        "Absent on an existing item"
    );
    assert!(
        is_conflict(
            store
                .transact(vec![Write::put(
                    key.clone(),
                    b"x".to_vec(),
                    Cond::Version(7)
                )])
                .await
        ),
        "wrong version"
    );
    assert!(
        is_conflict(
            store
                .transact(vec![Write::put(
                    k(p, "cond", "missing"),
                    b"x".to_vec(),
                    Cond::Version(1)
                )])
                .await
        ),
        "Version on a missing item"
    );
    assert!(
        is_conflict(
            store
                .transact(vec![Write::delete(key.clone(), Cond::Version(9))])
                .await
        ),
        "delete with a wrong version"
    );
    assert!(
        is_conflict(
            store
                .transact(vec![Write::Check {
                    key: k(p, "cond", "missing"),
                    cond: Cond::Version(1),
                }])
                .await
        ),
        "check of a missing item"
    );
    store
        .transact(vec![Write::put(
            key.clone(),
            b"2".to_vec(),
            Cond::Version(1),
        )])
        .await
        .unwrap();
    assert_eq!(store.get(&key).await.unwrap().unwrap().value, b"2");
}

async fn transactions_are_all_or_nothing(store: &dyn CommerceStore, p: &str) {
    let a = k(p, "tx", "a");
    let b = k(p, "tx", "b");
    let guard = k(p, "tx", "guard");
    store
        .transact(vec![Write::put(guard.clone(), b"g".to_vec(), Cond::Absent)])
        .await
        .unwrap();
    // The last write's condition fails: the first two must not be applied.
    let r = store
        .transact(vec![
            Write::put(a.clone(), b"a".to_vec(), Cond::Absent),
            Write::put(b.clone(), b"b".to_vec(), Cond::Any),
            Write::Check {
                key: guard.clone(),
                cond: Cond::Version(5),
            },
        ])
        .await;
    match r {
        Err(StoreError::Conflict { index }) => {
            assert!(
                index.is_none() || index == Some(2),
                "conflict index {index:?}"
            )
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(store.get(&a).await.unwrap().is_none(), "partial write a");
    assert!(store.get(&b).await.unwrap().is_none(), "partial write b");
    // With the right condition, all three apply together.
    store
        .transact(vec![
            Write::put(a.clone(), b"a".to_vec(), Cond::Absent),
            Write::put(b.clone(), b"b".to_vec(), Cond::Any),
            Write::Check {
                key: guard.clone(),
                cond: Cond::Version(1),
            },
            Write::delete(k(p, "tx", "nothing"), Cond::Any),
        ])
        .await
        .unwrap();
    assert!(store.get(&a).await.unwrap().is_some());
    assert!(store.get(&b).await.unwrap().is_some());
    assert_eq!(
        store.get(&guard).await.unwrap().unwrap().version,
        1,
        "check writes nothing"
    );
}

async fn query_order_and_paging(store: &dyn CommerceStore, p: &str) {
    let pk = format!("{p}q");
    let writes: Vec<Write> = (0..30)
        .rev()
        .map(|i| {
            Write::put(
                Key::new(pk.clone(), format!("{i:04}")),
                vec![i as u8],
                Cond::Any,
            )
        })
        .collect();
    store.transact(writes).await.unwrap();
    // A neighbouring partition must not leak into the results.
    store
        .transact(vec![Write::put(
            Key::new(format!("{pk}x"), "0000"),
            b"other".to_vec(),
            Cond::Any,
        )])
        .await
        .unwrap();
    let page = store.query(&pk, None, 10).await.unwrap();
    let keys: Vec<&str> = page.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        (0..10).map(|i| format!("{i:04}")).collect::<Vec<_>>(),
        "first page"
    );
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.query(&pk, after.as_deref(), 7).await.unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|(k, _)| k.clone());
        all.extend(page.into_iter().map(|(k, item)| (k, item.value)));
    }
    assert_eq!(all.len(), 30, "paging sees every item once");
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "ascending");
    assert_eq!(all[29].1, vec![29u8]);
    assert!(
        store
            .query(&format!("{p}none"), None, 5)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.query(&pk, Some("0028"), 5).await.unwrap().len(), 1);
}

async fn invalid_transactions(store: &dyn CommerceStore, p: &str) {
    let a = k(p, "inv", "a");
    let dup = store
        .transact(vec![
            Write::put(a.clone(), b"1".to_vec(), Cond::Any),
            Write::put(a.clone(), b"2".to_vec(), Cond::Any),
        ])
        .await;
    assert!(
        matches!(dup, Err(StoreError::Invalid(_))),
        "same key twice: {dup:?}"
    );
    let many: Vec<Write> = (0..=super::MAX_WRITES)
        .map(|i| Write::put(k(p, "inv", &format!("{i}")), vec![], Cond::Any))
        .collect();
    assert!(matches!(
        store.transact(many).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.transact(vec![]).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(store.get(&a).await.unwrap().is_none());
}

async fn concurrent_increments_lose_nothing(store: Arc<dyn CommerceStore>, p: &str) {
    let key = k(p, "conc", "counter");
    store
        .transact(vec![Write::put(key.clone(), b"0".to_vec(), Cond::Absent)])
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                loop {
                    let item = store.get(&key).await.unwrap().unwrap();
                    let n: u64 = std::str::from_utf8(&item.value).unwrap().parse().unwrap();
                    let next = (n + 1).to_string().into_bytes();
                    match store
                        .transact(vec![Write::put(
                            key.clone(),
                            next,
                            Cond::Version(item.version),
                        )])
                        .await
                    {
                        Ok(()) => break,
                        Err(e) if e.retriable() => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let item = store.get(&key).await.unwrap().unwrap();
    assert_eq!(item.value, b"40", "optimistic increments");
    assert_eq!(item.version, 41);
}
