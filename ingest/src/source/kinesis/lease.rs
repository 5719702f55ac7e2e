//! The lease table: which worker reads which shard, and each shard's checkpoint — the
//! Kinesis Client Library's pattern on DynamoDB.
//!
//! ```text
//!  table `<prefix>leases`, one item per shard (hash key shard_id):
//!    shard_id | owner? | lease_counter | lease_token? | expires_at_ms | checkpoint (JSON)
//!             | parent_shard_ids | finished
//!
//!  sync_shards   ListShards (paged) ─► PutItem if attribute_not_exists(shard_id)
//!  acquire       every renew interval, and at the instant the earliest observed foreign
//!                lease would expire: Scan (consistent) ─► observe counters ─► plan
//!                  ([`plan`]: fair share ⌈active / live workers⌉, free then expired
//!                  leases, never a child whose parents are not all finished, still
//!                  short? steal one from the busiest worker holding two more)
//!                  take each:  UpdateItem if lease_counter = seen
//!  renew         every renew interval: UpdateItem lease_counter + 1 if owner = me AND token
//!                  condition fails ─► lost (taken); no success for a lease duration ─► lost
//!  save_checkpoint  UpdateItem checkpoint if owner = me AND token = mine
//!                  fails ─► LeaseLost (a zombie never moves a checkpoint)
//!                  finished ─► the same update marks the shard finished and frees the lease
//!  release       REMOVE owner, token if they are still mine (clean shutdown)
//! ```
//!
//! Expiry follows the KCL: a lease is expired when this worker has seen its counter stand
//! still for a whole lease duration, on its own monotonic clock — wall clocks of
//! different hosts are never compared (`expires_at_ms` is written for operators only). A
//! holder therefore considers a lease lost once no renewal succeeded for a lease
//! duration, before any other worker can have seen it stand still that long. The token
//! (`<worker>:<counter at take>`) names one tenure, so a worker that lost a lease and got
//! it back cannot be confused with its own zombie.
//!
//! Each taken lease yields a [`LeaseHandle`] with a `lost` signal (a `watch`) that the
//! shard's processor stops on; the handle also releases the lease and registers a
//! closed shard's children.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::config::LeaseConfig;
use super::consumer::ChildShardInfo;
use super::metrics as km;
use super::{KinesisApi, SdkKinesis, list_all_shards};
use crate::aws::dynamodb::attr::{self, n, s};
use crate::aws::dynamodb::{KeySchema, ensure_table, sdk_error as dynamo_error};
use crate::aws::{AwsConfig, RetryPolicy, describe, is_retriable, retry, sdk_config};
use crate::error::IngestError;
use crate::record::{ShardCheckpoint, ShardId};

pub mod plan;

const DYNAMODB: &str = "dynamodb";

// Attribute names (always through expression attribute names: `owner` is reserved).
const A_SHARD: &str = "shard_id";
const A_OWNER: &str = "owner";
const A_COUNTER: &str = "lease_counter";
const A_TOKEN: &str = "lease_token";
const A_EXPIRES: &str = "expires_at_ms";
const A_CHECKPOINT: &str = "checkpoint";
const A_PARENTS: &str = "parent_shard_ids";
const A_FINISHED: &str = "finished";

/// One lease item as read from the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The shard this lease is for (the table's hash key).
    pub shard: ShardId,
    /// The worker holding the lease; `None` = free.
    pub owner: Option<String>,
    /// Increases with every take and renewal; a counter that stands still for a lease
    /// duration marks the lease expired (see [`plan`]).
    pub counter: u64,
    /// The tenure that holds the lease ([`plan::token`]); checkpoint writes are conditional
    /// on it.
    pub token: Option<String>,
    /// Wall-clock expiry the holder wrote (informational; see the module docs).
    pub expires_at_ms: Option<i64>,
    /// The shard's checkpoint, stored in the lease item.
    pub checkpoint: Option<ShardCheckpoint>,
    /// Parent shards (after a reshard); the lease is active once every parent is finished.
    pub parents: Vec<ShardId>,
    /// The shard has been read to its end; its lease is never taken again.
    pub finished: bool,
}

impl Lease {
    fn from_item(item: &HashMap<String, AttributeValue>) -> Result<Lease, IngestError> {
        let shard = attr::get_s(item, A_SHARD)
            .ok_or_else(|| corrupt("lease item without shard_id".into()))?;
        let checkpoint =
            match attr::get_s(item, A_CHECKPOINT) {
                Some(json) => Some(serde_json::from_str::<ShardCheckpoint>(json).map_err(|e| {
                    corrupt(format!("checkpoint of shard {shard} is not valid: {e}"))
                })?),
                None => None,
            };
        Ok(Lease {
            owner: attr::get_s(item, A_OWNER)
                .filter(|o| !o.is_empty())
                .map(str::to_string),
            counter: attr::get_n(item, A_COUNTER).unwrap_or(0),
            token: attr::get_s(item, A_TOKEN).map(str::to_string),
            expires_at_ms: attr::get_n(item, A_EXPIRES),
            checkpoint,
            parents: attr::get_string_list(item, A_PARENTS)
                .iter()
                .map(|p| ShardId::new(p))
                .collect(),
            finished: attr::get_bool(item, A_FINISHED).unwrap_or(false),
            shard: ShardId::new(shard),
        })
    }
}

fn corrupt(message: String) -> IngestError {
    IngestError::Aws {
        service: DYNAMODB,
        operation: "lease item",
        message,
        retriable: false,
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// State shared by the coordinator and a lease's handle.
struct Signal {
    tx: watch::Sender<bool>,
    /// Why / to whom the lease was lost.
    lost_to: Mutex<Option<String>>,
    /// Send time of the last successful take or renewal.
    renewed: Mutex<Instant>,
    duration: Duration,
}

impl Signal {
    fn lose(&self, to: String) {
        let mut g = self.lost_to.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            *g = Some(to);
        }
        drop(g);
        self.tx.send_replace(true);
    }

    fn is_lost(&self) -> bool {
        *self.tx.borrow()
            || plan::stood_still(
                *self.renewed.lock().unwrap_or_else(|e| e.into_inner()),
                Instant::now(),
                self.duration,
            )
    }
}

struct Held {
    token: String,
    signal: Arc<Signal>,
}

#[derive(Default)]
struct State {
    held: HashMap<ShardId, Held>,
    observed: plan::Observed,
}

struct Inner {
    dynamo: aws_sdk_dynamodb::Client,
    kinesis: Arc<dyn KinesisApi>,
    table: String,
    stream: String,
    worker: String,
    lease_duration: Duration,
    renew_interval: Duration,
    sync_interval: Duration,
    steal: bool,
    max_leases: Option<usize>,
    policy: RetryPolicy,
    state: Mutex<State>,
    acquiring: tokio::sync::Mutex<()>,
}

/// The leases of one worker over one stream. Cheap to clone (shared state).
#[derive(Clone)]
pub struct LeaseCoordinator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LeaseCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseCoordinator")
            .field("worker", &self.inner.worker)
            .field("table", &self.inner.table)
            .field("stream", &self.inner.stream)
            .finish_non_exhaustive()
    }
}

/// One held lease, handed to the shard's source and processor.
#[derive(Clone)]
pub struct LeaseHandle {
    shard: ShardId,
    checkpoint: Option<ShardCheckpoint>,
    signal: Arc<Signal>,
    coordinator: LeaseCoordinator,
}

impl std::fmt::Debug for LeaseHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseHandle")
            .field("shard", &self.shard)
            .field("checkpoint", &self.checkpoint)
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl LeaseHandle {
    /// The shard this lease is for.
    pub fn shard(&self) -> &ShardId {
        &self.shard
    }

    /// The checkpoint stored in the lease when it was taken (resume after `committed`).
    pub fn checkpoint(&self) -> Option<&ShardCheckpoint> {
        self.checkpoint.as_ref()
    }

    /// Whether the lease is gone: taken by another worker, not renewed for a lease
    /// duration, released, or finished. The shard's processing must stop.
    pub fn is_lost(&self) -> bool {
        self.signal.is_lost()
    }

    /// Who holds the lease now, or why it was given up (for messages).
    pub fn lost_to(&self) -> String {
        self.signal
            .lost_to
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| "nobody: not renewed within the lease duration".into())
    }

    /// Turns `true` when the lease is lost, released or finished (usable as the
    /// processor's shutdown signal). A renewal that merely runs late is seen by
    /// [`LeaseHandle::is_lost`] at once and by this signal at the next renewal round.
    pub fn lost_signal(&self) -> watch::Receiver<bool> {
        self.signal.tx.subscribe()
    }

    /// The coordinator that holds the lease.
    pub fn coordinator(&self) -> &LeaseCoordinator {
        &self.coordinator
    }

    /// Gives the lease back (if still ours).
    pub async fn release(&self) -> Result<(), IngestError> {
        self.coordinator.release_shard(&self.shard).await
    }

    /// Marks the shard finished (read to its end and checkpointed) and frees the lease,
    /// so that its children can be taken. Idempotent.
    pub async fn finish(&self) -> Result<(), IngestError> {
        self.coordinator.finish_shard(&self.shard).await
    }

    /// Inserts lease items for the children of this (closed) shard.
    pub async fn register_children(&self, children: &[ChildShardInfo]) -> Result<(), IngestError> {
        for c in children {
            self.coordinator.insert_lease(&c.shard, &c.parents).await?;
        }
        Ok(())
    }
}

/// Default worker id: host, process id and a random suffix.
pub fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{host}-{}-{:08x}", std::process::id(), nanos ^ 0x5bd1_e995)
}

impl LeaseCoordinator {
    /// A coordinator for `aws.stream` on table `aws.table("leases")`.
    pub fn new(
        dynamo: aws_sdk_dynamodb::Client,
        kinesis: Arc<dyn KinesisApi>,
        aws: &AwsConfig,
        cfg: &LeaseConfig,
    ) -> LeaseCoordinator {
        let lease_duration = Duration::from_millis(aws.lease_duration_ms);
        let renew_interval = cfg
            .renew_interval_ms
            .map(Duration::from_millis)
            .unwrap_or(lease_duration / 3);
        LeaseCoordinator {
            inner: Arc::new(Inner {
                dynamo,
                kinesis,
                table: aws.table("leases"),
                stream: aws.stream.clone(),
                worker: cfg.worker_id.clone().unwrap_or_else(default_worker_id),
                lease_duration,
                renew_interval,
                sync_interval: cfg
                    .sync_interval_ms
                    .map(Duration::from_millis)
                    .unwrap_or(lease_duration),
                steal: cfg.steal,
                max_leases: cfg.max_leases,
                policy: aws.retry_policy(),
                state: Mutex::new(State::default()),
                acquiring: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// A coordinator with clients from the standard SDK environment.
    pub async fn from_env(aws: &AwsConfig, cfg: &LeaseConfig) -> LeaseCoordinator {
        let sdk = sdk_config(aws.region.as_deref()).await;
        LeaseCoordinator::new(
            aws_sdk_dynamodb::Client::new(&sdk),
            Arc::new(SdkKinesis(aws_sdk_kinesis::Client::new(&sdk))),
            aws,
            cfg,
        )
    }

    /// This worker's id in the lease table.
    pub fn worker_id(&self) -> &str {
        &self.inner.worker
    }

    /// The lease table's full name.
    pub fn table(&self) -> &str {
        &self.inner.table
    }

    /// The stream whose shards are leased.
    pub fn stream(&self) -> &str {
        &self.inner.stream
    }

    /// How long a lease lives without renewal.
    pub fn lease_duration(&self) -> Duration {
        self.inner.lease_duration
    }

    /// How often held leases are renewed.
    pub fn renew_interval(&self) -> Duration {
        self.inner.renew_interval
    }

    /// The shards this worker holds now.
    pub fn held(&self) -> Vec<ShardId> {
        let mut v: Vec<ShardId> = self.state().held.keys().cloned().collect();
        v.sort();
        v
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates the lease table unless it exists (an existing one must have the lease
    /// key schema), and waits until it is ACTIVE (`recstream init`; idempotent).
    pub async fn create_table_if_missing(&self) -> Result<bool, IngestError> {
        let i = &self.inner;
        ensure_table(&i.dynamo, &i.table, KeySchema::hash(A_SHARD), &i.policy).await
    }

    /// Every lease item (consistent Scan, paged).
    pub async fn leases(&self) -> Result<Vec<Lease>, IngestError> {
        let i = &self.inner;
        let mut out = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let page = retry(&i.policy, DYNAMODB, "Scan", is_retriable, || {
                i.dynamo
                    .scan()
                    .table_name(&i.table)
                    .consistent_read(true)
                    .set_exclusive_start_key(start.clone())
                    .send()
            })
            .await
            .map_err(|e| dynamo_error("Scan", &e))?;
            for item in page.items() {
                out.push(Lease::from_item(item)?);
            }
            match page.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.shard.cmp(&b.shard));
        Ok(out)
    }

    /// Inserts a lease item for every shard of the stream that has none (ListShards with
    /// pagination; conditional puts, so concurrent workers insert each once). Returns how
    /// many were inserted.
    #[tracing::instrument(skip(self), fields(worker = %self.inner.worker))]
    pub async fn sync_shards(&self) -> Result<usize, IngestError> {
        let shards = list_all_shards(
            self.inner.kinesis.as_ref(),
            &self.inner.stream,
            &self.inner.policy,
        )
        .await?;
        let existing: HashSet<ShardId> =
            self.leases().await?.into_iter().map(|l| l.shard).collect();
        let mut inserted = 0;
        for s in shards.iter().filter(|s| !existing.contains(&s.id)) {
            if self.insert_lease(&s.id, &s.parents).await? {
                inserted += 1;
            }
        }
        if inserted > 0 {
            tracing::info!(inserted, "lease items created for new shards");
        }
        Ok(inserted)
    }

    /// Inserts the lease item of `shard` unless it exists. Returns whether it did.
    pub async fn insert_lease(
        &self,
        shard: &ShardId,
        parents: &[ShardId],
    ) -> Result<bool, IngestError> {
        let i = &self.inner;
        let parents = AttributeValue::L(parents.iter().map(|p| s(p.as_str())).collect());
        let res = retry(&i.policy, DYNAMODB, "PutItem", is_retriable, || {
            i.dynamo
                .put_item()
                .table_name(&i.table)
                .item(A_SHARD, s(shard.as_str()))
                .item(A_COUNTER, n(0))
                .item(A_PARENTS, parents.clone())
                .item(A_FINISHED, AttributeValue::Bool(false))
                .condition_expression("attribute_not_exists(#s)")
                .expression_attribute_names("#s", A_SHARD)
                .send()
        })
        .await;
        match res {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Ok(false)
            }
            Err(e) => Err(dynamo_error("PutItem", &e)),
        }
    }

    /// One acquisition round: scans the table, lets [`plan::plan`] decide, drops the
    /// leases the table gives to someone else, and takes what the plan says (each take
    /// conditional on the counter seen). Returns the leases newly taken.
    #[tracing::instrument(skip(self), fields(worker = %self.inner.worker))]
    pub async fn acquire(&self) -> Result<Vec<LeaseHandle>, IngestError> {
        let _one_at_a_time = self.inner.acquiring.lock().await;
        let leases = self.leases().await?;
        let now = Instant::now();
        let i = &self.inner;
        let decided = {
            let mut st = self.state();
            st.observed.observe(&leases, now);
            let held: HashMap<ShardId, String> = st
                .held
                .iter()
                .map(|(s, h)| (s.clone(), h.token.clone()))
                .collect();
            plan::plan(
                &leases,
                &st.observed,
                plan::Me {
                    id: &i.worker,
                    held: &held,
                },
                now,
                &plan::Balance {
                    lease_duration: i.lease_duration,
                    steal: i.steal,
                    max_leases: i.max_leases,
                },
            )
        };
        for (shard, owner) in &decided.lost {
            let removed = self.state().held.remove(shard);
            if let Some(h) = removed {
                tracing::warn!(shard = %shard, owner = %owner, "lease taken by another worker");
                metrics::counter!(km::LEASES_LOST_TOTAL, "how" => "taken").increment(1);
                h.signal.lose(owner.clone());
            }
        }
        let mut taken = Vec::new();
        for t in decided.take.iter().chain(decided.steal.as_ref()) {
            if t.how == plan::How::Stolen {
                tracing::info!(shard = %t.shard, from = ?t.from, target = decided.target, "stealing a lease for balance");
            }
            if let Some(h) = self.take(t).await? {
                taken.push(h);
            }
        }
        metrics::gauge!(km::LEASES_HELD).set(self.state().held.len() as f64);
        Ok(taken)
    }

    /// Takes `l` if its counter is still the one we saw.
    async fn take(&self, l: &plan::Take) -> Result<Option<LeaseHandle>, IngestError> {
        let i = &self.inner;
        let how = l.how.as_str();
        let next = l.counter + 1;
        let token = plan::token(&i.worker, next);
        let sent = Instant::now();
        let res = retry(&i.policy, DYNAMODB, "UpdateItem", is_retriable, || {
            i.dynamo
                .update_item()
                .table_name(&i.table)
                .key(A_SHARD, s(l.shard.as_str()))
                .update_expression("SET #o = :me, #t = :tok, #c = :next, #e = :exp")
                .condition_expression("#c = :seen")
                .expression_attribute_names("#o", A_OWNER)
                .expression_attribute_names("#t", A_TOKEN)
                .expression_attribute_names("#c", A_COUNTER)
                .expression_attribute_names("#e", A_EXPIRES)
                .expression_attribute_values(":me", s(&i.worker))
                .expression_attribute_values(":tok", s(&token))
                .expression_attribute_values(":next", n(next))
                .expression_attribute_values(":seen", n(l.counter))
                .expression_attribute_values(
                    ":exp",
                    n(now_ms() + i.lease_duration.as_millis() as i64),
                )
                .return_values(ReturnValue::AllNew)
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .send()
        })
        .await;
        let item = match res {
            Ok(out) => out.attributes().cloned().unwrap_or_default(),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                // A retried call whose first attempt went through reads as a failed
                // condition; the token tells.
                match condition_item(e.err()) {
                    Some(item) if item.get(A_TOKEN).and_then(|v| v.as_s().ok()) == Some(&token) => {
                        item
                    }
                    _ => {
                        tracing::debug!(shard = %l.shard, "lease taken by someone else first");
                        return Ok(None);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(shard = %l.shard, error = %describe(&e), "could not take lease");
                return Ok(None);
            }
        };
        let lease = Lease::from_item(&item)?;
        let (tx, _) = watch::channel(false);
        let signal = Arc::new(Signal {
            tx,
            lost_to: Mutex::new(None),
            renewed: Mutex::new(sent),
            duration: i.lease_duration,
        });
        {
            let mut st = self.state();
            st.held.insert(
                l.shard.clone(),
                Held {
                    token,
                    signal: signal.clone(),
                },
            );
            st.observed.taken(&l.shard, next, &i.worker, sent);
        }
        metrics::counter!(km::LEASES_TAKEN_TOTAL, "how" => how).increment(1);
        tracing::info!(shard = %l.shard, how, previous = ?l.from, "lease taken");
        Ok(Some(LeaseHandle {
            shard: l.shard.clone(),
            checkpoint: lease.checkpoint,
            signal,
            coordinator: self.clone(),
        }))
    }

    /// Renews every held lease once. Leases that fail their condition, or have not been
    /// renewed for a lease duration, are lost: their signal fires. Returns those shards.
    #[tracing::instrument(skip(self), fields(worker = %self.inner.worker))]
    pub async fn renew(&self) -> Result<Vec<ShardId>, IngestError> {
        let held: Vec<(ShardId, String, Arc<Signal>)> = self
            .state()
            .held
            .iter()
            .map(|(k, h)| (k.clone(), h.token.clone(), h.signal.clone()))
            .collect();
        let lost: Vec<ShardId> = futures::stream::iter(held)
            .map(|(shard, token, signal)| async move {
                match self.renew_one(&shard, &token, &signal).await {
                    Some(reason) => {
                        self.drop_held(&shard, &token, reason);
                        Some(shard)
                    }
                    None => None,
                }
            })
            .buffer_unordered(16)
            .filter_map(|x| async move { x })
            .collect()
            .await;
        metrics::gauge!(km::LEASES_HELD).set(self.state().held.len() as f64);
        Ok(lost)
    }

    /// `Some(reason)` when the lease is lost.
    async fn renew_one(
        &self,
        shard: &ShardId,
        token: &str,
        signal: &Signal,
    ) -> Option<(String, &'static str)> {
        let i = &self.inner;
        let sent = Instant::now();
        // A renewal that takes longer than a renew interval is of no use (and must not
        // hold up the next round): it is abandoned and judged by its lateness.
        let res = tokio::time::timeout(
            i.renew_interval,
            retry(&i.policy, DYNAMODB, "UpdateItem", is_retriable, || {
                i.dynamo
                    .update_item()
                    .table_name(&i.table)
                    .key(A_SHARD, s(shard.as_str()))
                    .update_expression("SET #c = #c + :one, #e = :exp")
                    .condition_expression("#o = :me AND #t = :tok")
                    .expression_attribute_names("#o", A_OWNER)
                    .expression_attribute_names("#t", A_TOKEN)
                    .expression_attribute_names("#c", A_COUNTER)
                    .expression_attribute_names("#e", A_EXPIRES)
                    .expression_attribute_values(":me", s(&i.worker))
                    .expression_attribute_values(":tok", s(token))
                    .expression_attribute_values(":one", n(1))
                    .expression_attribute_values(
                        ":exp",
                        n(now_ms() + i.lease_duration.as_millis() as i64),
                    )
                    .return_values_on_condition_check_failure(
                        ReturnValuesOnConditionCheckFailure::AllOld,
                    )
                    .send()
            }),
        )
        .await;
        let error = match res {
            Ok(Ok(_)) => {
                *signal.renewed.lock().unwrap_or_else(|e| e.into_inner()) = sent;
                return None;
            }
            Ok(Err(SdkError::ServiceError(e)))
                if e.err().is_conditional_check_failed_exception() =>
            {
                return Some((owner_of(condition_item(e.err()).as_ref()), "taken"));
            }
            Ok(Err(e)) => describe(&e),
            Err(_) => format!("no answer within {:?}", i.renew_interval),
        };
        let late = plan::stood_still(
            *signal.renewed.lock().unwrap_or_else(|e| e.into_inner()),
            Instant::now(),
            i.lease_duration,
        );
        tracing::warn!(shard = %shard, error = %error, late, "lease renewal failed");
        late.then(|| {
            (
                "nobody: not renewed within the lease duration".to_string(),
                "not_renewed",
            )
        })
    }

    fn drop_held(&self, shard: &ShardId, token: &str, (to, how): (String, &'static str)) {
        let removed = {
            let mut st = self.state();
            match st.held.get(shard) {
                Some(h) if h.token == token => st.held.remove(shard),
                _ => None,
            }
        };
        if let Some(h) = removed {
            tracing::warn!(shard = %shard, to = %to, how, "lease lost");
            metrics::counter!(km::LEASES_LOST_TOTAL, "how" => how).increment(1);
            h.signal.lose(to);
        }
    }

    /// The checkpoint stored in `shard`'s lease (`finished` also set when the lease item
    /// is marked finished).
    pub async fn load_checkpoint(
        &self,
        shard: &ShardId,
    ) -> Result<Option<ShardCheckpoint>, IngestError> {
        let i = &self.inner;
        let out = retry(&i.policy, DYNAMODB, "GetItem", is_retriable, || {
            i.dynamo
                .get_item()
                .table_name(&i.table)
                .key(A_SHARD, s(shard.as_str()))
                .consistent_read(true)
                .send()
        })
        .await
        .map_err(|e| dynamo_error("GetItem", &e))?;
        let Some(item) = out.item() else {
            return Ok(None);
        };
        let lease = Lease::from_item(item)?;
        Ok(match lease.checkpoint {
            Some(mut cp) => {
                cp.finished |= lease.finished;
                Some(cp)
            }
            None if lease.finished => Some(ShardCheckpoint {
                finished: true,
                ..Default::default()
            }),
            None => None,
        })
    }

    /// Stores `cp` in `shard`'s lease if this worker still holds it (same tenure);
    /// otherwise fails with `LeaseLost` and fires the lease's signal. A finished
    /// checkpoint also marks the lease finished and frees it.
    pub async fn save_checkpoint(
        &self,
        shard: &ShardId,
        cp: &ShardCheckpoint,
    ) -> Result<(), IngestError> {
        let i = &self.inner;
        let Some((token, signal)) = self
            .state()
            .held
            .get(shard)
            .map(|h| (h.token.clone(), h.signal.clone()))
        else {
            let owner = self
                .leases_owner(shard)
                .await
                .unwrap_or_else(|_| "unknown".into());
            return Err(IngestError::LeaseLost {
                shard: shard.to_string(),
                owner,
            });
        };
        let json = serde_json::to_string(cp).map_err(|e| corrupt(format!("checkpoint: {e}")))?;
        let update = if cp.finished {
            "SET #cp = :cp, #f = :f, #c = #c + :one REMOVE #o, #t"
        } else {
            "SET #cp = :cp, #f = :f"
        };
        let res = retry(&i.policy, DYNAMODB, "UpdateItem", is_retriable, || {
            let req = i
                .dynamo
                .update_item()
                .table_name(&i.table)
                .key(A_SHARD, s(shard.as_str()))
                .update_expression(update)
                .condition_expression("#o = :me AND #t = :tok")
                .expression_attribute_names("#o", A_OWNER)
                .expression_attribute_names("#t", A_TOKEN)
                .expression_attribute_names("#cp", A_CHECKPOINT)
                .expression_attribute_names("#f", A_FINISHED)
                .expression_attribute_values(":me", s(&i.worker))
                .expression_attribute_values(":tok", s(&token))
                .expression_attribute_values(":cp", s(&json))
                .expression_attribute_values(":f", AttributeValue::Bool(cp.finished))
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                );
            let req = if cp.finished {
                req.expression_attribute_names("#c", A_COUNTER)
                    .expression_attribute_values(":one", n(1))
            } else {
                req
            };
            req.send()
        })
        .await;
        match res {
            Ok(_) => {
                if cp.finished {
                    self.forget(shard, &token, "released: shard finished");
                    tracing::info!(shard = %shard, "shard finished; lease freed for its children");
                }
                Ok(())
            }
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                let owner = owner_of(condition_item(e.err()).as_ref());
                self.drop_held(shard, &token, (owner.clone(), "checkpoint"));
                // Also when another path had dropped it already.
                signal.lose(owner.clone());
                Err(IngestError::LeaseLost {
                    shard: shard.to_string(),
                    owner,
                })
            }
            Err(e) => Err(dynamo_error("UpdateItem", &e)),
        }
    }

    async fn leases_owner(&self, shard: &ShardId) -> Result<String, IngestError> {
        let i = &self.inner;
        let out = retry(&i.policy, DYNAMODB, "GetItem", is_retriable, || {
            i.dynamo
                .get_item()
                .table_name(&i.table)
                .key(A_SHARD, s(shard.as_str()))
                .consistent_read(true)
                .send()
        })
        .await
        .map_err(|e| dynamo_error("GetItem", &e))?;
        Ok(owner_of(out.item()))
    }

    /// Removes a held lease locally and fires its signal without counting it lost.
    fn forget(&self, shard: &ShardId, token: &str, why: &str) {
        let removed = {
            let mut st = self.state();
            match st.held.get(shard) {
                Some(h) if h.token == token => st.held.remove(shard),
                _ => None,
            }
        };
        if let Some(h) = removed {
            h.signal.lose(why.to_string());
        }
        metrics::gauge!(km::LEASES_HELD).set(self.state().held.len() as f64);
    }

    /// Marks `shard` finished and frees its lease, if this worker holds it. Idempotent.
    pub async fn finish_shard(&self, shard: &ShardId) -> Result<(), IngestError> {
        self.free(shard, true).await
    }

    /// Gives `shard`'s lease back if this worker still holds it.
    pub async fn release_shard(&self, shard: &ShardId) -> Result<(), IngestError> {
        self.free(shard, false).await
    }

    async fn free(&self, shard: &ShardId, finished: bool) -> Result<(), IngestError> {
        let i = &self.inner;
        let Some(token) = self.state().held.get(shard).map(|h| h.token.clone()) else {
            return Ok(());
        };
        let update = if finished {
            "SET #c = #c + :one, #f = :t REMOVE #o, #t"
        } else {
            "SET #c = #c + :one REMOVE #o, #t"
        };
        let res = retry(&i.policy, DYNAMODB, "UpdateItem", is_retriable, || {
            let req = i
                .dynamo
                .update_item()
                .table_name(&i.table)
                .key(A_SHARD, s(shard.as_str()))
                .update_expression(update)
                .condition_expression("#o = :me AND #t = :tok")
                .expression_attribute_names("#o", A_OWNER)
                .expression_attribute_names("#t", A_TOKEN)
                .expression_attribute_names("#c", A_COUNTER)
                .expression_attribute_values(":me", s(&i.worker))
                .expression_attribute_values(":tok", s(&token))
                .expression_attribute_values(":one", n(1));
            let req = if finished {
                req.expression_attribute_names("#f", A_FINISHED)
                    .expression_attribute_values(":t", AttributeValue::Bool(true))
            } else {
                req
            };
            req.send()
        })
        .await;
        match res {
            Ok(_) => {
                self.forget(
                    shard,
                    &token,
                    if finished {
                        "released: shard finished"
                    } else {
                        "released"
                    },
                );
                tracing::info!(shard = %shard, finished, "lease released");
                Ok(())
            }
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                // Not ours any more: nothing to release.
                self.forget(shard, &token, "released (already taken)");
                Ok(())
            }
            Err(e) => Err(dynamo_error("UpdateItem", &e)),
        }
    }

    /// Releases every held lease (clean shutdown, after the processors have stopped).
    pub async fn release(&self) -> Result<(), IngestError> {
        let mut first_err = None;
        for shard in self.held() {
            if let Err(e) = self.release_shard(&shard).await {
                tracing::warn!(shard = %shard, error = %e, "could not release lease");
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// When the next acquisition round is due after one that ended at `now`: a renew
    /// interval later, or earlier if an observed foreign lease expires before that.
    fn next_round(&self, now: Instant, interval: Duration) -> Instant {
        let regular = now + interval;
        let expiry = self
            .state()
            .observed
            .next_expiry(&self.inner.worker, self.inner.lease_duration);
        match expiry {
            // Only a future expiry: one already past is a lease this worker chose not to
            // take (at its target), and must not turn the loop into a busy one.
            Some(e) if e > now && e < regular => e,
            _ => regular,
        }
    }

    /// Runs the coordinator in the background: renewals and acquisition rounds every
    /// renew interval, ListShards every sync interval, sending each newly taken
    /// lease on the returned channel. Stops when `shutdown` turns true. Leases are not
    /// released then: call [`LeaseCoordinator::release`] once the processors have
    /// finished.
    pub fn spawn(
        &self,
        mut shutdown: watch::Receiver<bool>,
    ) -> (mpsc::Receiver<LeaseHandle>, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(64);
        let renewer = self.clone();
        let mut renew_shutdown = shutdown.clone();
        let renew_task = async move {
            let mut tick = tokio::time::interval(renewer.inner.renew_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = renew_shutdown.changed() => break,
                    _ = tick.tick() => {
                        if let Err(e) = renewer.renew().await {
                            tracing::warn!(error = %e, "lease renewal round failed");
                        }
                    }
                }
                if *renew_shutdown.borrow() {
                    break;
                }
            }
        };
        let acquirer = self.clone();
        let acquire_task = async move {
            // Acquisition rounds as often as renewals, so that a counter standing still is
            // seen within a renew interval of its last change; and one extra round at the
            // instant the earliest observed foreign lease would expire, so that a dead
            // holder's lease is taken about one lease duration after its last renewal was
            // seen (never more than a lease duration plus a renew interval after it).
            // ListShards only every sync interval.
            let interval = acquirer.inner.renew_interval;
            let mut next_round = Instant::now();
            let mut synced: Option<Instant> = None;
            loop {
                tokio::select! {
                    _ = shutdown.changed() => break,
                    _ = tokio::time::sleep_until(next_round) => {
                        if synced.is_none_or(|t| t.elapsed() >= acquirer.inner.sync_interval) {
                            match acquirer.sync_shards().await {
                                Ok(_) => synced = Some(Instant::now()),
                                Err(e) => tracing::warn!(error = %e, "shard sync failed"),
                            }
                        }
                        match acquirer.acquire().await {
                            Ok(handles) => {
                                for h in handles {
                                    if tx.send(h).await.is_err() {
                                        return;
                                    }
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "lease acquisition round failed"),
                        }
                        next_round = acquirer.next_round(Instant::now(), interval);
                    }
                }
                if *shutdown.borrow() {
                    break;
                }
            }
        };
        let task = tokio::spawn(async move {
            tokio::join!(renew_task, acquire_task);
        });
        (rx, task)
    }
}

fn condition_item(e: &UpdateItemError) -> Option<HashMap<String, AttributeValue>> {
    match e {
        UpdateItemError::ConditionalCheckFailedException(c) => c.item().cloned(),
        _ => None,
    }
}

fn owner_of(item: Option<&HashMap<String, AttributeValue>>) -> String {
    item.and_then(|i| i.get(A_OWNER))
        .and_then(|v| v.as_s().ok())
        .cloned()
        .unwrap_or_else(|| "nobody (lease released or finished)".into())
}
