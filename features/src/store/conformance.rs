//! The feature store conformance suite: one test run against every [`FeatureStore`]
//! implementation (redb in unit tests, DynamoDB on the emulator in
//! `tests/conformance_feature_store.rs`), so both keep the same contract.
//!
//! ```text
//!  run_feature_store_suite(&EmbeddedStore)      ─┐
//!  run_feature_store_suite(&DynamoFeatureStore) ─┴─► empty reads, two shards' partials
//!        merged on read (products, trending, category tops), user round trip,
//!        idempotent rewrite, absolute overwrite, scan
//! ```
//!
//! The store must be empty when the suite starts, and built with the same
//! [`FeatureConfig`] as passed here (half-lives and list caps decide the merges). The
//! suite reads through the handle that wrote, so it relies on read-your-writes within one
//! store value (both stores give it; other readers may lag by their cache TTL).

use std::collections::BTreeMap;
use std::sync::Arc;

use recstream_ingest::ShardId;

use super::{FeatureStore, StateStore};
use crate::aggregate::{Aggregator, FlushBatch, StateDelta};
use crate::config::FeatureConfig;
use crate::decay::Decayed;
use crate::view::{
    CartLine, EventCounts, ProductFeatures, RecentItem, TopList, UserFeatures, Weighted,
};

/// Users written by the suite besides the three hand-made ones: enough for several
/// BatchWriteItem chunks.
const BULK_USERS: usize = 57;
const T0: i64 = 1_569_888_000_000; // 2019-10-01T00:00:00Z

/// Runs every check of the feature store contract against `store` (which must be empty).
pub async fn run_feature_store_suite(store: &dyn FeatureStore, cfg: &FeatureConfig) {
    let s0 = ShardId::new("shardId-000000000000");
    let s1 = ShardId::new("shardId-000000000001");

    // An empty store answers, with nothing.
    assert_eq!(
        store.user("nobody").await.expect("user"),
        None,
        "missing user"
    );
    assert_eq!(
        store.products(&["nothing"]).await.expect("products"),
        vec![None]
    );
    assert!(store.products(&[]).await.expect("products").is_empty());
    assert!(
        store.trending().await.expect("trending").items.is_empty(),
        "empty trending"
    );
    assert_eq!(
        store.category_top("none").await.expect("category_top"),
        None
    );
    assert!(
        store.scan_users().await.expect("scan").is_empty(),
        "suite needs an empty store"
    );

    // Two shards write their partials.
    let b0 = shard0_batch();
    let b1 = shard1_batch();
    store.write(&s0, &b0).await.expect("write shard 0");
    store.write(&s1, &b1).await.expect("write shard 1");
    check_state(store, cfg, &b0, &b1, "after the first writes").await;

    // Writing the same batch again (a replay after a crash) changes nothing.
    store.write(&s0, &b0).await.expect("rewrite shard 0");
    store.write(&s1, &b1).await.expect("rewrite shard 1");
    check_state(store, cfg, &b0, &b1, "after a replay").await;

    // Values are absolute: a newer view replaces the old one, it is not added to it.
    let mut b0_next = b0.clone();
    let alice = &mut b0_next.users[0];
    alice.counts.view = 10;
    alice.counts.purchase = 2;
    alice.last_ts = T0 + 90_000;
    alice.cart.clear();
    let p1 = &mut b0_next.products[0];
    p1.counts.view = 7;
    p1.last_ts = T0 + 90_000;
    b0_next.trending = TopList {
        at: T0 + 90_000,
        items: vec![("p2".into(), 4.0), ("p1".into(), 3.5)],
    };
    store
        .write(&s0, &b0_next)
        .await
        .expect("write newer shard 0");
    check_state(store, cfg, &b0_next, &b1, "after an overwrite").await;
}

async fn check_state(
    store: &dyn FeatureStore,
    cfg: &FeatureConfig,
    b0: &FlushBatch,
    b1: &FlushBatch,
    when: &str,
) {
    let half_life = cfg.trending_half_life_ms();

    // Users: exact round trip, last writer's view.
    for u in b0.users.iter().chain(&b1.users) {
        let got = store.user(&u.user_id).await.expect("user");
        assert_eq!(got.as_deref(), Some(u), "{when}: user {}", u.user_id);
    }
    assert_eq!(
        store.user("nobody").await.expect("user"),
        None,
        "{when}: missing user"
    );

    // Products: partials merged across shards, in the order asked, duplicates allowed.
    let expected = |id: &str| -> Option<ProductFeatures> {
        let parts: Vec<&ProductFeatures> = [b0, b1]
            .into_iter()
            .filter_map(|b| b.products.iter().find(|p| p.product_id == id))
            .collect();
        let (first, rest) = parts.split_first()?;
        let mut merged = (*first).clone();
        for p in rest {
            merged.merge(p, half_life, cfg.covisit_neighbours);
        }
        Some(merged)
    };
    let ids = ["p1", "missing", "p3", "p2", "p1"];
    let got = store.products(&ids).await.expect("products");
    assert_eq!(got.len(), ids.len(), "{when}: one answer per id");
    for (id, got) in ids.iter().zip(&got) {
        let want = expected(id);
        assert_product(
            got.as_deref(),
            want.as_ref(),
            &format!("{when}: product {id}"),
        );
    }
    let p1 = got[0].as_ref().expect("p1");
    let p1_views: u64 = [b0, b1]
        .iter()
        .flat_map(|b| &b.products)
        .filter(|p| p.product_id == "p1")
        .map(|p| p.counts.view)
        .sum();
    assert_eq!(
        p1.counts.view, p1_views,
        "{when}: p1 counts summed over shards"
    );
    assert_eq!(p1.buyers, 1, "{when}: p1 buyers summed over shards");

    // Top lists: merged across shards.
    let merged = |lists: Vec<&TopList>| match lists.len() {
        0 => None,
        1 => Some(lists[0].clone()),
        _ => Some(TopList::merge_all(lists, half_life, cfg.top_list_len)),
    };
    let trending = store.trending().await.expect("trending");
    let want = merged(vec![&b0.trending, &b1.trending]).expect("two lists");
    assert_list(&trending, &want, &format!("{when}: trending"));
    for c in ["c1", "c2", "c3"] {
        let lists: Vec<&TopList> = [b0, b1]
            .into_iter()
            .filter_map(|b| b.categories.iter().find(|(k, _)| k == c).map(|(_, l)| l))
            .collect();
        let got = store.category_top(c).await.expect("category_top");
        match (got, merged(lists)) {
            (Some(got), Some(want)) => assert_list(&got, &want, &format!("{when}: category {c}")),
            (None, None) => {}
            (got, want) => panic!("{when}: category {c}: got {got:?}, want {want:?}"),
        }
    }
    assert_eq!(
        store.category_top("none").await.expect("category_top"),
        None
    );

    // Scan: every user once, same values.
    let scanned: BTreeMap<String, Arc<UserFeatures>> = store
        .scan_users()
        .await
        .expect("scan")
        .into_iter()
        .map(|u| (u.user_id.clone(), u))
        .collect();
    let mut want: BTreeMap<&str, &UserFeatures> = BTreeMap::new();
    for u in b0.users.iter().chain(&b1.users) {
        want.insert(&u.user_id, u);
    }
    assert_eq!(scanned.len(), want.len(), "{when}: scanned users");
    for (id, u) in want {
        assert_eq!(
            scanned.get(id).map(|u| &**u),
            Some(u),
            "{when}: scanned user {id}"
        );
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn assert_product(got: Option<&ProductFeatures>, want: Option<&ProductFeatures>, what: &str) {
    let (got, want) = match (got, want) {
        (None, None) => return,
        (Some(g), Some(w)) => (g, w),
        (g, w) => panic!("{what}: got {g:?}, want {w:?}"),
    };
    // Exact for everything but floats, which may differ in the last bits by merge order.
    let strip = |p: &ProductFeatures| ProductFeatures {
        popularity: Decayed::default(),
        covisit: Vec::new(),
        ..p.clone()
    };
    assert_eq!(strip(got), strip(want), "{what}");
    assert!(
        close(got.popularity.value, want.popularity.value)
            && got.popularity.at == want.popularity.at,
        "{what}: popularity {:?} != {:?}",
        got.popularity,
        want.popularity
    );
    let mut g = got.covisit.clone();
    let mut w = want.covisit.clone();
    g.sort_by(|a, b| a.0.cmp(&b.0));
    w.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(g.len(), w.len(), "{what}: covisit {g:?} != {w:?}");
    for ((gi, gw), (wi, ww)) in g.iter().zip(&w) {
        assert!(
            gi == wi && (gw - ww).abs() <= 1e-5 * ww.abs().max(1.0),
            "{what}: covisit {g:?} != {w:?}"
        );
    }
}

fn assert_list(got: &TopList, want: &TopList, what: &str) {
    assert_eq!(got.at, want.at, "{what}: at");
    let ids = |l: &TopList| l.items.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(got), ids(want), "{what}: ranking");
    for ((id, g), (_, w)) in got.items.iter().zip(&want.items) {
        assert!(close(*g, *w), "{what}: weight of {id}: {g} != {w}");
    }
}

fn user(id: &str, views: u64, ts: i64) -> UserFeatures {
    UserFeatures {
        user_id: id.into(),
        counts: EventCounts {
            view: views,
            ..Default::default()
        },
        first_ts: T0,
        last_ts: ts,
        ..Default::default()
    }
}

fn shard0_batch() -> FlushBatch {
    let mut alice = user("alice", 3, T0 + 60_000);
    alice.counts.add_to_cart = 1;
    alice.recent = vec![
        RecentItem {
            product_id: "p2".into(),
            ts: T0 + 60_000,
            action: "add_to_cart".into(),
        },
        RecentItem {
            product_id: "p1".into(),
            ts: T0 + 30_000,
            action: "view".into(),
        },
    ];
    alice.items = vec![
        Weighted {
            id: "p2".into(),
            weight: Decayed {
                value: 3.0,
                at: T0 + 60_000,
            },
        },
        Weighted {
            id: "p1".into(),
            weight: Decayed {
                value: 0.999_99,
                at: T0 + 30_000,
            },
        },
    ];
    alice.categories = vec![Weighted {
        id: "c1".into(),
        weight: Decayed {
            value: 4.0,
            at: T0 + 60_000,
        },
    }];
    alice.cart = vec![CartLine {
        product_id: "p2".into(),
        quantity: 2,
    }];
    alice.segment = Some("25-34|f|DE".into());
    alice.currency = Some("EUR".into());
    let mut users = vec![alice, user("bob ünïcode/with|chars", 1, T0 + 1)];
    users.extend((0..BULK_USERS).map(|i| user(&format!("bulk-{i:03}"), i as u64, T0 + i as i64)));
    FlushBatch {
        users,
        products: vec![
            ProductFeatures {
                product_id: "p1".into(),
                counts: EventCounts {
                    view: 3,
                    ..Default::default()
                },
                popularity: Decayed {
                    value: 2.5,
                    at: T0 + 30_000,
                },
                category: Some("c1".into()),
                brand: Some("acme".into()),
                price_minor: Some(1999),
                currency: Some("EUR".into()),
                covisit: vec![("p2".into(), 2.0), ("p3".into(), 1.0)],
                buyers: 0,
                last_ts: T0 + 30_000,
            },
            ProductFeatures {
                product_id: "p2".into(),
                counts: EventCounts {
                    view: 1,
                    add_to_cart: 1,
                    ..Default::default()
                },
                popularity: Decayed {
                    value: 1.25,
                    at: T0 + 60_000,
                },
                category: Some("c1".into()),
                covisit: vec![("p1".into(), 2.0)],
                last_ts: T0 + 60_000,
                ..Default::default()
            },
        ],
        trending: TopList {
            at: T0 + 60_000,
            items: vec![("p1".into(), 2.5), ("p2".into(), 1.25)],
        },
        categories: vec![
            (
                "c1".into(),
                TopList {
                    at: T0 + 60_000,
                    items: vec![("p1".into(), 2.5), ("p2".into(), 1.25)],
                },
            ),
            (
                "c2".into(),
                TopList {
                    at: T0 + 60_000,
                    items: vec![("p9".into(), 0.5)],
                },
            ),
        ],
        watermark: T0 + 60_000,
    }
}

fn shard1_batch() -> FlushBatch {
    FlushBatch {
        users: vec![user("carol", 2, T0 + 45_000)],
        products: vec![
            ProductFeatures {
                product_id: "p1".into(),
                counts: EventCounts {
                    view: 2,
                    purchase: 1,
                    ..Default::default()
                },
                popularity: Decayed {
                    value: 4.0,
                    at: T0 + 45_000,
                },
                category: Some("c1".into()),
                price_minor: Some(1899),
                currency: Some("EUR".into()),
                covisit: vec![("p3".into(), 1.5)],
                buyers: 1,
                last_ts: T0 + 45_000,
                ..Default::default()
            },
            ProductFeatures {
                product_id: "p3".into(),
                counts: EventCounts {
                    view: 1,
                    ..Default::default()
                },
                popularity: Decayed {
                    value: 1.0,
                    at: T0 + 40_000,
                },
                category: Some("c3".into()),
                last_ts: T0 + 40_000,
                ..Default::default()
            },
        ],
        trending: TopList {
            at: T0 + 45_000,
            items: vec![("p1".into(), 4.0), ("p3".into(), 1.0)],
        },
        categories: vec![
            (
                "c1".into(),
                TopList {
                    at: T0 + 45_000,
                    items: vec![("p1".into(), 4.0)],
                },
            ),
            (
                "c3".into(),
                TopList {
                    at: T0 + 40_000,
                    items: vec![("p3".into(), 1.0)],
                },
            ),
        ],
        watermark: T0 + 45_000,
    }
}

/// Runs the [`StateStore`] contract against `store` (which must hold no state rows):
/// missing rows, two shards kept apart, upserts as absolute values (a delta written twice
/// or overwritten by a newer one), more users than one BatchGetItem takes, and a shard
/// resumed from the rows equal to the state that wrote them.
pub async fn run_state_store_suite(store: &dyn StateStore) {
    let s0 = ShardId::new("shardId-000000000000");
    let s1 = ShardId::new("shardId-000000000001");
    assert_eq!(
        store.user_states(&s0, &["nobody"]).await.expect("read"),
        vec![None]
    );
    assert!(store.product_states(&s0).await.expect("scan").is_empty());
    assert_eq!(store.applied(&s0).await.expect("applied"), None);
    store
        .mark_applied(&s0, "state/s0/1.delta")
        .await
        .expect("mark");
    store
        .mark_applied(&s0, "state/s0/2.delta")
        .await
        .expect("mark");
    assert_eq!(
        store.applied(&s0).await.expect("applied").as_deref(),
        Some("state/s0/2.delta"),
        "the last mark wins"
    );
    assert_eq!(
        store.applied(&s1).await.expect("applied"),
        None,
        "per shard"
    );

    // One shard's state: 150 users (more than one BatchGetItem), 7 products.
    let cfg = FeatureConfig::default();
    let mut agg = Aggregator::new(cfg.clone());
    let event = |i: usize, user: String, product: usize| {
        recstream_ingest::Event::new(
            &format!("e{i}"),
            recstream_ingest::Timestamp(T0 + i as i64),
            &user,
            recstream_ingest::EventType::View,
        )
        .with_product(&format!("p{product}"), Some("c"))
        .with_session(&format!("{user}-s"))
    };
    for i in 0..300 {
        agg.apply(&event(i, format!("u{}", i % 150), i % 7));
    }
    let _ = agg.drain();
    let first = agg.take_delta();
    store.put_state(&s0, &first).await.expect("put");
    store.put_state(&s0, &first).await.expect("a delta twice");
    // The other shard has rows of the same ids that must not mix.
    let mut other = Aggregator::new(cfg.clone());
    other.apply(&event(0, "u1".into(), 1));
    let other_delta = other.take_delta();
    store.put_state(&s1, &other_delta).await.expect("put");

    let ids: Vec<String> = (0..150).map(|u| format!("u{u}")).collect();
    let mut asked: Vec<&str> = ids.iter().map(String::as_str).collect();
    asked.push("nobody");
    asked.push("u3"); // asked twice
    let rows = store.user_states(&s0, &asked).await.expect("read");
    assert_eq!(rows.len(), asked.len(), "one answer per id asked, in order");
    for (id, row) in asked.iter().zip(&rows) {
        let want = first.users.iter().find(|r| r.id == *id).map(|r| &r.state);
        assert_eq!(row.as_ref(), want, "user {id}");
    }
    let mut products = store.product_states(&s0).await.expect("scan");
    products.sort();
    let want: Vec<(String, Vec<u8>)> = first
        .products
        .iter()
        .map(|r| (r.id.clone(), r.state.clone()))
        .collect();
    assert_eq!(
        products, want,
        "every product row of the shard, and only its own"
    );
    assert_eq!(
        store.user_states(&s1, &["u1"]).await.expect("read")[0].as_ref(),
        Some(&other_delta.users[0].state)
    );

    // A newer delta overwrites: rows are absolute values.
    agg.apply(&event(1000, "u5".into(), 2));
    let _ = agg.drain();
    let second = agg.take_delta();
    assert_eq!(second.users.len(), 1);
    store.put_state(&s0, &second).await.expect("put");
    assert_eq!(
        store.user_states(&s0, &["u5"]).await.expect("read")[0].as_ref(),
        Some(&second.users[0].state)
    );

    // Resumed from the store and the last delta, with every user met again, the shard's
    // state is the one that wrote it.
    let delta = StateDelta::decode(&second.encode()).expect("decode");
    let products = store.product_states(&s0).await.expect("scan");
    let mut resumed = Aggregator::resume(cfg, &delta.meta, products).expect("resume");
    let rows = store
        .user_states(&s0, &ids.iter().map(String::as_str).collect::<Vec<_>>())
        .await
        .expect("read");
    for (id, row) in ids.iter().zip(rows) {
        resumed
            .load_user(id, &row.expect("every user has a row"))
            .expect("row");
    }
    for id in &ids {
        assert_eq!(resumed.user(id), agg.user(id), "user {id}");
    }
    for p in 0..7 {
        let id = format!("p{p}");
        assert_eq!(resumed.product(&id), agg.product(&id), "product {id}");
    }
    assert_eq!(resumed.drain().trending, agg.drain().trending);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EmbeddedStore;

    #[tokio::test]
    async fn embedded_store_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = FeatureConfig::default();
        let store = EmbeddedStore::open(dir.path().join("features.redb"), cfg.clone()).unwrap();
        run_feature_store_suite(&store, &cfg).await;
        run_state_store_suite(&store).await;
        drop(store);
        // And after a restart: the caches are rebuilt from disk.
        let store = EmbeddedStore::open(dir.path().join("features.redb"), cfg.clone()).unwrap();
        let p1 = store
            .products(&["p1"])
            .await
            .unwrap()
            .pop()
            .flatten()
            .unwrap();
        assert_eq!(p1.counts.view, 7 + 2);
    }

    #[tokio::test]
    async fn a_cached_user_is_replaced_by_every_write_of_that_user() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path().join("features.redb"), FeatureConfig::default())
            .unwrap();
        let shard = ShardId::new("shard-0");
        let batch = |views| FlushBatch {
            users: vec![user("carol", views, T0 + 1_000)],
            products: Vec::new(),
            trending: TopList::default(),
            categories: Vec::new(),
            watermark: T0 + 1_000,
        };
        assert!(store.user("carol").await.unwrap().is_none());
        for views in 1..=3 {
            store.write(&shard, &batch(views)).await.unwrap();
            // Twice: the first read may decode, the second comes from the cache.
            for _ in 0..2 {
                let u = store.user("carol").await.unwrap().unwrap();
                assert_eq!(u.counts.view, views);
            }
        }
    }
}
