//! Two workers share a 4-shard Kinesis stream through the DynamoDB lease table, wired the
//! way `recstream run` in AWS mode wires them (background coordinator, one source per
//! lease, checkpoint after each batch); one crashes (tasks aborted, nothing released) and
//! the other takes its shards over after the lease duration, resuming at their
//! checkpoints.
//!
//! Needs the AWS emulator: `AWS_ENDPOINT_URL` (scripts/test starts moto_server). Under
//! `CI=true` a missing endpoint fails; otherwise the test says loudly that it did not run.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use recstream_ingest::aws::{AwsConfig, RetryPolicy};
use recstream_ingest::source::Source;
use recstream_ingest::source::kinesis::{
    ConsumerConfig, KinesisApi, KinesisProducer, KinesisShardSource, LeaseConfig, LeaseCoordinator,
    ProducerConfig, SdkKinesis, ensure_stream, list_all_shards,
};
use recstream_ingest::{IngestError, SeqNo, ShardCheckpoint, ShardId};
use tokio::sync::watch;
use tokio::task::JoinHandle;

fn emulator_available(test: &str) -> bool {
    if std::env::var("AWS_ENDPOINT_URL").is_ok() {
        return true;
    }
    let msg = format!(
        "{test}: AWS_ENDPOINT_URL is not set, so this AWS emulator test cannot run; \
         run the suite with `scripts/test`, which starts moto_server and sets it"
    );
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{msg}");
    }
    eprintln!("\n!!!!!!!!!! NOT RUN: {msg}\n");
    false
}

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("rs-{tag}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

/// What a processor saw: (worker, shard, seq, user, n).
type Log = Arc<Mutex<Vec<(String, ShardId, SeqNo, String, u64)>>>;

struct Worker {
    name: String,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    shutdown: watch::Sender<bool>,
}

/// Starts a worker: the coordinator in the background, and a processor task per lease.
fn start_worker(
    name: &str,
    aws: &AwsConfig,
    coordinator: LeaseCoordinator,
    api: Arc<dyn KinesisApi>,
    log: Log,
) -> Worker {
    let (shutdown, rx) = watch::channel(false);
    let (mut leases, bg) = coordinator.spawn(rx);
    let tasks = Arc::new(Mutex::new(vec![bg]));
    let spawner = {
        let tasks = tasks.clone();
        let coordinator = coordinator.clone();
        let stream = aws.stream.clone();
        let policy = aws.retry_policy();
        let name = name.to_string();
        tokio::spawn(async move {
            while let Some(lease) = leases.recv().await {
                let after = lease.checkpoint().and_then(|c| c.committed.clone());
                let cfg = ConsumerConfig {
                    poll_interval_ms: 20,
                    idle_poll_max_ms: 100,
                    closed_probe_interval_ms: 500,
                    ..Default::default()
                };
                let mut source = KinesisShardSource::new(
                    api.clone(),
                    stream.clone(),
                    lease.shard().clone(),
                    after,
                    cfg,
                    policy,
                )
                .with_lease(lease.clone());
                let (coordinator, log, name) = (coordinator.clone(), log.clone(), name.clone());
                let task = tokio::spawn(async move {
                    loop {
                        let batch = match source.next_batch(100).await {
                            Ok(Some(b)) => b,
                            Ok(None) => return,
                            Err(IngestError::LeaseLost { .. }) => return,
                            Err(e) => panic!("{name}: {e}"),
                        };
                        let Some(last) = batch.last().map(|r| r.seq.clone()) else {
                            continue;
                        };
                        {
                            let mut log = log.lock().unwrap();
                            for r in &batch {
                                let v: serde_json::Value = serde_json::from_slice(&r.data).unwrap();
                                log.push((
                                    name.clone(),
                                    r.shard.clone(),
                                    r.seq.clone(),
                                    v["user"].as_str().unwrap().to_string(),
                                    v["n"].as_u64().unwrap(),
                                ));
                            }
                        }
                        let cp = ShardCheckpoint {
                            committed: Some(last),
                            ..Default::default()
                        };
                        match coordinator.save_checkpoint(source.shard(), &cp).await {
                            Ok(()) => {}
                            Err(IngestError::LeaseLost { .. }) => return,
                            Err(e) => panic!("{name}: checkpoint: {e}"),
                        }
                    }
                });
                tasks.lock().unwrap().push(task);
            }
        })
    };
    tasks.lock().unwrap().push(spawner);
    Worker {
        name: name.to_string(),
        tasks,
        shutdown,
    }
}

impl Worker {
    /// SIGKILL-like: every task stops where it is, nothing is released.
    fn crash(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

/// A fresh 4-shard stream on the emulator, its API client and a producer that sends one
/// PutRecords at a time (moto loses records under concurrent puts into one shard).
async fn emulator_stream(
    tag: &str,
    lease_duration_ms: u64,
) -> (AwsConfig, Arc<dyn KinesisApi>, KinesisProducer) {
    let aws = AwsConfig {
        region: Some("us-east-1".into()),
        stream: unique(tag),
        table_prefix: format!("{}-", unique(tag)),
        lease_duration_ms,
        max_attempts: 6,
        base_backoff_ms: 5,
        max_backoff_ms: 100,
        ..Default::default()
    };
    let policy: RetryPolicy = aws.retry_policy();
    let kinesis = SdkKinesis::from_env(&aws).await;
    ensure_stream(kinesis.client(), &aws.stream, 4, &policy)
        .await
        .unwrap();
    let api: Arc<dyn KinesisApi> = Arc::new(kinesis);
    let producer = KinesisProducer::new(
        api.clone(),
        aws.stream.clone(),
        policy,
        ProducerConfig {
            max_in_flight: 1,
            ..Default::default()
        },
    );
    (aws, api, producer)
}

async fn put_events(producer: &KinesisProducer, users: usize, from: u64, per_user: u64) {
    let mut records = Vec::new();
    for n in from..from + per_user {
        for u in 0..users {
            records.push((
                format!("user-{u}"),
                Bytes::from(format!(r#"{{"user":"user-{u}","n":{n}}}"#)),
            ));
        }
    }
    producer.put(records).await.unwrap();
}

async fn wait_for(log: &Log, want: usize, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let distinct: HashSet<(String, u64)> = log
            .lock()
            .unwrap()
            .iter()
            .map(|(_, _, _, u, n)| (u.clone(), *n))
            .collect();
        if distinct.len() >= want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {want} events processed within {timeout:?}",
            distinct.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_a_stream_and_the_survivor_takes_over_after_a_crash() {
    if !emulator_available("two_workers_share_a_stream_and_the_survivor_takes_over_after_a_crash") {
        return;
    }
    let (aws, api, producer) = emulator_stream("workers", 2_000).await;
    let lease_cfg = |w: &str| LeaseConfig {
        worker_id: Some(w.into()),
        renew_interval_ms: Some(400),
        sync_interval_ms: Some(300),
        ..Default::default()
    };
    let ca = LeaseCoordinator::from_env(&aws, &lease_cfg("worker-a")).await;
    let cb = LeaseCoordinator::from_env(&aws, &lease_cfg("worker-b")).await;
    ca.create_table_if_missing().await.unwrap();

    let log: Log = Arc::default();
    let (users, half) = (40usize, 25u64);
    put_events(&producer, users, 0, half).await;
    let a = start_worker("worker-a", &aws, ca.clone(), api.clone(), log.clone());
    let b = start_worker("worker-b", &aws, cb.clone(), api.clone(), log.clone());

    // Both work: the shards are split two and two, and the first half is processed.
    wait_for(&log, users * half as usize, Duration::from_secs(30)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !(ca.held().len() == 2 && cb.held().len() == 2) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no balance: a {:?} b {:?}",
            ca.held(),
            cb.held()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let a_shards = ca.held();

    // A crashes mid-stream; more events arrive; B takes A's shards after the lease
    // duration and processes everything from A's checkpoints on.
    a.crash();
    put_events(&producer, users, half, half).await;
    wait_for(&log, users * 2 * half as usize, Duration::from_secs(40)).await;
    assert_eq!(cb.held().len(), 4, "b holds every shard: {:?}", cb.held());

    let log = log.lock().unwrap().clone();
    // Nothing lost.
    let mut per_user: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (_, _, _, u, n) in &log {
        per_user.entry(u.clone()).or_default().push(*n);
    }
    for (u, ns) in &per_user {
        let distinct: HashSet<u64> = ns.iter().copied().collect();
        assert_eq!(
            distinct.len() as u64,
            2 * half,
            "{u}: every event processed"
        );
    }
    // At least once: redelivery only of what A read after its last checkpoint.
    let duplicates = log.len() - users * 2 * half as usize;
    assert!(duplicates <= 4 * 100, "{duplicates} redelivered records");
    // B processed A's shards' second half.
    for s in &a_shards {
        assert!(
            log.iter()
                .any(|(w, sh, _, _, n)| w == &b.name && sh == s && *n >= half),
            "b took over {s}"
        );
    }
    // Checkpoints end at each shard's last record, and the dead worker cannot move them.
    let shards = list_all_shards(api.as_ref(), &aws.stream, &aws.retry_policy())
        .await
        .unwrap();
    for s in &shards {
        let last = log
            .iter()
            .filter(|(_, sh, ..)| *sh == s.id)
            .map(|(_, _, seq, ..)| seq.clone())
            .max();
        // the last batch's checkpoint may still be on its way
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let cp = cb.load_checkpoint(&s.id).await.unwrap().unwrap_or_default();
            if cp.committed == last {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "checkpoint of {}: {:?}, last record {last:?}",
                s.id,
                cp.committed
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let err = ca
        .save_checkpoint(
            &a_shards[0],
            &ShardCheckpoint {
                committed: Some(SeqNo::from_u64(1)),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, IngestError::LeaseLost { ref owner, .. } if owner == "worker-b"),
        "{err}"
    );

    // Clean shutdown of B releases its leases.
    b.shutdown.send_replace(true);
    b.crash();
    cb.release().await.unwrap();
    assert!(cb.leases().await.unwrap().iter().all(|l| l.owner.is_none()));
    drop(a.shutdown);
}

/// Three workers on four shards settle at 2/1/1 (a worker with no lease steals from one
/// holding two); one holding two is killed, and the survivors own every shard again
/// within two lease durations of the kill (expiry is a lease duration of a standing
/// counter, observed in rounds every lease_duration / 3). Defaults for the renew and
/// sync intervals, as `recstream run` uses them. `RECSTREAM_TAKEOVER_LEASE_MS` sets the
/// lease duration (default 3000) to measure takeover at the production value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_balance_two_one_one_and_take_over_a_killed_worker_within_two_lease_durations()
 {
    if !emulator_available(
        "three_workers_balance_two_one_one_and_take_over_a_killed_worker_within_two_lease_durations",
    ) {
        return;
    }
    let lease_ms: u64 = std::env::var("RECSTREAM_TAKEOVER_LEASE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000);
    let lease_duration = Duration::from_millis(lease_ms);
    let (aws, api, producer) = emulator_stream("three", lease_ms).await;
    let names = ["worker-a", "worker-b", "worker-c"];
    let mut coordinators = Vec::new();
    for w in names {
        let cfg = LeaseConfig {
            worker_id: Some(w.into()),
            ..Default::default()
        };
        coordinators.push(LeaseCoordinator::from_env(&aws, &cfg).await);
    }
    coordinators[0].create_table_if_missing().await.unwrap();
    let log: Log = Arc::default();
    let (users, per_user) = (20usize, 5u64);
    put_events(&producer, users, 0, per_user).await;
    let workers: Vec<Worker> = names
        .iter()
        .zip(&coordinators)
        .map(|(n, c)| start_worker(n, &aws, c.clone(), api.clone(), log.clone()))
        .collect();
    fn loads(cs: &[&LeaseCoordinator]) -> Vec<usize> {
        let mut l: Vec<usize> = cs.iter().map(|c| c.held().len()).collect();
        l.sort();
        l
    }

    // 2/1/1, and it stays there (no ping-pong) for a few rounds.
    let all: Vec<&LeaseCoordinator> = coordinators.iter().collect();
    let deadline = tokio::time::Instant::now() + 10 * lease_duration;
    while loads(&all) != [1, 1, 2] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no 2/1/1 balance: {:?}",
            all.iter().map(|c| c.held()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let settled = tokio::time::Instant::now();
    while settled.elapsed() < lease_duration {
        assert_eq!(loads(&all), [1, 1, 2], "balance holds");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for(&log, users * per_user as usize, 10 * lease_duration).await;

    // Kill one holding two: nothing released, no more renewals.
    let victim = coordinators
        .iter()
        .position(|c| c.held().len() == 2)
        .unwrap();
    let orphaned = coordinators[victim].held();
    workers[victim].crash();
    let killed = tokio::time::Instant::now();
    let survivors: Vec<&LeaseCoordinator> = coordinators
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, c)| c)
        .collect();
    let owned = |s: &ShardId| survivors.iter().any(|c| c.held().contains(s));
    while !orphaned.iter().all(&owned) {
        assert!(
            killed.elapsed() < 2 * lease_duration,
            "{orphaned:?} not taken over within two lease durations ({lease_duration:?}): \
             survivors hold {:?}",
            survivors.iter().map(|c| c.held()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let takeover = killed.elapsed();
    eprintln!(
        "takeover of {} leases after a kill: {:.2} s (lease duration {:.1} s, {:.2} lease durations)",
        orphaned.len(),
        takeover.as_secs_f64(),
        lease_duration.as_secs_f64(),
        takeover.as_secs_f64() / lease_duration.as_secs_f64()
    );
    // Never before the holder could have given it up: its last renewal was at most a
    // renew interval (lease_duration / 3) before the kill.
    assert!(
        takeover >= lease_duration - lease_duration / 3,
        "taken after {takeover:?}, before the lease could expire"
    );
    assert_eq!(loads(&survivors), [2, 2]);

    // The survivors process what arrives on the orphaned shards from their checkpoints.
    put_events(&producer, users, per_user, per_user).await;
    wait_for(&log, users * 2 * per_user as usize, 10 * lease_duration).await;
    let dead = names[victim];
    let log = log.lock().unwrap().clone();
    for s in &orphaned {
        assert!(
            log.iter()
                .any(|(w, sh, _, _, n)| w != dead && sh == s && *n >= per_user),
            "{s} processed after the kill"
        );
    }

    for (i, w) in workers.iter().enumerate() {
        if i != victim {
            w.shutdown.send_replace(true);
            w.crash();
            coordinators[i].release().await.unwrap();
        }
    }
}
