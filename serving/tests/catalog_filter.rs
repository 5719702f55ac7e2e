//! One catalog: with the shop's catalog wired in, recommendations (personalised, cold
//! start, similar) name only products that are active and in stock; sold-out, inactive and
//! unknown products never appear, and a product that sells out drops out.

use std::sync::Arc;
use std::time::Duration;

use recstream_commerce::StoreCatalog;
use recstream_commerce::catalog::SeedProduct;
use recstream_features::{Aggregator, FeatureConfig, FeatureStore};
use recstream_ingest::Money;
use recstream_ingest::{Event, EventType, ShardId, Timestamp};
use recstream_scoring::{InProcessCache, Recommender, Request, ScoringConfig};
use recstream_serving::catalog::CatalogAvailability;

fn product(id: &str, stock: i64, active: bool) -> SeedProduct {
    SeedProduct {
        id: id.into(),
        name: id.into(),
        category: Some("c".into()),
        price: Money::new(1000, "USD"),
        stock,
        active,
    }
}

#[tokio::test]
async fn only_sellable_products_are_recommended() {
    let dir = tempfile::tempdir().unwrap();
    // Features: many sessions view `seed` and then every other product.
    let mut events = Vec::new();
    let mut t = 1_569_888_000_000i64;
    for u in 0..30 {
        for p in [
            "seed",
            "in-stock",
            "sold-out",
            "inactive",
            "not-in-catalog",
            "late",
        ] {
            t += 1000;
            events.push(
                Event::new(
                    &format!("e{}", events.len()),
                    Timestamp(t),
                    &format!("u{u}"),
                    EventType::View,
                )
                .with_product(p, Some("c"))
                .with_session(&format!("s{u}")),
            );
        }
    }
    t += 1000;
    events.push(
        Event::new("me-1", Timestamp(t), "me", EventType::View)
            .with_product("seed", Some("c"))
            .with_session("me-s"),
    );
    let features = Arc::new(
        recstream_features::EmbeddedStore::open(
            dir.path().join("f.redb"),
            FeatureConfig::default(),
        )
        .unwrap(),
    );
    let mut agg = Aggregator::new(FeatureConfig::default());
    agg.apply_all(&events);
    features
        .write(&ShardId::new("t"), &agg.drain())
        .await
        .unwrap();

    let shop = Arc::new(StoreCatalog::new(Arc::new(
        recstream_commerce::EmbeddedStore::open(dir.path().join("c.redb")).unwrap(),
    )));
    shop.seed(&[
        product("in-stock", 5, true),
        product("late", 1, true),
        product("sold-out", 0, true),
        product("inactive", 5, false),
    ])
    .await
    .unwrap();

    let rec = Recommender::new(
        features,
        Arc::new(InProcessCache::new()),
        ScoringConfig::default(),
    );
    let ids = |items: &[recstream_scoring::Item]| {
        let mut v: Vec<String> = items.iter().map(|i| i.product_id.clone()).collect();
        v.sort();
        v
    };
    // Without the catalog, everything co-visited is a candidate (the defect).
    let before = rec
        .recommend(&Request {
            user_id: "me".into(),
            n: Some(10),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(ids(&before.items).contains(&"not-in-catalog".to_string()));

    assert!(rec.set_availability(Arc::new(CatalogAvailability::with(
        shop.clone(),
        Duration::from_millis(50),
        1000
    ))));
    for user in ["me", "a-new-visitor"] {
        let out = rec
            .recommend(&Request {
                user_id: user.into(),
                n: Some(10),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(ids(&out.items), ["in-stock", "late"], "{user}: {out:?}");
        assert!(out.degraded.is_empty(), "{out:?}");
    }
    let similar = rec.similar("seed", 10).await.unwrap().unwrap();
    assert_eq!(ids(&similar), ["in-stock", "late"]);

    // `late` sells out: within the cache's time it is no longer recommended.
    shop.set_on_hand("late", 0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    let out = rec
        .recommend(&Request {
            user_id: "me".into(),
            n: Some(10),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&out.items), ["in-stock"], "{out:?}");
}

/// The filter's cost per request, warm cache (run: `cargo test --test catalog_filter --
/// --ignored --nocapture`; the debug build's figure, for comparison with and without).
#[tokio::test]
#[ignore]
async fn filter_cost() {
    let dir = tempfile::tempdir().unwrap();
    let mut events = Vec::new();
    let mut t = 1_569_888_000_000i64;
    for u in 0..300 {
        for k in 0..8 {
            t += 1000;
            let p = format!("p{}", (u * 7 + k * 13) % 400);
            events.push(
                Event::new(
                    &format!("e{}", events.len()),
                    Timestamp(t),
                    &format!("u{u}"),
                    EventType::View,
                )
                .with_product(&p, Some(["a", "b", "c", "d"][k % 4]))
                .with_session(&format!("s{u}")),
            );
        }
    }
    let features = Arc::new(
        recstream_features::EmbeddedStore::open(
            dir.path().join("f.redb"),
            FeatureConfig::default(),
        )
        .unwrap(),
    );
    let mut agg = Aggregator::new(FeatureConfig::default());
    agg.apply_all(&events);
    features
        .write(&ShardId::new("t"), &agg.drain())
        .await
        .unwrap();
    let shop = Arc::new(StoreCatalog::new(Arc::new(
        recstream_commerce::EmbeddedStore::open(dir.path().join("c.redb")).unwrap(),
    )));
    let seed: Vec<SeedProduct> = (0..400)
        .map(|i| product(&format!("p{i}"), (i % 5) as i64, true))
        .collect();
    shop.seed(&seed).await.unwrap();
    let run = |rec: Arc<Recommender>| async move {
        let n = 2000;
        let started = std::time::Instant::now();
        for i in 0..n {
            let req = Request {
                user_id: format!("u{}", i % 300),
                n: Some(10),
                ..Default::default()
            };
            std::hint::black_box(rec.recommend(&req).await.unwrap());
        }
        started.elapsed() / n
    };
    let plain = Arc::new(Recommender::new(
        features.clone(),
        Arc::new(InProcessCache::new()),
        ScoringConfig::default(),
    ));
    let filtered = Arc::new(Recommender::new(
        features,
        Arc::new(InProcessCache::new()),
        ScoringConfig::default(),
    ));
    filtered.set_availability(Arc::new(CatalogAvailability::new(shop)));
    run(filtered.clone()).await; // warm the cache
    let a = run(plain).await;
    let b = run(filtered).await;
    println!("recommend n=10: {a:?} without the catalog filter, {b:?} with it (warm cache)");
}

/// Every other product (by a hash of its id) cannot be sold; counts the ids asked about.
struct HalfSellable {
    asked: std::sync::atomic::AtomicUsize,
}

impl HalfSellable {
    fn sellable(id: &str) -> bool {
        id.bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
            % 2
            == 0
    }
}

#[async_trait::async_trait]
impl recstream_scoring::Availability for HalfSellable {
    async fn lookup(&self, ids: &[&str]) -> Result<Vec<recstream_scoring::ProductState>, String> {
        self.asked
            .fetch_add(ids.len(), std::sync::atomic::Ordering::Relaxed);
        Ok(ids
            .iter()
            .map(|id| {
                if HalfSellable::sellable(id) {
                    recstream_scoring::ProductState::Sellable
                } else {
                    recstream_scoring::ProductState::Unavailable
                }
            })
            .collect())
    }
}

/// The catalog is asked about candidates in blend order, a chunk at a time, until enough
/// sellable ones are found: the lists are those of filtering the whole pool first (the
/// candidate pool `candidates` returns, best by the blend first), on the real sample with
/// half the products unsellable, for list lengths that need one chunk and several.
#[tokio::test]
async fn asking_the_catalog_in_blend_order_serves_what_filtering_the_whole_pool_serves() {
    let dir = tempfile::tempdir().unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../data/sample/rees46-2019-10-01-head.csv.gz");
    let rows = recstream_ingest::datasets::load(recstream_ingest::datasets::Dataset::Rees46, &path)
        .unwrap();
    let events: Vec<Event> = rows.into_iter().filter_map(|r| r.event.ok()).collect();
    let features = Arc::new(
        recstream_features::EmbeddedStore::open(
            dir.path().join("f.redb"),
            FeatureConfig::default(),
        )
        .unwrap(),
    );
    let mut agg = Aggregator::new(FeatureConfig::default());
    agg.apply_all(&events);
    let batch = agg.drain();
    features.write(&ShardId::new("t"), &batch).await.unwrap();
    let cold = Arc::new(InProcessCache::new());
    let trending = features.trending().await.unwrap();
    recstream_scoring::ColdStartCache::put(
        cold.as_ref(),
        recstream_scoring::cold_start::OVERALL,
        &recstream_scoring::ColdStartList {
            items: trending.items.clone(),
            source: "test".into(),
        },
    )
    .await
    .unwrap();
    let users: Vec<String> = batch
        .users
        .iter()
        .filter(|u| !u.recent.is_empty())
        .map(|u| u.user_id.clone())
        .take(300)
        .collect();
    assert!(users.len() >= 100);
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    for k in [3, 10, 40] {
        // The blend ranks (no model) and the list is cut at k = rerank_depth = n: the list
        // is then the best k sellable candidates by the blend, as a set.
        let cfg = ScoringConfig {
            rerank_depth: k,
            ..ScoringConfig::default()
        };
        let av = Arc::new(HalfSellable {
            asked: Default::default(),
        });
        let rec = Recommender::new(features.clone(), cold.clone(), cfg);
        assert!(rec.set_availability(av.clone()));
        let (mut asked_pool, mut asked_served, mut full) = (0, 0, 0);
        for user in &users {
            let req = Request {
                user_id: user.clone(),
                n: Some(k),
                ..Default::default()
            };
            let before = av.asked.load(std::sync::atomic::Ordering::Relaxed);
            let pool = rec.candidates(&req).await.unwrap();
            let mid = av.asked.load(std::sync::atomic::Ordering::Relaxed);
            let out = rec.recommend(&req).await.unwrap();
            // Compared where the pool can fill the list with sellable products (half are):
            // a smaller pool is asked about whole and the list backfilled from the
            // cold-start list, which filtering the pool alone does not count.
            if pool.len() >= 3 * k {
                asked_pool += mid - before;
                asked_served += av.asked.load(std::sync::atomic::Ordering::Relaxed) - mid;
            }
            assert!(
                out.items
                    .iter()
                    .all(|i| HalfSellable::sellable(&i.product_id))
            );
            if pool.len() >= k {
                full += 1;
                let ids: Vec<String> = out.items.iter().map(|i| i.product_id.clone()).collect();
                assert_eq!(
                    sorted(ids),
                    sorted(pool[..k].to_vec()),
                    "user {user}, k {k}"
                );
            }
        }
        assert!(full > 50, "k {k}: only {full} users with a full pool");
        if k == 40 {
            // The sample's pools are all under 120 candidates: nothing to compare.
            continue;
        }
        assert!(asked_pool > 0, "k {k}: no pool of {} candidates", 3 * k);
        assert!(
            asked_served < asked_pool,
            "k {k}: {asked_served} ids asked about to serve, {asked_pool} for the whole pool"
        );
    }
    // Cold start: the first n sellable products of the list, in order.
    let rec = Recommender::new(features.clone(), cold.clone(), ScoringConfig::default());
    assert!(rec.set_availability(Arc::new(HalfSellable {
        asked: Default::default(),
    })));
    for n in [1, 10, 100] {
        let out = rec
            .recommend(&Request {
                user_id: "a-new-visitor".into(),
                n: Some(n),
                ..Default::default()
            })
            .await
            .unwrap();
        let want: Vec<String> = trending
            .items
            .iter()
            .map(|(p, _)| p.clone())
            .filter(|p| HalfSellable::sellable(p))
            .take(n)
            .collect();
        let got: Vec<String> = out.items.iter().map(|i| i.product_id.clone()).collect();
        assert_eq!(got, want, "n {n}");
    }
}
