//! The feedback join through the shard processor, on the embedded stores: a served list
//! and the click naming it become labelled rows in `feedback/<shard>/<end>.jsonl`; the
//! list waits in the join state across a checkpoint and a restart (the snapshot), so a
//! crash between the list and its click changes nothing; a replay after a crash that
//! announced a roll rewrites the same object with the same rows; the served list reaches
//! the archive with its items.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use recstream_features::{EmbeddedStore, FeatureConfig};
use recstream_ingest::archive::read_archive;
use recstream_ingest::feedback::{FEEDBACK_PREFIX, FeedbackRow, decode_feedback};
use recstream_ingest::{
    Event, EventType, IngestError, LocalObjectStore, ObjectStore, RawRecord, SeqNo, ServedItem,
    ShardId, Source, Timestamp,
};
use recstream_pipeline::{ProcessorConfig, ShardProcessor, Sinks, resume};
use tokio::sync::watch;

const T0: i64 = 1_700_000_000_000;

fn shard() -> ShardId {
    ShardId::new("shardId-000000000007")
}

struct Once(ShardId, Option<Vec<RawRecord>>);

#[async_trait]
impl Source for Once {
    fn shard(&self) -> &ShardId {
        &self.0
    }
    async fn next_batch(&mut self, _max: usize) -> Result<Option<Vec<RawRecord>>, IngestError> {
        Ok(self.1.take())
    }
}

fn record(seq: u64, e: &Event) -> RawRecord {
    RawRecord {
        shard: shard(),
        seq: SeqNo::from_u64(seq),
        sub_seq: 0,
        partition_key: e.user_id.clone(),
        arrival: Timestamp(e.ts.0 + 5),
        data: Bytes::from(e.to_json()),
        rejected: None,
    }
}

/// Events 1..: the history of `u`, the list `r1` served to `u`, other traffic, a click on
/// its second item, a click by someone else naming it, a plain view.
fn events() -> Vec<Event> {
    let view = |i: i64, user: &str, p: &str| {
        Event::new(
            &format!("e{i}"),
            Timestamp(T0 + i * 1000),
            user,
            EventType::View,
        )
        .with_product(p, Some("cat"))
    };
    let items = ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, p)| ServedItem {
            product_id: (*p).into(),
            position: i as u32 + 1,
            score: 1.0 - i as f64 / 10.0,
            features: vec![i as f32; 39],
        })
        .collect();
    let served = Event::recommendation(
        "r1",
        Timestamp(T0 + 3000),
        "u",
        "personalized",
        Some("v1"),
        items,
    );
    let click = |i: i64, user: &str| {
        let mut e = Event::new(
            &format!("c{i}"),
            Timestamp(T0 + i * 1000),
            user,
            EventType::Click,
        )
        .with_product("b", Some("cat"));
        e.recommendation_id = Some("r1".into());
        e
    };
    vec![
        view(1, "u", "a"),
        view(2, "v", "b"),
        served,
        view(4, "v", "c"),
        click(5, "u"),
        click(6, "mallory"),
        view(7, "u", "c"),
    ]
}

struct Stores {
    _dir: tempfile::TempDir,
    sinks: Sinks,
    objects: Arc<dyn ObjectStore>,
}

fn stores() -> Stores {
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(EmbeddedStore::open(dir.path().join("f.redb"), FeatureConfig::default()).unwrap());
    let objects: Arc<dyn ObjectStore> = Arc::new(LocalObjectStore::new(dir.path().join("bucket")));
    let sinks = Sinks {
        checkpoints: Arc::new(store.checkpoints().unwrap()),
        state: store.clone(),
        features: store,
        objects: objects.clone(),
        catalog: None,
    };
    Stores {
        _dir: dir,
        sinks,
        objects,
    }
}

/// Runs a processor (resumed from the stores) over `records` to their end.
async fn run(s: &Stores, records: Vec<RawRecord>) {
    let r = resume(&s.sinks, &shard(), &FeatureConfig::default())
        .await
        .unwrap();
    let p = ShardProcessor::new(
        Box::new(Once(shard(), Some(records))),
        r,
        s.sinks.clone(),
        ProcessorConfig::default(),
    );
    let (_tx, rx) = watch::channel(false);
    p.run(rx).await.unwrap();
}

async fn feedback(s: &Stores) -> Vec<(String, Vec<FeedbackRow>)> {
    let mut out = Vec::new();
    for key in s.objects.list(FEEDBACK_PREFIX).await.unwrap() {
        let bytes = s.objects.get(&key).await.unwrap().unwrap();
        out.push((key, decode_feedback(&bytes).unwrap()));
    }
    out
}

#[tokio::test]
async fn a_click_naming_a_served_list_labels_its_impressions() {
    let s = stores();
    let recs: Vec<RawRecord> = events()
        .iter()
        .enumerate()
        .map(|(i, e)| record(i as u64 + 1, e))
        .collect();
    run(&s, recs).await;
    let objects = feedback(&s).await;
    assert_eq!(objects.len(), 1, "{objects:?}");
    let (key, rows) = &objects[0];
    assert_eq!(key, "feedback/shardId-000000000007/7.jsonl");
    let labels: Vec<(&str, bool, u32)> = rows
        .iter()
        .map(|r| (r.product_id.as_str(), r.engaged, r.position))
        .collect();
    assert_eq!(
        labels,
        [("a", false, 1), ("b", true, 2), ("c", false, 3)],
        "the clicked impression is positive, the ones shown and not clicked negative; \
         mallory's click on u's list teaches nothing"
    );
    assert!(
        rows.iter()
            .all(|r| r.model_version.as_deref() == Some("v1"))
    );
    assert_eq!(rows[1].features, vec![1.0; 39]);

    // The served list is archived with its items; it changed no feature.
    let archived = read_archive(s.objects.as_ref(), "events/").await.unwrap();
    let served = archived
        .iter()
        .find(|r| r.event.event_type == EventType::Recommendation)
        .unwrap();
    assert_eq!(served.event, events()[2]);
    // A served list is not the shopper's activity: features equal a run without it.
    let without = stores();
    let mut evs = events();
    evs.remove(2);
    let recs = evs
        .iter()
        .enumerate()
        .map(|(i, e)| record(i as u64 + 1, e))
        .collect();
    run(&without, recs).await;
    for user in ["u", "v"] {
        assert_eq!(
            format!("{:?}", s.sinks.features.user(user).await.unwrap()),
            format!("{:?}", without.sinks.features.user(user).await.unwrap()),
            "{user}"
        );
    }
}

#[tokio::test]
async fn the_list_waits_in_the_checkpoint_across_a_restart_and_replays_write_the_same_rows() {
    let all: Vec<RawRecord> = events()
        .iter()
        .enumerate()
        .map(|(i, e)| record(i as u64 + 1, e))
        .collect();
    let clean = stores();
    run(&clean, all.clone()).await;
    let want = feedback(&clean).await;

    // Crash after the list was checkpointed: the restart restores it from the snapshot
    // and the click joins it.
    let s = stores();
    run(&s, all[..4].to_vec()).await;
    assert!(feedback(&s).await.is_empty());
    run(&s, all.clone()).await; // redelivered from the start: 1..=4 are skipped
    assert_eq!(feedback(&s).await, want);

    // A crash after the roll at 7 was announced, before the feedback object was written
    // and the checkpoint moved: the stores hold the checkpoint at 4 (state delta, join
    // state, state rows) with the intent to roll at 7. The replay from 4 rolls at 7 and
    // writes the same rows.
    let rolled_at = s
        .sinks
        .checkpoints
        .load_checkpoint(&shard())
        .await
        .unwrap()
        .unwrap()
        .committed;
    let at4 = stores();
    run(&at4, all[..4].to_vec()).await;
    let mut back = at4
        .sinks
        .checkpoints
        .load_checkpoint(&shard())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.committed, Some(SeqNo::from_u64(4)));
    back.pending_end = rolled_at;
    back.finished = false;
    at4.sinks
        .checkpoints
        .save_checkpoint(&shard(), &back)
        .await
        .unwrap();
    run(&at4, all).await;
    let s = at4;
    assert_eq!(feedback(&s).await, want, "the same object, the same rows");
}
