//! `recstream train`, `recstream eval`, `recstream segments export`: plain functions the
//! CLI calls, each with explicit arguments and progress bars.
//!
//! ```text
//!  train   archive (ObjectStore, events/…) ─► ArchiveSource, one partition at a time
//!              ─► model::train_from (two passes, blocking pool; the whole log is never loaded)
//!          dataset file ─► events ─► model::train (blocking pool)
//!          ─► models/<version>/… + models/CURRENT in the output store ─► cold-start cache
//!  eval    dataset (YooChoose: train_full / test files; others: 80 / 20 split by time)
//!          ─► model::evaluate ─► table or JSON on stdout
//!  segments export   models/CURRENT (or a version) ─► segments.{csv,parquet}, segment_members.{csv,parquet}
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use recstream_ingest::datasets::{self, CsvMapping, Dataset, YooChooseSplit};
use recstream_ingest::{Event, LocalObjectStore, ObjectStore};
use recstream_model::{
    ArchiveSource, EvalParams, EvalReport, ModelArtifact, Progress, TrainParams, TrainingMeta,
    evaluate, temporal_split,
};
use serde::Serialize;

/// Where training events come from.
#[derive(Clone)]
pub enum TrainSource {
    /// A Parquet archive (`events/dt=…/hour=…/….parquet`) in an object store, read from
    /// `prefix` (normally `events/`).
    Archive {
        /// The store holding the archive.
        store: Arc<dyn ObjectStore>,
        /// Key prefix of the event objects.
        prefix: String,
    },
    /// One of the public datasets, from a file or directory.
    Dataset {
        /// Which dataset the file holds (its format).
        dataset: Dataset,
        /// The file or directory.
        path: PathBuf,
        /// Read the file as a CSV through this column mapping (`--csv-map`).
        csv: Option<Box<CsvMapping>>,
    },
}

impl TrainSource {
    /// A local archive directory (the embedded object store's root, which holds `events/`).
    pub fn local_archive(dir: impl Into<PathBuf>) -> TrainSource {
        TrainSource::Archive {
            store: Arc::new(LocalObjectStore::new(dir)),
            prefix: "events/".into(),
        }
    }

    fn describe(&self) -> String {
        match self {
            TrainSource::Archive { store, prefix } => format!("{}/{prefix}", store.describe()),
            TrainSource::Dataset { dataset, path, .. } => {
                format!("{dataset}:{}", path.display())
            }
        }
    }
}

/// What `train` did.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    /// The version written ([`TrainingMeta::version`]).
    pub version: String,
    /// The object store the model was written to.
    pub output: String,
    /// What the training run did.
    pub meta: TrainingMeta,
    /// Products with an embedding vector (0 when skipped).
    pub similar_products: usize,
    /// User segments (0 when skipped).
    pub segments: usize,
    /// Cold-start lists, the overall one included.
    pub cold_start_lists: usize,
    /// Wall-clock duration of the whole command, seconds (two decimals).
    pub wall_seconds: f64,
}

/// Reads training parameters from a JSON file (every field optional), or the defaults.
pub fn load_train_params(path: Option<&Path>) -> anyhow::Result<TrainParams> {
    let Some(path) = path else {
        return Ok(TrainParams::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading training parameters {}", path.display()))?;
    let p: TrainParams = serde_json::from_str(&text)
        .with_context(|| format!("parsing training parameters {}", path.display()))?;
    p.validate()?;
    Ok(p)
}

/// Trains on `source` and writes a new version to `out` (pointing `models/CURRENT` at it).
pub async fn train(
    source: TrainSource,
    out: Arc<dyn ObjectStore>,
    params: TrainParams,
    show_progress: bool,
) -> anyhow::Result<(TrainSummary, Arc<ModelArtifact>)> {
    params.validate()?;
    let started = Instant::now();
    let name = source.describe();
    let label = match &source {
        TrainSource::Dataset { dataset, .. } => dataset.name().to_string(),
        TrainSource::Archive { .. } => name.clone(),
    };
    let mut artifact = match &source {
        TrainSource::Archive { store, prefix } => {
            eprintln!("training on {name}, streamed one partition at a time");
            let streamed = train_streamed(
                ArchiveSource::new(store.clone(), prefix),
                label.clone(),
                params.clone(),
                show_progress,
            )
            .await?;
            match streamed {
                Err(recstream_model::ModelError::Unsorted(why)) => {
                    // Partitions not in event-time order (files written by another tool):
                    // only a sort of the whole log can train on it.
                    eprintln!(
                        "the archive's partitions are not in time order ({why}); loading it whole"
                    );
                    train_loaded(&source, &name, label, params, show_progress).await?
                }
                Err(e @ recstream_model::ModelError::NotEnoughData(_)) => {
                    if streamed_is_empty(store.as_ref(), prefix).await? {
                        bail!("no events in {name}");
                    }
                    return Err(e.into());
                }
                other => other?,
            }
        }
        TrainSource::Dataset { .. } => {
            train_loaded(&source, &name, label, params, show_progress).await?
        }
    };
    let version = artifact.save(out.as_ref()).await?;
    let summary = TrainSummary {
        version: version.clone(),
        output: out.describe(),
        similar_products: artifact.embeddings.as_ref().map_or(0, |e| e.items.len()),
        segments: artifact.segments.as_ref().map_or(0, |s| s.profiles.len()),
        cold_start_lists: artifact.cold_start.lists().count(),
        meta: artifact.meta.clone(),
        wall_seconds: (started.elapsed().as_secs_f64() * 100.0).round() / 100.0,
    };
    Ok((summary, Arc::new(artifact)))
}

/// Writes the artifact's cold-start lists (overall and per demographic segment) to the
/// cold-start cache (Redis in AWS mode). Returns the number of lists written.
pub async fn publish_cold_start(
    artifact: &ModelArtifact,
    cache: &dyn recstream_scoring::ColdStartCache,
) -> anyhow::Result<usize> {
    let mut n = 0;
    for (key, items) in artifact.cold_start.lists() {
        let list = recstream_scoring::ColdStartList {
            items: items.to_vec(),
            source: artifact.meta.version.clone(),
        };
        cache.put(key, &list).await?;
        n += 1;
    }
    Ok(n)
}

/// Evaluates one dataset: YooChoose with its given `train_full` / `test` files, the others
/// with an 80 / 20 split by time. Prints a table (or the JSON report) on stdout.
pub async fn eval(dataset: Dataset, path: &Path, json: bool) -> anyhow::Result<EvalReport> {
    eval_with(dataset, path, EvalParams::default(), json, true).await
}

/// [`eval`] with explicit parameters.
pub async fn eval_with(
    dataset: Dataset,
    path: &Path,
    params: EvalParams,
    json: bool,
    show_progress: bool,
) -> anyhow::Result<EvalReport> {
    let path = path.to_path_buf();
    let report = tokio::task::spawn_blocking(move || -> anyhow::Result<EvalReport> {
        let (train, test) = load_split(dataset, &path, None, params.train_fraction)?;
        let mut bars = Bars::new(show_progress);
        Ok(evaluate(dataset.name(), &train, &test, &params, &mut bars)?)
    })
    .await
    .context("evaluation task failed")??;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.table());
    }
    Ok(report)
}

/// The evaluation parameters: the defaults, overridden by a TOML file's fields.
pub fn eval_params(file: Option<&Path>) -> anyhow::Result<EvalParams> {
    use figment::Figment;
    use figment::providers::{Format, Serialized, Toml};
    let Some(file) = file else {
        return Ok(EvalParams::default());
    };
    anyhow::ensure!(file.exists(), "{} does not exist", file.display());
    let params: EvalParams = Figment::from(Serialized::defaults(EvalParams::default()))
        .merge(Toml::file(file))
        .extract()
        .with_context(|| format!("reading evaluation parameters from {}", file.display()))?;
    params.train.validate()?;
    Ok(params)
}

/// Evaluates every dataset under `data_dir` (the layout of `shared/data`).
pub async fn eval_all(data_dir: &Path, json: bool) -> anyhow::Result<Vec<EvalReport>> {
    eval_all_with(data_dir, &EvalParams::default(), json).await
}

/// [`eval_all`] with explicit parameters.
pub async fn eval_all_with(
    data_dir: &Path,
    params: &EvalParams,
    json: bool,
) -> anyhow::Result<Vec<EvalReport>> {
    let mut out = Vec::new();
    for d in Dataset::ALL {
        let path = data_dir.join(d.dir());
        if !path.exists() {
            eprintln!("skipping {d}: {} does not exist", path.display());
            continue;
        }
        out.push(eval_with(d, &path, params.clone(), json, true).await?);
    }
    Ok(out)
}

/// A Markdown section with the tables of several reports and the command that made them.
pub fn eval_markdown(reports: &[EvalReport], command: &str) -> String {
    let mut s = format!("Produced by `{command}`.\n\n");
    for r in reports {
        s.push_str(&r.markdown());
    }
    s
}

/// Exports the segments of `version` (default: `models/CURRENT`) from `models` to `out`
/// under `prefix`: `segments.csv`, `segment_members.csv`, and the same as Parquet.
pub async fn export_segments(
    models: Arc<dyn ObjectStore>,
    version: Option<&str>,
    out: Arc<dyn ObjectStore>,
    prefix: &str,
) -> anyhow::Result<Vec<String>> {
    let version = match version {
        Some(v) => v.to_string(),
        None => recstream_model::current_version(models.as_ref())
            .await?
            .with_context(|| {
                format!("no model in {} (run `recstream train`)", models.describe())
            })?,
    };
    let artifact = ModelArtifact::load(models.as_ref(), &version).await?;
    let segments = artifact
        .segments
        .with_context(|| format!("model {version} has no segments"))?;
    let keys = segments.export(out.as_ref(), prefix).await?;
    for k in &keys {
        eprintln!("wrote {}/{k}", out.describe());
    }
    Ok(keys)
}

/// Trains on an event source on the blocking pool (the archive is read from there).
async fn train_streamed(
    mut source: ArchiveSource,
    label: String,
    params: TrainParams,
    show_progress: bool,
) -> anyhow::Result<Result<ModelArtifact, recstream_model::ModelError>> {
    tokio::task::spawn_blocking(move || {
        let mut bars = Bars::new(show_progress);
        recstream_model::train_from(&mut source, &label, &params, &mut bars).map(|(a, _)| a)
    })
    .await
    .context("training task failed")
}

/// Whether the archive under `prefix` holds no event object at all.
async fn streamed_is_empty(store: &dyn ObjectStore, prefix: &str) -> anyhow::Result<bool> {
    Ok(!store
        .list(prefix)
        .await?
        .iter()
        .any(|k| k.ends_with(".parquet")))
}

/// Loads the whole log into memory, sorts it and trains on it (datasets, and archives
/// whose partitions are not in time order).
async fn train_loaded(
    source: &TrainSource,
    name: &str,
    label: String,
    params: TrainParams,
    show_progress: bool,
) -> anyhow::Result<ModelArtifact> {
    let events = load_events(source).await?;
    if events.is_empty() {
        bail!("no events in {name}");
    }
    eprintln!("training on {} events from {name}", events.len());
    tokio::task::spawn_blocking(move || {
        let mut bars = Bars::new(show_progress);
        recstream_model::train(&events, &label, &params, &mut bars).map(|(a, _)| a)
    })
    .await
    .context("training task failed")?
    .map_err(Into::into)
}

/// The whole log of a source in memory, sorted by time (an archive's repeated event ids
/// dropped, first row in key order kept). `recstream train` streams archives instead
/// ([`ArchiveSource`]); this is its fallback for archives out of time order.
async fn load_events(source: &TrainSource) -> anyhow::Result<Vec<Event>> {
    match source {
        TrainSource::Archive { store, prefix } => {
            let rows = recstream_ingest::archive::read_archive(store.as_ref(), prefix).await?;
            Ok(recstream_ingest::archive::unique_events_by_time(rows))
        }
        TrainSource::Dataset { dataset, path, csv } => {
            let (d, p, csv) = (*dataset, path.clone(), csv.clone());
            tokio::task::spawn_blocking(move || load_dataset(d, &p, csv.as_deref()))
                .await
                .context("loading task failed")?
        }
    }
}

fn events_of(rows: Vec<datasets::LoadedRow>) -> Vec<Event> {
    datasets::sort_by_time(rows)
        .into_iter()
        .filter_map(|r| r.event.ok())
        .collect()
}

fn load_dataset(d: Dataset, path: &Path, csv: Option<&CsvMapping>) -> anyhow::Result<Vec<Event>> {
    Ok(events_of(load_rows(d, path, csv)?))
}

/// The rows of a log: a dataset in its own format, or (with `csv`) a CSV file read
/// through a column mapping.
pub fn load_rows(
    d: Dataset,
    path: &Path,
    csv: Option<&CsvMapping>,
) -> anyhow::Result<Vec<datasets::LoadedRow>> {
    match csv {
        Some(m) => datasets::load_csv(path, m)
            .with_context(|| format!("loading the CSV log {}", path.display())),
        None => {
            datasets::load(d, path).with_context(|| format!("loading {d} from {}", path.display()))
        }
    }
}

/// A `--csv-map` argument: a mapping file (`.toml` or `.json`, the fields of
/// [`CsvMapping`]) when one exists at that path, else an inline
/// `user=…,item=…,ts=…[,type=…,session=…,category=…,price=…,type.<name>=<type>]` spec.
pub fn csv_mapping(arg: &str) -> anyhow::Result<CsvMapping> {
    let p = Path::new(arg);
    let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
    if p.is_file() && (ext == "toml" || ext == "json") {
        use figment::providers::{Format, Toml};
        let what = || format!("reading the CSV mapping {}", p.display());
        let m: CsvMapping = if ext == "toml" {
            figment::Figment::from(Toml::file(p))
                .extract()
                .with_context(what)?
        } else {
            serde_json::from_str(&std::fs::read_to_string(p).with_context(what)?)
                .with_context(what)?
        };
        m.check()?;
        return Ok(m);
    }
    Ok(CsvMapping::parse_spec(arg)?)
}

/// Train and test events of a dataset, each sorted by time.
pub fn load_split(
    d: Dataset,
    path: &Path,
    csv: Option<&CsvMapping>,
    train_fraction: f64,
) -> anyhow::Result<(Vec<Event>, Vec<Event>)> {
    if d == Dataset::YooChoose && csv.is_none() {
        let train = events_of(datasets::load_yoochoose_split(
            path,
            YooChooseSplit::TrainFull,
        )?);
        let test = events_of(datasets::load_yoochoose_split(path, YooChooseSplit::Test)?);
        return Ok((train, test));
    }
    Ok(temporal_split(load_dataset(d, path, csv)?, train_fraction))
}

/// Progress bars for the model crate's stages.
struct Bars {
    enabled: bool,
    bar: Option<ProgressBar>,
}

impl Bars {
    fn new(enabled: bool) -> Bars {
        Bars { enabled, bar: None }
    }
}

impl Progress for Bars {
    fn stage(&mut self, name: &str, total: u64) {
        if !self.enabled {
            return;
        }
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        let bar = if total > 0 {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template(
                    "{msg:>14} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            b
        } else {
            let b = ProgressBar::new_spinner();
            b.enable_steady_tick(std::time::Duration::from_millis(120));
            b
        };
        bar.set_message(name.to_string());
        self.bar = Some(bar);
    }

    fn inc(&mut self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    fn finish_stage(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use recstream_ingest::archive::{ArchivedRow, encode_events};
    use recstream_ingest::{SeqNo, ShardId, Timestamp};
    use recstream_scoring::ColdStartCache;

    fn data_dir() -> PathBuf {
        if let Some(d) = std::env::var_os("RECSTREAM_DATA_DIR") {
            return PathBuf::from(d);
        }
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        [root.join("../shared/data"), root.join("../../shared/data")]
            .into_iter()
            .find(|p| p.is_dir())
            .expect("real datasets missing: set RECSTREAM_DATA_DIR")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn train_from_an_archive_publish_and_export_segments() {
        let events =
            load_dataset(Dataset::Rees46, &data_dir().join("rees46_multicat"), None).unwrap();
        let rows: Vec<ArchivedRow> = events
            .iter()
            .enumerate()
            .map(|(i, e)| ArchivedRow {
                shard: ShardId::new("shardId-000000000000"),
                seq: SeqNo::from_u64(i as u64 + 1),
                sub_seq: 0,
                arrival: Timestamp(e.ts.0 + 250),
                raw: Bytes::from(e.to_json()),
                event: e.clone(),
            })
            .collect();
        let archive = tempfile::tempdir().unwrap();
        let store = LocalObjectStore::new(archive.path());
        let half = rows.len() / 2;
        for (k, part) in [
            ("events/dt=2019-10-01/hour=00/a.parquet", &rows[..half]),
            ("events/dt=2019-10-01/hour=01/b.parquet", &rows[half..]),
        ] {
            store.put(k, encode_events(part).unwrap()).await.unwrap();
        }
        let models_dir = tempfile::tempdir().unwrap();
        let models: Arc<dyn ObjectStore> = Arc::new(LocalObjectStore::new(models_dir.path()));
        let (summary, artifact) = train(
            TrainSource::local_archive(archive.path()),
            models.clone(),
            TrainParams::default(),
            false,
        )
        .await
        .unwrap();
        assert_eq!(summary.meta.events, events.len() as u64);
        assert!(summary.segments >= 2 && summary.similar_products > 0);
        assert_eq!(
            recstream_model::current_version(models.as_ref())
                .await
                .unwrap(),
            Some(summary.version.clone())
        );

        let cache = recstream_scoring::InProcessCache::new();
        assert!(publish_cold_start(&artifact, &cache).await.unwrap() >= 1);
        let overall = cache.top("overall").await.unwrap().unwrap();
        assert_eq!(overall.source, summary.version);
        assert!(!overall.items.is_empty());

        let out_dir = tempfile::tempdir().unwrap();
        let out: Arc<dyn ObjectStore> = Arc::new(LocalObjectStore::new(out_dir.path()));
        let keys = export_segments(models, None, out, "exports").await.unwrap();
        assert_eq!(keys.len(), 4);
        assert!(
            out_dir
                .path()
                .join("exports/segment_members.parquet")
                .is_file()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn eval_on_the_otto_sample() {
        // OTTO's 20 sessions give ~100 targets and a handful of hits per method: the run
        // is checked for shape, not for who wins (a hit more or less flips that).
        let report = eval(Dataset::Otto, &data_dir().join("otto_sample"), true)
            .await
            .unwrap();
        assert_eq!(report.dataset, "otto");
        assert_eq!(report.rows.len(), 5 * 2 * 2);
        for task in ["any", "discovery"] {
            assert!(
                report
                    .ndcg_lift("model_ftrl", "covisit", task, 20)
                    .is_some()
            );
        }
        assert!(eval_markdown(&[report], "recstream eval otto").contains("| model |"));
    }

    #[test]
    fn eval_params_come_from_a_toml_file_over_the_defaults() {
        assert_eq!(eval_params(None).unwrap(), EvalParams::default());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("eval.toml");
        std::fs::write(&f, "max_targets = 500\n[train]\nl2 = 0.3\n").unwrap();
        let p = eval_params(Some(&f)).unwrap();
        assert_eq!((p.max_targets, p.train.l2), (500, 0.3));
        assert_eq!(
            p.train.negatives_per_positive, 10,
            "the rest keeps its default"
        );
        std::fs::write(&f, "[train]\nno_such_field = 1\n").unwrap();
        assert!(eval_params(Some(&f)).is_err(), "unknown fields are refused");
        std::fs::write(&f, "[train]\nl2 = -1.0\n").unwrap();
        assert!(eval_params(Some(&f)).is_err(), "invalid values are refused");
        assert!(eval_params(Some(&dir.path().join("missing.toml"))).is_err());
    }
}
