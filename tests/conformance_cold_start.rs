//! The cold-start cache conformance suite run against both implementations: in-process
//! and Redis (at `REDIS_URL`, default `redis://127.0.0.1:6379/`, as `scripts/test`
//! starts it); plus Redis failures: a closed port and a Redis that never answers make
//! `top()` fail within its timeout, and the real Recommender then answers from trending
//! with `degraded: ["cold_start_cache"]`. Under `CI=true` a missing Redis fails the
//! tests; elsewhere they are skipped with a loud message.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use recstream_features::{EmbeddedStore, FeatureConfig, FeatureStore, FlushBatch, TopList};
use recstream_ingest::ShardId;
use recstream_scoring::cold_start::OVERALL;
use recstream_scoring::cold_start::conformance::{SUITE_SEGMENTS, run_cold_start_suite};
use recstream_scoring::cold_start::redis::{RedisColdStartCache, RedisOptions};
use recstream_scoring::{
    ColdStartCache, ColdStartList, InProcessCache, Recommender, Request, ScoringConfig, Strategy,
};

const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/";

/// `REDIS_URL` (or the default) when Redis answers; `None` (after a loud message) outside CI.
fn redis_url() -> Option<String> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.into());
    if answers_ping(&url) {
        return Some(url);
    }
    let msg = format!(
        "Redis at {url} is not answering: run the tests through `scripts/test`, which starts it and sets REDIS_URL"
    );
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{msg}");
    }
    eprintln!("\n!!!!!!!! SKIPPED (not CI): {msg} !!!!!!!!\n");
    None
}

fn answers_ping(url: &str) -> bool {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let rest = url.split("://").nth(1).unwrap_or_default();
    let host_port = rest
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .split('/')
        .next()
        .unwrap_or_default();
    let host_port = if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!("{host_port}:6379")
    };
    let Some(addr) = host_port.to_socket_addrs().ok().and_then(|mut a| a.next()) else {
        return false;
    };
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 64];
    // A password-protected Redis answers -NOAUTH: it is there all the same.
    s.write_all(b"PING\r\n").is_ok() && s.read(&mut buf).is_ok_and(|n| n > 0)
}

fn namespace() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "recstream-test-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// An embedded store with a trending list and nothing else.
async fn store_with_trending(dir: &std::path::Path) -> Arc<dyn FeatureStore> {
    let store = EmbeddedStore::open(dir.join("features.redb"), FeatureConfig::default()).unwrap();
    let batch = FlushBatch {
        users: Vec::new(),
        products: Vec::new(),
        trending: TopList {
            at: 1_000,
            items: vec![("hot-1".into(), 9.0), ("hot-2".into(), 3.0)],
        },
        categories: Vec::new(),
        watermark: 1_000,
    };
    store.write(&ShardId::new("shard-0"), &batch).await.unwrap();
    Arc::new(store)
}

#[tokio::test]
async fn in_process_cache_conforms() {
    run_cold_start_suite(&InProcessCache::new()).await;
}

#[tokio::test]
async fn redis_cache_conforms() {
    let Some(url) = redis_url() else { return };
    let ns = namespace();
    let cache = RedisColdStartCache::connect_with(
        &url,
        RedisOptions {
            namespace: ns.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(cache.name(), "redis");
    assert_eq!(
        cache.key("25-34|f|DE"),
        format!("{ns}:coldstart:25-34|f|DE")
    );
    cache.ping().await.expect("redis answers");
    run_cold_start_suite(&cache).await;
    for seg in SUITE_SEGMENTS {
        cache.remove(seg).await.unwrap();
    }
    assert_eq!(cache.top(OVERALL).await.unwrap(), None);
}

#[tokio::test]
async fn the_default_key_layout_is_documented() {
    let cache = RedisColdStartCache::connect_with(
        &format!("redis://127.0.0.1:{}/", closed_port().await),
        RedisOptions {
            connect_timeout: Duration::from_millis(100),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(cache.key(OVERALL), "recstream:coldstart:overall");
}

#[tokio::test]
async fn recommender_serves_cold_start_lists_from_redis() {
    let Some(url) = redis_url() else { return };
    let cache = RedisColdStartCache::connect_with(
        &url,
        RedisOptions {
            namespace: namespace(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let list = ColdStartList {
        items: vec![("cold-1".into(), 5.0), ("cold-2".into(), 4.0)],
        source: "test".into(),
    };
    cache.put(OVERALL, &list).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rec = Recommender::new(
        store_with_trending(dir.path()).await,
        Arc::new(cache.clone()),
        ScoringConfig::default(),
    );
    let out = rec
        .recommend(&Request {
            user_id: "new-user".into(),
            n: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(out.strategy, Strategy::ColdStart);
    assert!(out.degraded.is_empty(), "{:?}", out.degraded);
    let ids: Vec<&str> = out.items.iter().map(|i| i.product_id.as_str()).collect();
    assert_eq!(ids, ["cold-1", "cold-2"]);
    cache.remove(OVERALL).await.unwrap();
}

async fn assert_degrades(cache: RedisColdStartCache, what: &str) {
    let timeout = Duration::from_millis(50);
    let t = Instant::now();
    let err = cache.top(OVERALL).await.expect_err("top() must fail");
    let took = t.elapsed();
    assert!(
        took < timeout + Duration::from_millis(150),
        "{what}: top() took {took:?}: {err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let rec = Recommender::new(
        store_with_trending(dir.path()).await,
        Arc::new(cache),
        ScoringConfig::default(),
    );
    let t = Instant::now();
    let out = rec
        .recommend(&Request {
            user_id: "new-user".into(),
            n: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        t.elapsed() < timeout + Duration::from_millis(150),
        "{what}: recommend took {:?}",
        t.elapsed()
    );
    assert_eq!(out.degraded, vec!["cold_start_cache"], "{what}");
    assert_eq!(out.strategy, Strategy::ColdStart);
    let ids: Vec<&str> = out.items.iter().map(|i| i.product_id.as_str()).collect();
    assert_eq!(ids, ["hot-1", "hot-2"], "{what}: falls back to trending");
}

#[tokio::test]
async fn redis_on_a_closed_port_degrades_within_the_timeout() {
    let url = format!("redis://127.0.0.1:{}/", closed_port().await);
    let cache = RedisColdStartCache::connect_with(
        &url,
        RedisOptions {
            breaker: Duration::ZERO,
            connect_timeout: Duration::from_millis(200),
            ..Default::default()
        },
    )
    .await
    .expect("an unreachable redis does not stop start-up");
    assert_degrades(cache, "closed port").await;
}

#[tokio::test]
async fn redis_that_never_answers_degrades_within_the_timeout() {
    // Accepts connections, reads, never writes a byte back.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hole = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let cache = RedisColdStartCache::connect_with(
        &format!("redis://127.0.0.1:{port}/"),
        RedisOptions {
            breaker: Duration::ZERO,
            connect_timeout: Duration::from_millis(200),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_degrades(cache, "black hole").await;
    hole.abort();
}

#[tokio::test]
async fn a_short_personalised_list_is_backfilled_from_the_cold_start_list() {
    use recstream_features::view::{RecentItem, Weighted};
    use recstream_features::{Decayed, UserFeatures};
    let dir = tempfile::tempdir().unwrap();
    let store =
        EmbeddedStore::open(dir.path().join("features.redb"), FeatureConfig::default()).unwrap();
    let user = UserFeatures {
        user_id: "u".into(),
        recent: vec![RecentItem {
            product_id: "seen".into(),
            ts: 1_000,
            action: "view".into(),
        }],
        items: vec![Weighted {
            id: "seen".into(),
            weight: Decayed {
                value: 1.0,
                at: 1_000,
            },
        }],
        purchased: vec!["bought".into()],
        last_ts: 1_000,
        ..Default::default()
    };
    let batch = FlushBatch {
        users: vec![user],
        products: Vec::new(),
        trending: TopList {
            at: 1_000,
            items: vec![("hot-1".into(), 9.0)],
        },
        categories: Vec::new(),
        watermark: 1_000,
    };
    store.write(&ShardId::new("shard-0"), &batch).await.unwrap();
    let cache = InProcessCache::new();
    let list = ColdStartList {
        items: ["hot-1", "bought", "cold-1", "cold-2", "cold-3"]
            .iter()
            .enumerate()
            .map(|(i, p)| (p.to_string(), 10.0 - i as f64))
            .collect(),
        source: "test".into(),
    };
    cache.put(OVERALL, &list).await.unwrap();
    let rec = Recommender::new(Arc::new(store), Arc::new(cache), ScoringConfig::default());
    let out = rec
        .recommend(&Request {
            user_id: "u".into(),
            n: Some(4),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(out.strategy, Strategy::Personalized);
    let ids: Vec<&str> = out.items.iter().map(|i| i.product_id.as_str()).collect();
    // The two candidates first, then the cold-start list without repeats or purchases.
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert!(
        ids[..2].contains(&"seen") && ids[..2].contains(&"hot-1"),
        "{ids:?}"
    );
    assert_eq!(&ids[2..], ["cold-1", "cold-2"]);
}
