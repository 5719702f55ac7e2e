//! A future timestamp must not freeze trending for everyone: events from outside (here the
//! in-process collector shard, whose arrival is the server clock) dated beyond the
//! allowed skew are dead-lettered with the reason, never applied; current events keep
//! moving the trending list.

use std::time::Duration;

use bytes::Bytes;
use recstream::config::Config;
use recstream::runtime::Runtime;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_dated_in_the_future_are_dead_lettered_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.embedded.data_dir = dir.path().join("data");
    let rt = Runtime::embedded(cfg).unwrap();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let (tx, task) = rt.spawn_channel_collector(stop).await.unwrap();

    let now = chrono::Utc::now().timestamp_millis();
    let event = |id: String, ts: i64, product: &str| {
        Bytes::from(
            json!({"event_id": id, "ts": ts, "user_id": format!("u-{ts}-{product}"), "type": "view",
                "product_id": product, "category": "c"})
            .to_string(),
        )
    };
    // Five views dated 2099 (the attack of issue 11), one just inside the skew.
    for i in 0..5 {
        tx.try_send(event(format!("f{i}"), 4_070_908_800_000 + i, "from-2099"))
            .unwrap();
    }
    tx.try_send(event("skew".into(), now + 60_000, "a-minute-ahead"))
        .unwrap();
    // Then current views of other products.
    for i in 0..100 {
        tx.try_send(event(
            format!("c{i}"),
            now + i,
            &format!("current-{}", i % 3),
        ))
        .unwrap();
    }

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let trending = loop {
        let t = rt.sinks.features.trending().await.unwrap();
        if t.items
            .iter()
            .filter(|(p, _)| p.starts_with("current-"))
            .count()
            == 3
        {
            break t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "current views never reached trending: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        trending.items.iter().all(|(p, _)| p != "from-2099"),
        "{trending:?}"
    );
    assert!(
        trending.items.iter().any(|(p, _)| p == "a-minute-ahead"),
        "within the skew: applied {trending:?}"
    );
    assert!(trending.at < now + 10 * 60_000, "decayed to now, not 2099");

    let _ = stop_tx.send(true);
    let summary = task.await.unwrap().unwrap();
    assert_eq!(summary.dead_letters, 5, "{summary:?}");
    assert_eq!(summary.accepted, 101, "{summary:?}");
    // The dead letters keep the reason.
    let letters = rt.sinks.objects.list("dead-letter/").await.unwrap();
    assert!(!letters.is_empty(), "dead letters were written");
    let mut text = String::new();
    for key in letters {
        let body = rt.sinks.objects.get(&key).await.unwrap().unwrap();
        text.push_str(&String::from_utf8_lossy(&body));
    }
    assert_eq!(
        text.matches("after the record's arrival").count(),
        5,
        "{text}"
    );
}
