//! The shard processor: the loop that joins the stages for one shard.
//!
//! ```text
//!  Source::next_batch ─► decode_ref + time bounds (vs arrival)
//!                        + product ids in the catalog (Sinks::catalog, when set)
//!                                │                          ┌─ Ok  ─► (users not in memory: StateStore::user_states ─► Aggregator::load_user)
//!                                │                           │        Aggregator::apply_ref (the borrowed event) ─► (every flush interval) FeatureStore::write
//!                                │                           ├► EventRef::to_event: the owned Event for the archive and the join
//!                                │                           ├► ArchiveWriter::push
//!                                │                           └► FeedbackJoin::apply (served lists ⋈ events naming them) ─► labelled rows
//!                                └─ Err ─► ArchiveWriter::push_dead (reason kept)
//!
//!  checkpoint (every checkpoint interval, at a pending roll, at the end):
//!    1. save intent {pending_end}      (a restart rolls at exactly this sequence number)
//!    2. archive roll → Parquet + dead letters (names per shard and sequence range);
//!       the joined feedback rows → feedback/<shard>/<end>.jsonl
//!    3. feature flush                   (absolute values: replays overwrite)
//!    4. state delta → object store      (state/<shard>/<end>.delta: the users and products
//!                                        changed since the last checkpoint + the shard's
//!                                        meta; and the join's pending lists beside it)
//!    5. save {committed = end, snapshot = the delta}; Source::on_checkpoint(end)
//!    6. the delta's rows → StateStore   (absolute values), then "applied = this delta";
//!       the previous delta deleted;
//!       idle users leave memory (features.evict_idle_secs, features.max_hot_users)
//! ```
//!
//! After a crash anywhere, the restart writes the committed delta's rows to the state
//! store again (step 6 may not have finished), loads the shard's products from it and
//! replays the records after `committed`; users come back from the state store on their
//! next event. Archive objects and feature values come out exactly as one clean run would
//! have written them: nothing is lost and nothing is counted twice. A checkpoint costs what
//! changed since the previous one; memory holds the active users only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use recstream_features::{Aggregator, FeatureConfig, FeatureStore, StateDelta, StateStore};
use recstream_ingest::archive::{ArchiveWriter, ArchivedRow};
use recstream_ingest::feedback::{FeedbackRow, encode_feedback, feedback_key};
use recstream_ingest::{
    CheckpointStore, DecodeError, EventRef, ObjectStore, RawRecord, SeqNo, ShardCheckpoint,
    ShardId, Source, metrics as im,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::catalog::ProductCatalog;
use crate::join::{FeedbackJoin, JoinLimits, OUTCOMES};

/// How a processor batches, flushes and checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorConfig {
    /// Records asked of the source per batch.
    pub batch_size: usize,
    /// Largest record accepted, in bytes; larger ones are dead-lettered.
    pub max_record_bytes: usize,
    /// Features are written to the store at least this often (ms) while events arrive.
    pub flush_interval_ms: u64,
    /// Archive roll + snapshot + checkpoint at least this often (ms).
    pub checkpoint_interval_ms: u64,
    /// Roll the archive early when this many rows are buffered.
    pub archive_max_rows: usize,
    /// Roll the archive early when this many raw bytes are buffered.
    pub archive_max_bytes: usize,
    /// Events dated more than this after their record's arrival (the collector's clock,
    /// Kinesis' ApproximateArrivalTimestamp) are dead-lettered, never applied: a clock
    /// far ahead would otherwise dominate time-decayed state (trending) for everyone.
    pub max_future_skew_ms: u64,
    /// Events dated more than this before their record's arrival are dead-lettered;
    /// 0 = no bound. Off by default: replays of historical logs into a stream are
    /// legitimate (a file replay's arrival is the event time, so it is never judged).
    pub max_event_age_ms: u64,
    /// Check the product ids of stream records against the shop's catalog (the commerce
    /// store) and dead-letter those it does not hold. For producers that write to Kinesis
    /// directly; the collector always checks when a shop is served. Off by default: with
    /// no catalog loaded, every product event would be refused.
    pub catalog_check: bool,
    /// Served lists (`recommendation` events) the feedback join keeps per shard.
    pub feedback_max_lists: usize,
    /// How long after it was served a list takes feedback, ms of event time.
    pub feedback_ttl_ms: u64,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        ProcessorConfig {
            batch_size: 500,
            max_record_bytes: recstream_ingest::decode::DEFAULT_MAX_RECORD_BYTES,
            flush_interval_ms: 25,
            checkpoint_interval_ms: 10_000,
            archive_max_rows: 250_000,
            archive_max_bytes: 64 * 1024 * 1024,
            max_future_skew_ms: recstream_ingest::decode::DEFAULT_MAX_FUTURE_SKEW_MS,
            max_event_age_ms: 0,
            catalog_check: false,
            feedback_max_lists: 10_000,
            feedback_ttl_ms: 30 * 60 * 1000,
        }
    }
}

impl ProcessorConfig {
    /// Checks bounds (batch size, intervals, archive limits); `Err` names the bad setting.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=10_000).contains(&self.batch_size) {
            return Err("processor.batch_size must be in 1..=10000".into());
        }
        if !(256..=1024 * 1024).contains(&self.max_record_bytes) {
            return Err(
                "processor.max_record_bytes must be in 256..=1048576 (Kinesis' limit)".into(),
            );
        }
        if self.flush_interval_ms == 0 || self.checkpoint_interval_ms < self.flush_interval_ms {
            return Err(
                "processor.flush_interval_ms must be positive and at most checkpoint_interval_ms"
                    .into(),
            );
        }
        if self.archive_max_rows == 0 || self.archive_max_bytes == 0 {
            return Err("processor.archive_max_rows and archive_max_bytes must be positive".into());
        }
        if self.max_future_skew_ms > 24 * 3600 * 1000 {
            return Err("processor.max_future_skew_ms must be at most a day".into());
        }
        if !(1..=1_000_000).contains(&self.feedback_max_lists) || self.feedback_ttl_ms == 0 {
            return Err(
                "processor.feedback_max_lists must be in 1..=1000000 and feedback_ttl_ms positive"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Live counters of one processor, readable while it runs.
#[derive(Debug, Default)]
pub struct ShardStats {
    /// Records read from the source.
    pub records: AtomicU64,
    /// Records decoded into events and applied.
    pub accepted: AtomicU64,
    /// Records rejected and dead-lettered.
    pub dead_letters: AtomicU64,
    /// Accepted events of a type outside the known ones (kept as `Other`).
    pub unknown_types: AtomicU64,
    /// Feature flushes written to the store.
    pub flushes: AtomicU64,
    /// Checkpoints committed.
    pub checkpoints: AtomicU64,
    /// Rows written to the archive by committed rolls.
    pub archived_rows: AtomicU64,
    /// Labelled impressions produced by the feedback join.
    pub feedback_rows: AtomicU64,
}

/// What a processor did, when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ShardSummary {
    /// The shard id.
    pub shard: String,
    /// Records read from the source.
    pub records: u64,
    /// Records decoded into events and applied.
    pub accepted: u64,
    /// Records rejected and dead-lettered.
    pub dead_letters: u64,
    /// Rows written to the archive.
    pub archived_rows: u64,
    /// Checkpoints committed.
    pub checkpoints: u64,
    /// The shard was read to its end (false when the processor stopped on shutdown).
    pub finished: bool,
}

/// The stores a processor writes to, and the catalog it checks product ids against.
#[derive(Clone)]
pub struct Sinks {
    /// Where flushed features go.
    pub features: Arc<dyn FeatureStore>,
    /// Where the aggregation state rows of checkpoints go (and evicted users come from).
    pub state: Arc<dyn StateStore>,
    /// Where checkpoints are saved (embedded database or lease table).
    pub checkpoints: Arc<dyn CheckpointStore>,
    /// Where archive objects, dead letters and state snapshots go.
    pub objects: Arc<dyn ObjectStore>,
    /// The shop's catalog: events naming a product it does not hold are dead-lettered
    /// (`None`: no check, as with `processor.catalog_check = false`).
    pub catalog: Option<Arc<dyn ProductCatalog>>,
}

/// Why a processor stopped before its source finished.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    /// The source, the archive or the checkpoint store failed (including a lost lease:
    /// see [`ProcessorError::is_lease_lost`]).
    #[error(transparent)]
    Ingest(#[from] recstream_ingest::IngestError),
    /// The feature store failed.
    #[error(transparent)]
    Store(#[from] recstream_features::StoreError),
    /// A shard task could not be set up, panicked or was cancelled.
    #[error("shard task failed: {0}")]
    Task(String),
    /// The catalog could not be read; nothing of the batch was applied (it is retried).
    #[error("catalog unavailable: {0}")]
    Catalog(String),
}

impl ProcessorError {
    /// The shard's lease went to another worker: not a failure, the new holder carries on
    /// from the checkpoint.
    pub fn is_lease_lost(&self) -> bool {
        matches!(
            self,
            ProcessorError::Ingest(recstream_ingest::IngestError::LeaseLost { .. })
        )
    }
}

/// Where a shard stands when its processor starts.
pub struct Resume {
    /// The last committed checkpoint (the default when the shard has none).
    pub checkpoint: ShardCheckpoint,
    /// The aggregation state restored from the checkpoint's snapshot (empty without one).
    pub aggregator: Aggregator,
    /// The served lists waiting for feedback, restored beside the aggregation state
    /// (empty without a snapshot, or for a snapshot written before the join existed).
    pub join: FeedbackJoin,
}

/// The object holding the join state of the snapshot `snapshot`.
fn join_key(snapshot: &str) -> String {
    format!("{snapshot}.join")
}

/// Loads the checkpoint of `shard` and the aggregation state it points to: unless the state
/// store says the committed delta's rows are all written, they are written again
/// (idempotent; a crash may have cut step 6 short), then the shard's products are loaded
/// from it. A checkpoint of an earlier
/// version names a full snapshot (`.bin`), which is restored whole.
pub async fn resume(
    sinks: &Sinks,
    shard: &ShardId,
    cfg: &FeatureConfig,
) -> Result<Resume, ProcessorError> {
    let checkpoint = sinks
        .checkpoints
        .load_checkpoint(shard)
        .await?
        .unwrap_or_default();
    let aggregator = match &checkpoint.snapshot {
        Some(key) => {
            let bytes = sinks.objects.get(key).await?.ok_or_else(|| {
                recstream_features::StoreError::Corrupt {
                    what: "checkpoint",
                    message: format!("state {key} named by the checkpoint is missing"),
                }
            })?;
            if key.ends_with(DELTA_SUFFIX) {
                let delta = StateDelta::decode(&bytes)?;
                if sinks.state.applied(shard).await?.as_deref() != Some(key.as_str()) {
                    sinks.state.put_state(shard, &delta).await?;
                    sinks.state.mark_applied(shard, key).await?;
                }
                let products = sinks.state.product_states(shard).await?;
                Aggregator::resume(cfg.clone(), &delta.meta, products)?
            } else {
                Aggregator::restore(cfg.clone(), &bytes)?
            }
        }
        None => Aggregator::new(cfg.clone()),
    };
    let join = match &checkpoint.snapshot {
        Some(key) => match sinks.objects.get(&join_key(key)).await? {
            Some(bytes) => FeedbackJoin::restore(&bytes).map_err(|e| {
                recstream_features::StoreError::Corrupt {
                    what: "checkpoint",
                    message: format!("join state of snapshot {key}: {e}"),
                }
            })?,
            None => FeedbackJoin::default(),
        },
        None => FeedbackJoin::default(),
    };
    Ok(Resume {
        checkpoint,
        aggregator,
        join,
    })
}

/// Writes the batch's `product` events to the catalog, in stream order (before the
/// check, so that the batch's other events may name a product it adds).
/// Entries the catalog refuses become dead letters (`product`: its reason).
async fn write_products(
    catalog: &dyn ProductCatalog,
    decoded: &mut [Result<EventRef<'_>, DecodeError>],
) -> Result<(), ProcessorError> {
    let (at, products): (Vec<usize>, Vec<recstream_ingest::Event>) = decoded
        .iter()
        .enumerate()
        .filter_map(|(i, d)| d.as_ref().ok().map(|e| (i, e)))
        .filter(|(_, e)| e.event_type == recstream_ingest::EventType::Product)
        .map(|(i, e)| (i, e.to_event()))
        .unzip();
    if products.is_empty() {
        return Ok(());
    }
    let products: Vec<&recstream_ingest::Event> = products.iter().collect();
    let refused = catalog
        .write(&products)
        .await
        .map_err(ProcessorError::Catalog)?;
    if refused.len() != at.len() {
        return Err(ProcessorError::Catalog(format!(
            "wrote {} products, told about {}",
            at.len(),
            refused.len()
        )));
    }
    let written = refused.iter().filter(|r| r.is_none()).count();
    metrics::counter!(im::CATALOG_WRITES_TOTAL).increment(written as u64);
    for (i, problem) in at.into_iter().zip(refused) {
        if let Some(problem) = problem {
            decoded[i] = Err(DecodeError::Invalid {
                field: "product",
                problem: problem.into(),
            });
        }
    }
    Ok(())
}

/// Turns the events of `decoded` whose product the catalog does not hold into dead
/// letters (`product_id`: not in the catalog): one lookup for the batch's distinct ids.
async fn check_catalog(
    catalog: &dyn ProductCatalog,
    decoded: &mut [Result<EventRef<'_>, DecodeError>],
) -> Result<(), ProcessorError> {
    let mut ids: Vec<&str> = decoded
        .iter()
        .filter_map(|d| d.as_ref().ok())
        .filter(|e| e.event_type.needs_product() && e.event_type.is_activity())
        .filter_map(|e| e.product_id.as_deref())
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    ids.sort_unstable();
    ids.dedup();
    let known = catalog.known(&ids).await.map_err(ProcessorError::Catalog)?;
    if known.len() != ids.len() {
        return Err(ProcessorError::Catalog(format!(
            "asked for {} products, told about {}",
            ids.len(),
            known.len()
        )));
    }
    let unknown: std::collections::HashSet<String> = ids
        .iter()
        .zip(&known)
        .filter(|(_, k)| !**k)
        .map(|(id, _)| (*id).to_owned())
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    for d in decoded.iter_mut() {
        let refused = match d {
            Ok(e) if e.event_type.needs_product() && e.event_type.is_activity() => e
                .product_id
                .as_deref()
                .filter(|p| unknown.contains(*p))
                .map(str::to_owned),
            _ => None,
        };
        if let Some(id) = refused {
            *d = Err(DecodeError::Invalid {
                field: "product_id",
                problem: format!("`{id}` is not in the catalog").into(),
            });
        }
    }
    Ok(())
}

/// The suffix of a checkpoint's state object (a [`StateDelta`]).
const DELTA_SUFFIX: &str = ".delta";

/// Processes one shard: reads batches from its source, decodes, aggregates, archives,
/// flushes features and checkpoints (see the module docs). Runs on its own task.
pub struct ShardProcessor {
    shard: ShardId,
    source: Box<dyn Source>,
    agg: Aggregator,
    join: FeedbackJoin,
    /// Rows joined since the last checkpoint, written with its archive roll.
    feedback: Vec<FeedbackRow>,
    archive: ArchiveWriter,
    sinks: Sinks,
    cfg: ProcessorConfig,
    cp: ShardCheckpoint,
    last_seq: Option<SeqNo>,
    last_flush: Instant,
    last_checkpoint: Instant,
    dirty: bool,
    stats: Arc<ShardStats>,
}

impl ShardProcessor {
    /// A processor for `source`, starting from `resume`, writing to `sinks`.
    pub fn new(
        source: Box<dyn Source>,
        resume: Resume,
        sinks: Sinks,
        cfg: ProcessorConfig,
    ) -> ShardProcessor {
        let shard = source.shard().clone();
        ShardProcessor {
            archive: ArchiveWriter::new(sinks.objects.clone(), shard.clone()),
            last_seq: resume.checkpoint.committed.clone(),
            cp: resume.checkpoint,
            agg: resume.aggregator,
            join: resume.join,
            feedback: Vec::new(),
            shard,
            source,
            sinks,
            cfg,
            last_flush: Instant::now(),
            last_checkpoint: Instant::now(),
            dirty: false,
            stats: Arc::new(ShardStats::default()),
        }
    }

    /// The live counters, shared with whoever reads them while the processor runs.
    pub fn stats(&self) -> Arc<ShardStats> {
        self.stats.clone()
    }

    /// Applies one batch without asking the source (the Lambda handler's unit of work: the
    /// event source mapping hands the batch over). As in [`ShardProcessor::run`], records
    /// at or before the checkpoint are skipped and a previous run's pending roll point
    /// commits on the way.
    pub async fn process_batch(&mut self, records: Vec<RawRecord>) -> Result<(), ProcessorError> {
        self.process(records).await
    }

    /// Makes everything applied so far durable with the five checkpoint steps of the
    /// module doc (the shard is not marked finished); returns the committed position.
    /// While a previous run's pending roll point lies beyond what was applied, nothing is
    /// committed (see [`ShardProcessor::pending_end`]).
    pub async fn commit(&mut self) -> Result<Option<SeqNo>, ProcessorError> {
        self.checkpoint(false, false).await?;
        Ok(self.cp.committed.clone())
    }

    /// The position everything is durable up to (as loaded or last committed).
    pub fn committed(&self) -> Option<&SeqNo> {
        self.cp.committed.as_ref()
    }

    /// A roll point a previous run announced and did not commit: the archive object
    /// ending there may exist, so this processor must read up to it before it commits.
    pub fn pending_end(&self) -> Option<&SeqNo> {
        self.cp.pending_end.as_ref()
    }

    /// The last record applied (or the committed position before any).
    pub fn last_applied(&self) -> Option<&SeqNo> {
        self.last_seq.as_ref()
    }

    /// Runs until the source is finished or `shutdown` turns true; on shutdown the last
    /// batch is completed and checkpointed before returning.
    #[tracing::instrument(skip_all, fields(shard = %self.shard))]
    pub async fn run(
        mut self,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<ShardSummary, ProcessorError> {
        let mut finished = false;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let batch = tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                b = self.source.next_batch(self.cfg.batch_size) => b?,
            };
            match batch {
                None => {
                    finished = true;
                    break;
                }
                Some(records) => self.process(records).await?,
            }
            if self.dirty
                && self.last_flush.elapsed() >= Duration::from_millis(self.cfg.flush_interval_ms)
            {
                self.flush().await?;
            }
            let roll_due = self.archive.buffered_rows() >= self.cfg.archive_max_rows
                || self.archive.buffered_bytes() >= self.cfg.archive_max_bytes;
            if roll_due
                || self.last_checkpoint.elapsed()
                    >= Duration::from_millis(self.cfg.checkpoint_interval_ms)
            {
                self.checkpoint(false, true).await?;
            }
        }
        self.checkpoint(finished, false).await?;
        self.source.close().await?;
        let s = &self.stats;
        Ok(ShardSummary {
            shard: self.shard.to_string(),
            records: s.records.load(Ordering::Relaxed),
            accepted: s.accepted.load(Ordering::Relaxed),
            dead_letters: s.dead_letters.load(Ordering::Relaxed),
            archived_rows: s.archived_rows.load(Ordering::Relaxed),
            checkpoints: s.checkpoints.load(Ordering::Relaxed),
            finished,
        })
    }

    async fn process(&mut self, records: Vec<RawRecord>) -> Result<(), ProcessorError> {
        let (mut accepted, mut dead, mut unknown) = (0u64, 0u64, 0u64);
        let n = records.len() as u64;
        let mut lag = None;
        let rows_before = self.feedback.len();
        let limits = JoinLimits {
            max_lists: self.cfg.feedback_max_lists,
            ttl_ms: self.cfg.feedback_ttl_ms,
        };
        // Records at or before the checkpoint are already durable (a source may redeliver
        // them after an iterator renewal): skip, never count twice. A checkpoint always
        // covers whole Kinesis records, with all their sub-records.
        let records: Vec<RawRecord> = records
            .into_iter()
            .filter(|rec| self.cp.committed.as_ref().is_none_or(|c| rec.seq > *c))
            .collect();
        // Events borrow their text from the records' bytes: the aggregator folds them in
        // without an owned copy; the archive and the join get an owned event.
        let mut decoded: Vec<Result<EventRef<'_>, DecodeError>> =
            records.iter().map(|rec| self.decode(rec)).collect();
        if let Some(catalog) = &self.sinks.catalog {
            write_products(catalog.as_ref(), &mut decoded).await?;
            check_catalog(catalog.as_ref(), &mut decoded).await?;
        }
        if self.agg.is_partial() {
            self.load_users(&decoded).await?;
        }
        let mut records = records.iter().zip(decoded).peekable();
        while let Some((rec, decoded)) = records.next() {
            match decoded {
                Ok(borrowed) => {
                    accepted += 1;
                    if matches!(borrowed.event_type, recstream_ingest::EventType::Other(_)) {
                        unknown += 1;
                    }
                    self.agg.apply_ref(&borrowed);
                    let event = borrowed.to_event();
                    self.join.apply(&event, limits, &mut self.feedback);
                    lag = Some(rec.arrival);
                    self.archive.push(ArchivedRow {
                        shard: rec.shard.clone(),
                        seq: rec.seq.clone(),
                        sub_seq: rec.sub_seq,
                        arrival: rec.arrival,
                        event,
                        raw: rec.data.clone(),
                    });
                }
                Err(err) => {
                    dead += 1;
                    self.count_dead(&err);
                    self.archive.push_dead(rec, &err);
                }
            }
            let at_pending = self.cp.pending_end.as_ref() == Some(&rec.seq)
                && records.peek().is_none_or(|(next, _)| next.seq != rec.seq);
            self.last_seq = Some(rec.seq.clone());
            self.dirty = true;
            if at_pending {
                // A previous run wrote an archive object ending exactly here. No eviction:
                // the rest of the batch's users were loaded for it.
                self.checkpoint(false, false).await?;
            }
        }
        let shard = self.shard.to_string();
        metrics::counter!(im::RECORDS_READ_TOTAL, "shard" => shard.clone()).increment(n);
        metrics::counter!(im::EVENTS_ACCEPTED_TOTAL, "shard" => shard.clone()).increment(accepted);
        metrics::counter!(im::UNKNOWN_TYPES_TOTAL, "shard" => shard.clone()).increment(unknown);
        if let Some(arrival) = lag {
            let now = chrono::Utc::now().timestamp_millis();
            metrics::gauge!(im::LAG_MILLISECONDS, "shard" => shard).set((now - arrival.0) as f64);
        }
        self.stats.records.fetch_add(n, Ordering::Relaxed);
        self.stats.accepted.fetch_add(accepted, Ordering::Relaxed);
        self.stats.dead_letters.fetch_add(dead, Ordering::Relaxed);
        self.stats
            .unknown_types
            .fetch_add(unknown, Ordering::Relaxed);
        metrics::counter!(recstream_features::metrics::EVENTS_APPLIED_TOTAL, "shard" => self.shard.to_string())
            .increment(accepted);
        self.count_join(rows_before);
        Ok(())
    }

    /// Decodes one record (borrowing its text) and checks its event time against its
    /// arrival.
    fn decode<'r>(&self, rec: &'r RawRecord) -> Result<EventRef<'r>, DecodeError> {
        if let Some(err) = &rec.rejected {
            return Err(err.clone());
        }
        let ev =
            recstream_ingest::decode::decode_ref_with_limit(&rec.data, self.cfg.max_record_bytes)?;
        recstream_ingest::decode::check_time_bounds(
            ev.ts,
            rec.arrival,
            self.cfg.max_future_skew_ms,
            self.cfg.max_event_age_ms,
        )?;
        Ok(ev)
    }

    /// Brings back from the state store the users of this batch who are not in memory
    /// (evicted, or not met since a resume): one read for the whole batch.
    async fn load_users(
        &mut self,
        decoded: &[Result<EventRef<'_>, DecodeError>],
    ) -> Result<(), ProcessorError> {
        let mut missing: Vec<&str> = decoded
            .iter()
            .filter_map(|d| d.as_ref().ok())
            .filter(|e| e.event_type.is_activity())
            .map(|e| e.user_id.as_str())
            .filter(|u| !self.agg.is_resident(u))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        missing.sort_unstable();
        missing.dedup();
        let rows = self.sinks.state.user_states(&self.shard, &missing).await?;
        let mut found = 0u64;
        for (id, row) in missing.iter().zip(rows) {
            if let Some(row) = row {
                self.agg.load_user(id, &row)?;
                found += 1;
            }
        }
        use recstream_features::metrics as fm;
        metrics::counter!(fm::STATE_LOADS_TOTAL, "result" => "found").increment(found);
        metrics::counter!(fm::STATE_LOADS_TOTAL, "result" => "new")
            .increment(missing.len() as u64 - found);
        Ok(())
    }

    /// Per-batch metrics of the feedback join.
    fn count_join(&mut self, rows_before: usize) {
        let shard = self.shard.to_string();
        for (o, n) in OUTCOMES.iter().zip(self.join.take_counts()) {
            if n > 0 {
                metrics::counter!(im::FEEDBACK_JOIN_TOTAL, "shard" => shard.clone(), "outcome" => o.as_str())
                    .increment(n);
            }
        }
        let new = &self.feedback[rows_before..];
        let engaged = new.iter().filter(|r| r.engaged).count() as u64;
        if !new.is_empty() {
            metrics::counter!(im::FEEDBACK_ROWS_TOTAL, "shard" => shard.clone(), "label" => "engaged")
                .increment(engaged);
            metrics::counter!(im::FEEDBACK_ROWS_TOTAL, "shard" => shard, "label" => "ignored")
                .increment(new.len() as u64 - engaged);
        }
        self.stats
            .feedback_rows
            .fetch_add(new.len() as u64, Ordering::Relaxed);
    }

    fn count_dead(&self, err: &DecodeError) {
        metrics::counter!(im::DEAD_LETTERS_TOTAL, "shard" => self.shard.to_string(), "reason" => err.kind())
            .increment(1);
    }

    async fn flush(&mut self) -> Result<(), ProcessorError> {
        let started = Instant::now();
        let batch = self.agg.drain();
        let items = batch.users.len() + batch.products.len();
        self.sinks.features.write(&self.shard, &batch).await?;
        self.last_flush = Instant::now();
        self.dirty = false;
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        use recstream_features::metrics as fm;
        metrics::histogram!(fm::FLUSH_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::histogram!(fm::FLUSH_ITEMS).record(items as f64);
        metrics::gauge!(fm::STATE_KEYS, "kind" => "user").set(self.agg.user_count() as f64);
        metrics::gauge!(fm::STATE_KEYS, "kind" => "product").set(self.agg.product_count() as f64);
        Ok(())
    }

    /// Makes everything read so far durable, in the order the module doc gives; with
    /// `evict`, idle users leave memory afterwards.
    async fn checkpoint(&mut self, finished: bool, evict: bool) -> Result<(), ProcessorError> {
        self.last_checkpoint = Instant::now();
        let Some(end) = self.last_seq.clone() else {
            return Ok(());
        };
        if self.cp.pending_end.as_ref().is_some_and(|p| end < *p) {
            // A previous run already wrote an archive object ending at `pending_end`:
            // roll there and nowhere earlier, so the replay overwrites that object.
            return Ok(());
        }
        if self.cp.committed.as_ref() == Some(&end) {
            if finished && !self.cp.finished {
                self.cp.finished = true;
                self.sinks
                    .checkpoints
                    .save_checkpoint(&self.shard, &self.cp)
                    .await?;
            }
            return Ok(());
        }
        if self.cp.pending_end.as_ref() != Some(&end) {
            self.cp.pending_end = Some(end.clone());
            self.sinks
                .checkpoints
                .save_checkpoint(&self.shard, &self.cp)
                .await?;
        }
        let summary = self.archive.roll().await?;
        self.stats
            .archived_rows
            .fetch_add(summary.rows as u64, Ordering::Relaxed);
        if !self.feedback.is_empty() {
            self.sinks
                .objects
                .put(
                    &feedback_key(&self.shard, &end),
                    encode_feedback(&self.feedback),
                )
                .await?;
            self.feedback.clear();
        }
        self.flush().await?;
        let delta = self.agg.take_delta();
        let bytes = Bytes::from(delta.encode());
        let key = format!("state/{}/{end}{DELTA_SUFFIX}", self.shard.file_safe());
        use recstream_features::metrics as fm;
        metrics::histogram!(fm::CHECKPOINT_BYTES).record(bytes.len() as f64);
        metrics::histogram!(fm::CHECKPOINT_ROWS)
            .record((delta.users.len() + delta.products.len()) as f64);
        self.sinks.objects.put(&key, bytes).await?;
        // The join state (up to `feedback_max_lists` lists with their feature rows, MBs) is
        // serialised on a blocking thread: the runtime's workers keep serving meanwhile.
        // Nothing else touches the join until this checkpoint returns.
        let join = std::mem::take(&mut self.join);
        let (join, snapshot) = tokio::task::spawn_blocking(move || {
            let bytes = join.snapshot();
            (join, bytes)
        })
        .await
        .map_err(|e| ProcessorError::Task(format!("serialising the join state: {e}")))?;
        self.join = join;
        self.sinks
            .objects
            .put(&join_key(&key), Bytes::from(snapshot))
            .await?;
        let previous = self.cp.snapshot.replace(key.clone());
        self.cp.committed = Some(end.clone());
        self.cp.pending_end = None;
        self.cp.finished = finished;
        self.sinks
            .checkpoints
            .save_checkpoint(&self.shard, &self.cp)
            .await?;
        self.sinks.state.put_state(&self.shard, &delta).await?;
        self.sinks.state.mark_applied(&self.shard, &key).await?;
        if let Some(old) = previous.filter(|old| *old != key) {
            self.sinks.objects.delete(&old).await?;
            self.sinks.objects.delete(&join_key(&old)).await?;
        }
        self.source.on_checkpoint(&end).await?;
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        if evict {
            let cfg = self.agg.config();
            let (idle, max_hot) = (cfg.evict_idle_ms(), cfg.max_hot_users());
            let evicted = self.agg.evict(idle, max_hot);
            if evicted > 0 {
                metrics::counter!(fm::EVICTED_USERS_TOTAL).increment(evicted as u64);
                metrics::gauge!(fm::STATE_KEYS, "kind" => "user").set(self.agg.user_count() as f64);
            }
        }
        tracing::debug!(seq = %end, rows = summary.rows, "checkpoint committed");
        Ok(())
    }
}
