//! The object store conformance suite: one test run against every [`ObjectStore`]
//! implementation (the local directory in unit tests, S3 on the emulator in
//! `tests/conformance_object_store.rs`), so both keep the same contract.
//!
//! ```text
//!  run_object_store_suite(&LocalObjectStore) ─┐
//!  run_object_store_suite(&S3ObjectStore)   ──┴─► missing, round trip, overwrite, binary,
//!                                                  prefixes, large (multipart), delete, bad keys
//! ```
//!
//! The store must be empty when the suite starts (a fresh directory, bucket or prefix).
//! The suite panics with a message naming the store on the first broken expectation.

use bytes::Bytes;

use super::ObjectStore;

/// Size of the large object: more than two S3 parts of 8 MiB, so multipart is exercised
/// with a short last part.
const LARGE_BYTES: usize = 2 * 8 * 1024 * 1024 + 1_234_567;

/// Runs every check of the object store contract against `store` (which must be empty).
pub async fn run_object_store_suite(store: &dyn ObjectStore) {
    let name = store.describe();
    assert!(!name.is_empty(), "describe() must name the store");

    // Missing objects and empty listings.
    assert_eq!(
        get(store, "events/missing.parquet").await,
        None,
        "{name}: missing object"
    );
    assert!(
        store.list("").await.expect("list").is_empty(),
        "{name}: the suite needs an empty store"
    );
    assert!(
        store.list("events/").await.expect("list").is_empty(),
        "{name}: empty prefix"
    );

    // Round trip, empty body, binary body.
    let a = "events/dt=2019-10-01/hour=00/shardId-000000000000-1-9.parquet";
    let b = "events/dt=2019-10-01/hour=01/shardId-000000000001-3-7.parquet";
    let c = "events/dt=2019-10-02/hour=00/shardId-000000000000-10-12.parquet";
    let dl = "dead-letter/dt=2019-10-01/shardId-000000000000-5.jsonl";
    put(store, a, Bytes::from_static(b"PAR1 first")).await;
    assert_eq!(
        get(store, a).await.as_deref(),
        Some(&b"PAR1 first"[..]),
        "{name}: round trip"
    );
    put(store, dl, Bytes::new()).await;
    assert_eq!(
        get(store, dl).await.as_deref(),
        Some(&b""[..]),
        "{name}: empty object"
    );
    let binary: Bytes = (0..=255u8).cycle().take(70_000).collect::<Vec<u8>>().into();
    put(store, b, binary.clone()).await;
    assert_eq!(
        get(store, b).await,
        Some(binary),
        "{name}: binary round trip"
    );

    // Overwrite replaces, never appends (deterministic names make replays overwrite).
    put(store, a, Bytes::from_static(b"PAR1 second")).await;
    assert_eq!(
        get(store, a).await.as_deref(),
        Some(&b"PAR1 second"[..]),
        "{name}: overwrite"
    );

    // Listing: sorted, by prefix, including prefixes that end inside a path segment.
    put(store, c, Bytes::from_static(b"c")).await;
    let all = store.list("").await.expect("list");
    assert_eq!(
        all,
        vec![dl.to_string(), a.into(), b.into(), c.into()],
        "{name}: list all"
    );
    assert_eq!(
        store.list("events/").await.expect("list"),
        vec![a.to_string(), b.into(), c.into()],
        "{name}: list by directory prefix"
    );
    assert_eq!(
        store.list("events/dt=2019-10-01/").await.expect("list"),
        vec![a.to_string(), b.into()],
        "{name}: list one partition"
    );
    assert_eq!(
        store.list("events/dt=2019-10-0").await.expect("list"),
        vec![a.to_string(), b.into(), c.into()],
        "{name}: list by a prefix ending mid-segment"
    );
    assert_eq!(
        store
            .list("events/dt=2019-10-01/hour=01/shard")
            .await
            .expect("list"),
        vec![b.to_string()],
        "{name}: list by a file-name prefix"
    );
    assert!(
        store.list("models/").await.expect("list").is_empty(),
        "{name}: unused prefix"
    );

    // A large object (multipart on S3) comes back byte for byte.
    let large_key = "models/v1/large.bin";
    let large: Bytes = (0..LARGE_BYTES)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect::<Vec<u8>>()
        .into();
    put(store, large_key, large.clone()).await;
    let back = get(store, large_key).await.expect("large object present");
    assert_eq!(back.len(), large.len(), "{name}: large object length");
    assert!(back == large, "{name}: large object content");

    // Delete, and deleting what is not there.
    store.delete(dl).await.expect("delete");
    assert_eq!(get(store, dl).await, None, "{name}: deleted object");
    store
        .delete("dead-letter/never-written")
        .await
        .unwrap_or_else(|e| panic!("{name}: deleting a missing object must succeed: {e}"));
    store.delete(large_key).await.expect("delete");
    assert_eq!(
        store.list("").await.expect("list"),
        vec![a.to_string(), b.into(), c.into()],
        "{name}: list after delete"
    );

    // Keys that could escape the root or are ambiguous are refused by every store.
    for bad in [
        "",
        "/absolute",
        "a//b",
        "../escape",
        "a/../b",
        "a/./b",
        "trailing/",
    ] {
        assert!(
            store.put(bad, Bytes::from_static(b"x")).await.is_err(),
            "{name}: put({bad:?}) must be refused"
        );
        assert!(
            store.get(bad).await.is_err(),
            "{name}: get({bad:?}) must be refused"
        );
    }

    for k in [a, b, c] {
        store.delete(k).await.expect("cleanup");
    }
    assert!(
        store.list("").await.expect("list").is_empty(),
        "{name}: empty at the end"
    );
}

async fn put(store: &dyn ObjectStore, key: &str, body: Bytes) {
    store
        .put(key, body)
        .await
        .unwrap_or_else(|e| panic!("{}: put {key}: {e}", store.describe()));
}

async fn get(store: &dyn ObjectStore, key: &str) -> Option<Bytes> {
    store
        .get(key)
        .await
        .unwrap_or_else(|e| panic!("{}: get {key}: {e}", store.describe()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object_store::LocalObjectStore;

    #[tokio::test]
    async fn local_store_conforms() {
        let dir = tempfile::tempdir().unwrap();
        run_object_store_suite(&LocalObjectStore::new(dir.path().join("store"))).await;
    }
}
