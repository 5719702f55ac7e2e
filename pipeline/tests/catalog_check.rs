//! The processor's catalog check, on the embedded stores: with a catalog set, a stream
//! record naming a product the shop does not hold becomes a dead letter with its reason
//! and changes no feature, while the rest of its batch is applied; when the catalog
//! cannot be read, the batch fails before anything of it is applied, and the retry
//! counts every event once; the stream's `product` events are written to the catalog
//! before the check (so a product and its first views may share a batch), are never
//! aggregated, and an entry the catalog refuses is dead-lettered with its reason.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use recstream_features::{EmbeddedStore, FeatureConfig, FeatureStore};
use recstream_ingest::archive::dead_letter::read_dead_letters;
use recstream_ingest::archive::read_archive;
use recstream_ingest::{
    Event, EventType, IngestError, LocalObjectStore, Money, ObjectStore, ProductInfo, RawRecord,
    SeqNo, ShardId, Source, Timestamp,
};
use recstream_pipeline::{
    ProcessorConfig, ProcessorError, ProductCatalog, ShardProcessor, Sinks, resume,
};
use tokio::sync::watch;

const T0: i64 = 1_700_000_000_000;

fn shard() -> ShardId {
    ShardId::new("shardId-000000000003")
}

/// A catalog in memory that can be made to fail (the seam's contract: `Err` when it
/// cannot be read). Which ids it was asked about and the entries written are kept; it
/// refuses an entry titled `refused`.
struct Shop {
    ids: Mutex<HashSet<String>>,
    down: AtomicBool,
    asked: Mutex<Vec<Vec<String>>>,
    written: Mutex<Vec<(String, String, i64)>>,
}

#[async_trait]
impl ProductCatalog for Shop {
    async fn known(&self, ids: &[&str]) -> Result<Vec<bool>, String> {
        self.asked
            .lock()
            .unwrap()
            .push(ids.iter().map(|s| s.to_string()).collect());
        if self.down.load(Ordering::SeqCst) {
            return Err("table unreachable".into());
        }
        let held = self.ids.lock().unwrap();
        Ok(ids.iter().map(|i| held.contains(*i)).collect())
    }

    async fn write(&self, products: &[&Event]) -> Result<Vec<Option<String>>, String> {
        if self.down.load(Ordering::SeqCst) {
            return Err("table unreachable".into());
        }
        Ok(products
            .iter()
            .map(|e| {
                let id = e.product_id.as_deref().unwrap().to_string();
                let p = e.product.as_ref().unwrap();
                if p.title == "refused" {
                    return Some("title refused by the shop".to_string());
                }
                self.written
                    .lock()
                    .unwrap()
                    .push((id.clone(), p.title.clone(), p.stock));
                self.ids.lock().unwrap().insert(id);
                None
            })
            .collect())
    }
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

fn raw(events: &[Event]) -> Vec<RawRecord> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| RawRecord {
            shard: shard(),
            seq: SeqNo::from_u64(i as u64 + 1),
            sub_seq: 0,
            partition_key: e.user_id.clone(),
            arrival: Timestamp(e.ts.0 + 5),
            data: Bytes::from(e.to_json()),
            rejected: None,
        })
        .collect()
}

fn records() -> Vec<RawRecord> {
    let ev = |i: i64, user: &str, t: EventType, p: Option<&str>| {
        let e = Event::new(&format!("e{i}"), Timestamp(T0 + i * 1000), user, t);
        match p {
            Some(p) => e.with_product(p, Some("furniture.sofa")),
            None => e,
        }
    };
    let mut search = ev(5, "u", EventType::Search, None);
    search.query = Some("sofa".into());
    let events = [
        ev(1, "u", EventType::View, Some("sofa-1")),
        ev(2, "u", EventType::Purchase, Some("EVIL-PRODUCT")),
        ev(3, "v", EventType::View, Some("sofa-1")),
        ev(4, "v", EventType::AddToCart, Some("sofa-2")),
        search,
        ev(6, "w", EventType::View, Some("EVIL-PRODUCT")),
    ];
    raw(&events)
}

struct Stores {
    _dir: tempfile::TempDir,
    store: Arc<EmbeddedStore>,
    sinks: Sinks,
    objects: Arc<dyn ObjectStore>,
}

fn stores(catalog: Arc<Shop>) -> Stores {
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(EmbeddedStore::open(dir.path().join("f.redb"), FeatureConfig::default()).unwrap());
    let objects: Arc<dyn ObjectStore> = Arc::new(LocalObjectStore::new(dir.path().join("bucket")));
    let sinks = Sinks {
        checkpoints: Arc::new(store.checkpoints().unwrap()),
        state: store.clone(),
        features: store.clone(),
        objects: objects.clone(),
        catalog: Some(catalog),
    };
    Stores {
        _dir: dir,
        store,
        sinks,
        objects,
    }
}

fn shop() -> Arc<Shop> {
    Arc::new(Shop {
        ids: Mutex::new(["sofa-1", "sofa-2"].map(String::from).into_iter().collect()),
        down: AtomicBool::new(false),
        asked: Default::default(),
        written: Default::default(),
    })
}

async fn processor(s: &Stores, records: Vec<RawRecord>) -> ShardProcessor {
    let r = resume(&s.sinks, &shard(), &FeatureConfig::default())
        .await
        .unwrap();
    ShardProcessor::new(
        Box::new(Once(shard(), Some(records))),
        r,
        s.sinks.clone(),
        ProcessorConfig::default(),
    )
}

#[tokio::test]
async fn unknown_products_are_dead_lettered_and_the_rest_applied() {
    let catalog = shop();
    let s = stores(catalog.clone());
    let (_tx, rx) = watch::channel(false);
    let summary = processor(&s, records()).await.run(rx).await.unwrap();
    assert_eq!((summary.accepted, summary.dead_letters), (4, 2));

    // One lookup for the batch, each product once, the search (no product) not asked.
    assert_eq!(
        *catalog.asked.lock().unwrap(),
        [vec!["EVIL-PRODUCT", "sofa-1", "sofa-2"]]
    );
    let dead = read_dead_letters(s.objects.as_ref(), "dead-letter/")
        .await
        .unwrap();
    let dead: Vec<(String, String, String)> = dead
        .into_iter()
        .map(|d| (d.sequence_number.to_string(), d.kind, d.reason))
        .collect();
    let reason = "field `product_id`: `EVIL-PRODUCT` is not in the catalog".to_string();
    assert_eq!(
        dead,
        [
            ("2".into(), "invalid_product_id".into(), reason.clone()),
            ("6".into(), "invalid_product_id".into(), reason),
        ]
    );
    let archived: Vec<String> = read_archive(s.objects.as_ref(), "events/")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.event.event_id.to_string())
        .collect();
    assert_eq!(archived, ["e1", "e3", "e4", "e5"]);

    // The made-up product is nowhere: not a product, not trending, not in u's history.
    let products = s.store.products(&["EVIL-PRODUCT", "sofa-1"]).await.unwrap();
    assert!(products[0].is_none());
    assert_eq!(products[1].as_ref().unwrap().counts.view, 2);
    let trending = s.store.trending().await.unwrap();
    assert!(
        trending.items.iter().all(|(id, _)| id != "EVIL-PRODUCT"),
        "{trending:?}"
    );
    let u = s.store.user("u").await.unwrap().unwrap();
    assert_eq!(u.counts.purchase, 0, "the refused purchase is not u's");
    assert!(s.store.user("w").await.unwrap().is_none());
}

#[tokio::test]
async fn an_unreadable_catalog_fails_the_batch_before_anything_is_applied() {
    let catalog = shop();
    catalog.down.store(true, Ordering::SeqCst);
    let s = stores(catalog.clone());
    let mut p = processor(&s, vec![]).await;
    let err = p.process_batch(records()).await.unwrap_err();
    assert!(
        matches!(&err, ProcessorError::Catalog(m) if m.contains("table unreachable")),
        "{err}"
    );
    // Nothing was applied, archived or dead-lettered: a retry of the same records
    // (what Kinesis' event source mapping or the worker's next round does) counts each
    // event once.
    assert_eq!(p.stats().accepted.load(Ordering::Relaxed), 0);
    assert_eq!(p.stats().dead_letters.load(Ordering::Relaxed), 0);
    catalog.down.store(false, Ordering::SeqCst);
    p.process_batch(records()).await.unwrap();
    p.commit().await.unwrap();
    assert_eq!(p.stats().accepted.load(Ordering::Relaxed), 4);
    assert_eq!(p.stats().dead_letters.load(Ordering::Relaxed), 2);
    let products = s.store.products(&["sofa-1"]).await.unwrap();
    assert_eq!(products[0].as_ref().unwrap().counts.view, 2);
    assert_eq!(
        read_archive(s.objects.as_ref(), "events/")
            .await
            .unwrap()
            .len(),
        4
    );
}

#[tokio::test]
async fn product_events_are_written_to_the_catalog_before_the_check_and_never_aggregated() {
    let catalog = shop();
    let s = stores(catalog.clone());
    let entry = |i: i64, id: &str, title: &str, stock: i64| {
        let mut e = Event::new(
            &format!("p{i}"),
            Timestamp(T0 + i * 1000),
            "backoffice",
            EventType::Product,
        )
        .with_product(id, Some("furniture.chair"));
        e.price = Some(Money::new(12_900, "USD"));
        e.product = Some(ProductInfo {
            title: title.into(),
            stock,
            active: true,
        });
        e
    };
    let view = |i: i64, id: &str| {
        Event::new(
            &format!("e{i}"),
            Timestamp(T0 + i * 1000),
            "u",
            EventType::View,
        )
        .with_product(id, Some("furniture.chair"))
    };
    let events = [
        view(1, "chair-9"),
        entry(2, "chair-9", "Chair nine", 4),
        view(3, "chair-9"),
        entry(4, "chair-9", "Chair nine", 3),
        entry(5, "chair-0", "refused", 1),
        view(6, "chair-0"),
    ];
    let (_tx, rx) = watch::channel(false);
    let summary = processor(&s, raw(&events)).await.run(rx).await.unwrap();
    // Written in stream order, before the check: both views of chair-9 count (the first
    // came before its entry, in the same batch); the refused entry and the view of the
    // product it would have added are dead letters.
    assert_eq!(
        *catalog.written.lock().unwrap(),
        [
            ("chair-9".to_string(), "Chair nine".to_string(), 4),
            ("chair-9".to_string(), "Chair nine".to_string(), 3)
        ]
    );
    assert_eq!((summary.accepted, summary.dead_letters), (4, 2));
    let dead: Vec<(String, String)> = read_dead_letters(s.objects.as_ref(), "dead-letter/")
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.sequence_number.to_string(), d.kind))
        .collect();
    assert_eq!(
        dead,
        [
            ("5".to_string(), "invalid_product".to_string()),
            ("6".to_string(), "invalid_product_id".to_string())
        ]
    );
    // The entries are archived (their catalog part read back from the raw record) and
    // aggregated into nothing: chair-9 has the two views, nobody is `backoffice`.
    let archived = read_archive(s.objects.as_ref(), "events/").await.unwrap();
    let entries: Vec<&Event> = archived
        .iter()
        .map(|r| &r.event)
        .filter(|e| e.event_type == EventType::Product)
        .collect();
    assert_eq!(entries, [&events[1], &events[3]]);
    let chair = s.store.products(&["chair-9"]).await.unwrap();
    let chair = chair[0].as_ref().unwrap();
    assert_eq!((chair.counts.view, chair.counts.purchase), (2, 0));
    assert!(s.store.user("backoffice").await.unwrap().is_none());
}
