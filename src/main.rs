//! The `recstream` command line: wires the crates together, nothing more.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use recstream::cmd_model::{self, TrainSource};
use recstream::config::{Config, Mode};
use recstream::runtime::{Runtime, install_metrics, reset_dir, serve_metrics, shutdown_signal};
use recstream_commerce::{CommerceState, Secret, Secrets};
use recstream_ingest::datasets::{self, Dataset};
use recstream_ingest::object_store::s3::S3ObjectStore;
use recstream_ingest::source::file::FileReplaySource;
use recstream_ingest::{LocalObjectStore, ObjectStore, ShardId, Source};
use recstream_scoring::Request;

/// The demo's bundled sample: the first rows of REES46 2019-Oct (see data/README.md).
const SAMPLE: &str = "data/sample/rees46-2019-10-01-head.csv.gz";

#[derive(Parser)]
#[command(
    name = "recstream",
    version,
    about = "Real-time recommendation stream processor for e-commerce"
)]
struct Cli {
    /// Log filter (RUST_LOG syntax).
    #[arg(long, global = true, env = "RECSTREAM_LOG", default_value = "info")]
    log: String,
    /// Log as JSON lines.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ReplayTarget {
    /// Through the pipeline in this process (the configured stores).
    Pipeline,
    /// Into the configured Kinesis stream with PutRecords (a producer).
    Kinesis,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Role {
    /// The API and, in AWS mode, the shard processors.
    All,
    /// Only the HTTP API (and the collector).
    Serve,
    /// Only the shard processors (AWS mode).
    Process,
}

#[derive(Subcommand)]
enum Command {
    /// Replay the bundled real sample through the whole pipeline and serve recommendations.
    Demo {
        /// Address to serve on (default: the configuration's `server.listen`, 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Where the demo keeps its state (wiped at start).
        #[arg(long, default_value = ".recstream/demo")]
        data_dir: PathBuf,
        /// Stop after this many seconds of serving (for scripts); default: until Ctrl-C.
        #[arg(long)]
        exit_after: Option<f64>,
        /// The sample to replay (REES46 CSV, optionally .gz; any CSV with --csv-map).
        #[arg(long, default_value = SAMPLE)]
        sample: PathBuf,
        /// Also write the demo's credentials and address as JSON to this file (mode 0600),
        /// once the server is ready: `{"base_url", "storefront_key", "shopper",
        /// "shopper_token", "marketing_token", "admin_token"}`. For scripts (the hostile-input
        /// suite in scripts/test).
        #[arg(long)]
        credentials_file: Option<PathBuf>,
        /// Read --sample as a CSV log through this column mapping: inline
        /// `user=COL,item=COL,ts=COL[,type=COL,session=COL,category=COL,price=COL,type.NAME=TYPE]`
        /// or a .toml / .json mapping file.
        #[arg(long)]
        csv_map: Option<String>,
        /// Configuration file, as for `run` (and RECSTREAM__* variables); the demo keeps
        /// its state under --data-dir.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Create the stream, tables and bucket of AWS mode if missing (idempotent).
    Init {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run the API and the processors with a configuration file.
    Run {
        #[arg(long)]
        config: Option<PathBuf>,
        /// What this process does.
        #[arg(long, value_enum, default_value = "all")]
        role: Role,
        #[arg(long)]
        exit_after: Option<f64>,
    },
    /// Replay a dataset (rees46, diginetica, yoochoose, otto) through the pipeline or
    /// into Kinesis.
    Replay {
        /// Dataset name.
        dataset: Dataset,
        /// File or directory of the dataset (default: ../shared/data/<dataset dir>).
        #[arg(long)]
        path: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where the events go.
        #[arg(long, value_enum, default_value = "pipeline")]
        to: ReplayTarget,
        /// Replay at N times real time (event time); default: as fast as possible.
        #[arg(long)]
        speed: Option<f64>,
        /// Only the first N rows.
        #[arg(long)]
        limit: Option<usize>,
        /// Print the run summary as JSON.
        #[arg(long)]
        json: bool,
        /// Read --path as a CSV log through this column mapping (see `demo --csv-map`).
        #[arg(long, requires = "path")]
        csv_map: Option<String>,
    },
    /// Train the models from the Parquet archive (or a dataset) and publish a new version.
    Train {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Archive root holding `events/`: a directory or s3://bucket[/prefix]
        /// (default: the configured object store).
        #[arg(long, conflicts_with = "dataset")]
        archive: Option<String>,
        /// Train on a public dataset instead of the archive.
        #[arg(long)]
        dataset: Option<Dataset>,
        /// The dataset's file or directory (default: ../shared/data/<dataset dir>).
        #[arg(long, requires = "dataset")]
        path: Option<PathBuf>,
        /// Where `models/` is written: a directory or s3://bucket[/prefix]
        /// (default: the configured object store, where servers reload it).
        #[arg(long)]
        out: Option<String>,
        /// Training parameters (JSON, every field optional).
        #[arg(long)]
        params: Option<PathBuf>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// Read --path as a CSV log through this column mapping (see `demo --csv-map`).
        #[arg(long, requires = "path")]
        csv_map: Option<String>,
    },
    /// Offline evaluation of the served list (the endpoint's `Recommender`, its
    /// configuration) against baselines on two protocols: next event in the session and
    /// next period per user. HR, Recall, NDCG, MRR @10/@20, coverage.
    Eval {
        /// One dataset; default: every dataset under --data-dir.
        dataset: Option<Dataset>,
        /// The dataset's file or directory.
        #[arg(long, requires = "dataset")]
        path: Option<PathBuf>,
        /// Where the datasets live (the layout of shared/data).
        #[arg(long, default_value = "../shared/data")]
        data_dir: PathBuf,
        /// Print JSON reports.
        #[arg(long)]
        json: bool,
        /// Also write the tables as Markdown to this file.
        #[arg(long)]
        markdown: Option<PathBuf>,
        /// Evaluation and training parameters (TOML, the fields of `EvalParams`, e.g.
        /// `[train]` `l2 = 0.3`, `[scoring]` `max_per_category = 6`); the defaults otherwise.
        #[arg(long)]
        params: Option<PathBuf>,
        /// The configuration whose `[scoring]` the endpoint uses (and RECSTREAM__* env).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Targets evaluated at most per protocol (sampled, fixed seed).
        #[arg(long)]
        limit: Option<usize>,
        /// The model crate's comparison instead: its rankers over the candidate set vs
        /// popularity and co-visitation (next event only).
        #[arg(long)]
        models: bool,
        /// Read --path as a CSV log through this column mapping (see `demo --csv-map`).
        #[arg(long, requires = "path")]
        csv_map: Option<String>,
        /// Leave-one-dataset-out tuning instead: every point of the grid
        /// (`recstream_eval::tune::grid`) on every dataset under --data-dir; for each
        /// dataset, the point best on the other three and its score on it.
        #[arg(long, conflicts_with_all = ["models", "dataset"])]
        tune: bool,
    },
    /// Marketing segments of the current model.
    Segments {
        #[command(subcommand)]
        command: SegmentsCommand,
    },
}

#[derive(Subcommand)]
enum SegmentsCommand {
    /// Write segments and members as CSV and Parquet.
    Export {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Model store holding `models/` (default: the configured object store).
        #[arg(long)]
        models: Option<String>,
        /// The model version (default: models/CURRENT).
        #[arg(long)]
        version: Option<String>,
        /// Output: a directory or s3://bucket[/prefix].
        #[arg(long)]
        out: String,
    },
}

fn init_tracing(filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.compact().init();
    }
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    Config::load(path).map_err(|e| anyhow::anyhow!("configuration: {e}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(&cli.log, cli.log_json);
    match cli.command {
        Command::Demo {
            listen,
            data_dir,
            exit_after,
            sample,
            credentials_file,
            csv_map,
            config,
        } => {
            let cfg = Config::for_demo(config.as_deref(), listen, &data_dir)
                .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
            let csv = csv_map.as_deref().map(cmd_model::csv_mapping).transpose()?;
            reset_dir(&data_dir)?;
            demo(
                cfg,
                &sample,
                csv.as_ref(),
                exit_after.map(Duration::from_secs_f64),
                credentials_file.as_deref(),
            )
            .await
        }
        Command::Init { config } => {
            let cfg = load_config(config.as_deref())?;
            let rt = Runtime::open(cfg).await?;
            for line in recstream::kinesis::init(&rt.cfg, rt.aws.as_ref()).await? {
                println!("{line}");
            }
            Ok(())
        }
        Command::Run {
            config,
            role,
            exit_after,
        } => {
            let cfg = load_config(config.as_deref())?;
            run(cfg, role, exit_after.map(Duration::from_secs_f64)).await
        }
        Command::Replay {
            dataset,
            path,
            config,
            to,
            speed,
            limit,
            json,
            csv_map,
        } => {
            let cfg = load_config(config.as_deref())?;
            let path = path.unwrap_or_else(|| default_dataset_path(dataset));
            let csv = csv_map.as_deref().map(cmd_model::csv_mapping).transpose()?;
            replay(cfg, dataset, &path, csv.as_ref(), to, speed, limit, json).await
        }
        Command::Train {
            config,
            archive,
            dataset,
            path,
            out,
            params,
            json,
            csv_map,
        } => {
            let cfg = load_config(config.as_deref())?;
            let csv = csv_map.as_deref().map(cmd_model::csv_mapping).transpose()?;
            train(cfg, archive, dataset, path, csv, out, params, json).await
        }
        Command::Eval {
            dataset,
            path,
            data_dir,
            json,
            markdown,
            params,
            config,
            limit,
            models,
            tune,
            csv_map,
        } if !models => {
            let csv = csv_map.as_deref().map(cmd_model::csv_mapping).transpose()?;
            let cfg = load_config(config.as_deref())?;
            let mut params = recstream::cmd_eval::params(params.as_deref(), cfg.scoring)?;
            if let Some(l) = limit {
                params.max_targets = l.max(1);
            }
            if tune {
                let report = recstream::cmd_eval::tune(&data_dir, &params, 500).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    println!("{}", report.markdown());
                }
                if let Some(f) = markdown {
                    let cmd = std::env::args().collect::<Vec<_>>().join(" ");
                    let doc = format!("Produced by `{cmd}`.\n\n{}", report.markdown());
                    std::fs::write(&f, doc).with_context(|| format!("writing {}", f.display()))?;
                    eprintln!("wrote {}", f.display());
                }
                return Ok(());
            }
            let mut reports = Vec::new();
            let sets: Vec<(Dataset, PathBuf)> = match dataset {
                Some(d) => vec![(d, path.unwrap_or_else(|| data_dir.join(d.dir())))],
                None => Dataset::ALL
                    .into_iter()
                    .map(|d| (d, data_dir.join(d.dir())))
                    .filter(|(d, p)| {
                        let found = p.exists();
                        if !found {
                            eprintln!("skipping {d}: {} does not exist", p.display());
                        }
                        found
                    })
                    .collect(),
            };
            for (d, p) in sets {
                eprintln!("evaluating {d} ({})", p.display());
                let r = recstream::cmd_eval::eval(d, &p, csv.as_ref(), &params).await?;
                if !json {
                    println!("{}", recstream::cmd_eval::table(&r));
                }
                reports.push(r);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            }
            if let Some(f) = markdown {
                let cmd = std::env::args().collect::<Vec<_>>().join(" ");
                std::fs::write(&f, recstream::cmd_eval::markdown(&reports, &cmd))
                    .with_context(|| format!("writing {}", f.display()))?;
                eprintln!("wrote {}", f.display());
            }
            Ok(())
        }
        Command::Eval {
            dataset,
            path,
            data_dir,
            json,
            markdown,
            params,
            ..
        } => {
            let params = cmd_model::eval_params(params.as_deref())?;
            let reports = match dataset {
                Some(d) => {
                    let p = path.unwrap_or_else(|| data_dir.join(d.dir()));
                    vec![cmd_model::eval_with(d, &p, params, json, true).await?]
                }
                None => cmd_model::eval_all_with(&data_dir, &params, json).await?,
            };
            if let Some(f) = markdown {
                let cmd = std::env::args().collect::<Vec<_>>().join(" ");
                std::fs::write(&f, cmd_model::eval_markdown(&reports, &cmd))
                    .with_context(|| format!("writing {}", f.display()))?;
                eprintln!("wrote {}", f.display());
            }
            Ok(())
        }
        Command::Segments {
            command:
                SegmentsCommand::Export {
                    config,
                    models,
                    version,
                    out,
                },
        } => {
            let cfg = load_config(config.as_deref())?;
            let models = match models {
                Some(spec) => store_at(&cfg, &spec).await?,
                None => configured_store(&cfg).await?,
            };
            let out = store_at(&cfg, &out).await?;
            cmd_model::export_segments(models, version.as_deref(), out, "").await?;
            Ok(())
        }
    }
}

fn default_dataset_path(d: Dataset) -> PathBuf {
    PathBuf::from("../shared/data").join(d.dir())
}

/// An object store from a location: `s3://bucket[/prefix]` or a local directory.
async fn store_at(cfg: &Config, spec: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
    if let Some(rest) = spec.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let aws = recstream_ingest::aws::AwsConfig {
            bucket: bucket.to_string(),
            prefix: prefix.trim_end_matches('/').to_string(),
            ..cfg.aws.clone()
        };
        aws.validate().map_err(anyhow::Error::msg)?;
        Ok(Arc::new(S3ObjectStore::from_env(&aws).await))
    } else {
        Ok(Arc::new(LocalObjectStore::new(spec)))
    }
}

/// The object store of the configured mode (the archive, snapshots and models).
async fn configured_store(cfg: &Config) -> anyhow::Result<Arc<dyn ObjectStore>> {
    Ok(match cfg.mode {
        Mode::Embedded => Arc::new(LocalObjectStore::new(cfg.embedded.data_dir.join("bucket"))),
        Mode::Aws => Arc::new(S3ObjectStore::from_env(&cfg.aws).await),
    })
}

fn progress(total: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} events ({per_sec}, eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Replays rows through one file shard, with a progress bar; returns the summary.
async fn replay_rows(
    rt: &Runtime,
    dataset: Dataset,
    rows: Vec<datasets::LoadedRow>,
    speed: Option<f64>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<(recstream_pipeline::ShardSummary, Duration)> {
    let total = rows.len() as u64;
    let shard = ShardId::new(&format!("file:{dataset}"));
    let pb = progress(total, &format!("replaying {dataset}"));
    let started = Instant::now();
    let s = shard.clone();
    let (stats, handle) = rt
        .spawn_shard(
            shard,
            move |after| {
                let mut src = FileReplaySource::new(s, rows, after);
                if let Some(x) = speed {
                    src = src.with_speed(x);
                }
                Ok(Box::new(src) as Box<dyn Source>)
            },
            shutdown,
        )
        .await?;
    while !handle.is_finished() {
        pb.set_position(stats.records.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let summary = handle.await.context("replay task")??;
    let elapsed = started.elapsed();
    pb.set_position(stats.records.load(Ordering::Relaxed));
    pb.finish_and_clear();
    Ok((summary, elapsed))
}

#[allow(clippy::too_many_arguments)]
async fn replay(
    cfg: Config,
    dataset: Dataset,
    path: &Path,
    csv: Option<&datasets::CsvMapping>,
    to: ReplayTarget,
    speed: Option<f64>,
    limit: Option<usize>,
    json: bool,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let mut rows = cmd_model::load_rows(dataset, path, csv)?;
    if let Some(n) = limit {
        rows.truncate(n);
    }
    let load_time = t0.elapsed();
    if to == ReplayTarget::Kinesis {
        return produce(cfg, dataset, rows, json).await;
    }
    let rt = Runtime::open(cfg).await?;
    let (_tx, rx) = shutdown_signal(None);
    let (summary, elapsed) = replay_rows(&rt, dataset, rows, speed, rx).await?;
    let eps = summary.records as f64 / elapsed.as_secs_f64().max(1e-9);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "dataset": dataset.to_string(),
                "summary": summary,
                "load_seconds": load_time.as_secs_f64(),
                "pipeline_seconds": elapsed.as_secs_f64(),
                "events_per_second": eps,
            })
        );
    } else {
        println!(
            "replayed {} records of {dataset} in {:.2}s ({:.0} events/s end to end, incl. archive and store): {} accepted, {} dead-lettered, {} archived",
            summary.records,
            elapsed.as_secs_f64(),
            eps,
            summary.accepted,
            summary.dead_letters,
            summary.archived_rows
        );
    }
    Ok(())
}

/// `replay --to kinesis`: a producer. Every row that maps onto an event is put as its
/// JSON with the user id as partition key; rows that do not are reported, not sent.
async fn produce(
    cfg: Config,
    dataset: Dataset,
    rows: Vec<datasets::LoadedRow>,
    json: bool,
) -> anyhow::Result<()> {
    if cfg.mode != Mode::Aws {
        bail!("--to kinesis needs mode = \"aws\" in the configuration");
    }
    let rt = Runtime::open(cfg).await?;
    let aws = rt.aws.as_ref().expect("aws mode");
    let mut skipped = 0u64;
    let records: Vec<(String, Bytes)> = rows
        .into_iter()
        .filter_map(|r| match r.event {
            Ok(e) => Some((e.user_id.to_string(), Bytes::from(e.to_json()))),
            Err(err) => {
                skipped += 1;
                tracing::debug!(line = r.line, error = %err, "row not sent");
                None
            }
        })
        .collect();
    let pb = progress(records.len() as u64, &format!("putting {dataset}"));
    let started = Instant::now();
    let sent =
        recstream::kinesis::put_events(&aws.producer, records, |n| pb.set_position(n)).await?;
    pb.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "dataset": dataset.to_string(),
                "stream": rt.cfg.aws.stream,
                "sent": sent,
                "skipped": skipped,
                "seconds": secs,
            })
        );
    } else {
        println!(
            "put {sent} events of {dataset} into {} in {secs:.2}s ({skipped} rows that are not events skipped)",
            rt.cfg.aws.stream
        );
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn train(
    cfg: Config,
    archive: Option<String>,
    dataset: Option<Dataset>,
    path: Option<PathBuf>,
    csv: Option<datasets::CsvMapping>,
    out: Option<String>,
    params: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    let source = match (dataset, archive) {
        (Some(d), _) => TrainSource::Dataset {
            dataset: d,
            path: path.unwrap_or_else(|| default_dataset_path(d)),
            csv: csv.map(Box::new),
        },
        (None, Some(spec)) => TrainSource::Archive {
            store: store_at(&cfg, &spec).await?,
            prefix: "events/".into(),
        },
        (None, None) => TrainSource::Archive {
            store: configured_store(&cfg).await?,
            prefix: "events/".into(),
        },
    };
    let out = match out {
        Some(spec) => store_at(&cfg, &spec).await?,
        None => configured_store(&cfg).await?,
    };
    let params = cmd_model::load_train_params(params.as_deref())?;
    let (summary, artifact) = cmd_model::train(source, out, params, !json).await?;
    if cfg.mode == Mode::Aws {
        // Servers also publish on reload; doing it here makes the lists current at once.
        let cache =
            recstream_scoring::cold_start::redis::RedisColdStartCache::connect(&cfg.aws.redis_url)
                .await?;
        let n = cmd_model::publish_cold_start(&artifact, &cache).await?;
        eprintln!("published {n} cold-start lists to redis");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "trained model {} in {:.2}s: {} similar-product lists, {} segments, {} cold-start lists → {}",
            summary.version,
            summary.wall_seconds,
            summary.similar_products,
            summary.segments,
            summary.cold_start_lists,
            summary.output
        );
    }
    Ok(())
}

/// The demo's credentials: an HS256 secret (`RECSTREAM_JWT_HS256_SECRET` or a random one)
/// with tokens signed by it, and a storefront API key registered in `cfg`.
struct DemoCredentials {
    secrets: Secrets,
    storefront_key: String,
    shopper: String,
    shopper_token: String,
    marketing_token: String,
    admin_token: String,
}

fn demo_credentials(cfg: &mut Config, shopper: &str) -> anyhow::Result<DemoCredentials> {
    use recstream_commerce::auth::jsonwebtoken;
    use recstream_serving::auth::{ApiClient, Scope, new_key};
    let mut secrets = Secrets::from_env();
    let secret = match &secrets.jwt_hs256 {
        Some(s) => s.expose().to_string(),
        None => {
            let s = format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            );
            secrets.jwt_hs256 = Some(Secret::new(s.clone()));
            s
        }
    };
    let exp = jsonwebtoken::get_current_timestamp() + 24 * 3600;
    let groups_claim = cfg.commerce.auth.groups_claim.clone();
    let mint = |sub: &str, groups: &[&str]| -> anyhow::Result<String> {
        let mut claims = serde_json::json!({"sub": sub, "exp": exp});
        if !groups.is_empty() {
            claims[groups_claim.as_str()] = serde_json::json!(groups);
        }
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .context("minting a demo token")
    };
    let (storefront_key, hash) = new_key();
    cfg.server.auth.clients.push(ApiClient {
        id: "demo-storefront".into(),
        scopes: vec![Scope::EventsWrite, Scope::RecommendationsRead],
        key_sha256: vec![hash],
    });
    Ok(DemoCredentials {
        shopper_token: mint(shopper, &[])?,
        marketing_token: mint("demo-marketing", &["marketing"])?,
        admin_token: mint("demo-admin", &["admin"])?,
        shopper: shopper.to_string(),
        storefront_key,
        secrets,
    })
}

/// Writes the demo's credentials as JSON, readable by the owner only, atomically (a
/// temporary file renamed into place), so a script polling for the file reads it whole.
fn write_credentials(path: &Path, creds: &DemoCredentials, base_url: &str) -> anyhow::Result<()> {
    let body = serde_json::json!({
        "base_url": base_url,
        "storefront_key": creds.storefront_key,
        "shopper": creds.shopper,
        "shopper_token": creds.shopper_token,
        "marketing_token": creds.marketing_token,
        "admin_token": creds.admin_token,
    });
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(serde_json::to_string_pretty(&body)?.as_bytes())?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

async fn demo(
    mut cfg: Config,
    sample: &Path,
    csv: Option<&datasets::CsvMapping>,
    exit_after: Option<Duration>,
    credentials_file: Option<&Path>,
) -> anyhow::Result<()> {
    if !sample.exists() {
        bail!(
            "the demo sample {} is missing: run the demo from the repository root",
            sample.display()
        );
    }
    // The bundled sample is REES46; a CSV read through a mapping is the user's own log.
    let dataset = if csv.is_some() {
        Dataset::Events
    } else {
        Dataset::Rees46
    };
    let rows = cmd_model::load_rows(dataset, sample, csv)?;
    let top_users = busiest_users(&rows, 3);
    let demo_user = top_users.first().cloned().unwrap_or_else(|| "u1".into());
    let creds = demo_credentials(&mut cfg, &demo_user)?;

    let metrics = install_metrics();
    let rt = Runtime::open(cfg.clone()).await?;
    let (shutdown_tx, shutdown) = shutdown_signal(None);
    let ready = Arc::new(AtomicBool::new(false));
    // The demo serves metrics on an internal loopback listener unless one is configured.
    let metrics_addr = match metrics {
        Some(h) => Some(
            serve_metrics(
                cfg.server
                    .metrics_listen
                    .unwrap_or_else(|| "127.0.0.1:0".parse().expect("valid address")),
                h,
                shutdown.clone(),
            )
            .await?,
        ),
        None => None,
    };

    let (collector, collector_task) = rt.spawn_collector(shutdown.clone()).await?;
    // The demo's shop sells what the sample shows: every product seen, at its last price.
    let shop = demo_shop(&rows);
    let commerce = CommerceState::builder(cfg.commerce.clone(), collector.clone())
        .secrets(creds.secrets.clone())
        .seed(shop)
        .build()
        .await
        .context("opening the commerce state")?;
    let workers = commerce.spawn_workers();
    let listener = tokio::net::TcpListener::bind(cfg.server.listen)
        .await
        .with_context(|| format!("binding {}", cfg.server.listen))?;
    let addr = listener.local_addr()?;
    let server = {
        let rt = rt.clone();
        let ready = ready.clone();
        let shutdown = shutdown.clone();
        let collector = collector.clone();
        tokio::spawn(async move {
            rt.serve(listener, collector, Some(commerce), ready, shutdown)
                .await
        })
    };

    let (summary, elapsed) = replay_rows(&rt, dataset, rows, None, shutdown.clone()).await?;
    println!(
        "\nreplayed {} {dataset} events in {:.2}s ({:.0} events/s): {} accepted, {} dead-lettered, {} archived as Parquet under {}",
        summary.records,
        elapsed.as_secs_f64(),
        summary.records as f64 / elapsed.as_secs_f64().max(1e-9),
        summary.accepted,
        summary.dead_letters,
        summary.archived_rows,
        rt.sinks.objects.describe()
    );
    // Train on the archive just written, as `recstream train` would, and load the model.
    let (trained, _) = cmd_model::train(
        TrainSource::Archive {
            store: rt.sinks.objects.clone(),
            prefix: "events/".into(),
        },
        rt.sinks.objects.clone(),
        recstream_model::TrainParams::default(),
        false,
    )
    .await?;
    rt.reload_model().await?;
    rt.refresh_cold_start().await?;
    let reloader = rt.spawn_model_reloader(shutdown.clone());
    ready.store(true, Ordering::Release);
    println!(
        "trained model {} on the archive ({} segments, {} similar-product lists)",
        trained.version, trained.segments, trained.similar_products
    );
    for user in top_users
        .iter()
        .chain(std::iter::once(&"new-visitor".to_string()))
    {
        let recs = rt
            .recommender
            .recommend(&Request {
                user_id: user.clone(),
                n: Some(5),
                context: vec![],
            })
            .await?;
        let items: Vec<String> = recs
            .items
            .iter()
            .map(|i| format!("{} ({:?}, {:.2})", i.product_id, i.reason, i.score))
            .collect();
        println!("  user {user} [{:?}]: {}", recs.strategy, items.join(", "));
    }
    // Scripts and tests read these lines (prefix up to the colon is stable).
    println!("\ncredentials (demo only, valid 24 h):");
    println!("  storefront key: {}", creds.storefront_key);
    println!("  shopper: {}", creds.shopper);
    println!("  shopper token: {}", creds.shopper_token);
    println!("  marketing token: {}", creds.marketing_token);
    println!("  admin token: {}", creds.admin_token);
    if let Some(m) = metrics_addr {
        println!("  metrics (internal listener): http://{m}/metrics");
    }
    let (u, key) = (&creds.shopper, &creds.storefront_key);
    println!("try:");
    println!("  curl -s -H 'x-api-key: {key}' http://{addr}/v1/recommendations/{u}?n=5");
    println!(
        "  curl -s -H 'authorization: Bearer {}' http://{addr}/v1/recommendations/{u}?n=5",
        creds.shopper_token
    );
    println!(
        "  curl -s -H 'authorization: Bearer {}' http://{addr}/v1/carts/{u}",
        creds.shopper_token
    );
    println!(
        "  curl -s -H 'authorization: Bearer {}' http://{addr}/v1/segments",
        creds.marketing_token
    );
    if let Some(path) = credentials_file {
        write_credentials(path, &creds, &format!("http://{addr}"))?;
    }
    println!("serving on http://{addr}");
    println!("(Ctrl-C to stop)");

    if let Some(d) = exit_after {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = async { let mut s = shutdown.clone(); let _ = s.wait_for(|s| *s).await; } => {}
        }
        let _ = shutdown_tx.send(true);
    }
    server.await.context("server task")??;
    workers.shutdown(Duration::from_secs(5)).await;
    reloader.abort();
    if let Some(t) = collector_task {
        t.await.context("collector task")??;
    }
    Ok(())
}

/// `recstream run`: the API (collector, recommendations, segments, commerce) and, in AWS
/// mode, the Kinesis shard processors, until Ctrl-C / SIGTERM / `--exit-after`.
async fn run(cfg: Config, role: Role, exit_after: Option<Duration>) -> anyhow::Result<()> {
    if role == Role::Process && cfg.mode != Mode::Aws {
        bail!("--role process needs mode = \"aws\" (embedded mode processes in the server)");
    }
    let metrics = install_metrics();
    let rt = Runtime::open(cfg.clone()).await?;
    let (_tx, shutdown) = shutdown_signal(exit_after);
    if let Err(e) = rt.reload_model().await {
        tracing::warn!(error = %e, "no model loaded; ranking by the blend until one is trained");
    }
    let reloader = rt.spawn_model_reloader(shutdown.clone());
    let workers = match (cfg.mode, role) {
        (Mode::Aws, Role::All | Role::Process) => {
            Some(tokio::spawn(rt.clone().run_workers(shutdown.clone())))
        }
        _ => None,
    };
    let mut collector_task = None;
    if role != Role::Process {
        let (collector, task) = rt.spawn_collector(shutdown.clone()).await?;
        collector_task = task;
        if let Err(e) = rt.refresh_cold_start().await {
            tracing::warn!(error = %e, "cold-start lists not refreshed");
        }
        let commerce = rt.commerce(collector.clone()).await?;
        let commerce_workers = commerce.as_ref().map(CommerceState::spawn_workers);
        let listener = tokio::net::TcpListener::bind(cfg.server.listen)
            .await
            .with_context(|| format!("binding {}", cfg.server.listen))?;
        // Scripts read the bound address (the port may be 0) from this line.
        println!("serving on http://{}", listener.local_addr()?);
        match (cfg.server.metrics_listen, metrics) {
            (Some(addr), Some(h)) => {
                let bound = serve_metrics(addr, h, shutdown.clone()).await?;
                println!("metrics on http://{bound}/metrics");
            }
            (None, _) => tracing::info!(
                "metrics are not served over HTTP (set server.metrics_listen for an internal listener)"
            ),
            (Some(_), None) => tracing::warn!("the metrics recorder is not installed"),
        }
        rt.serve(
            listener,
            collector,
            commerce,
            Arc::new(AtomicBool::new(true)),
            shutdown.clone(),
        )
        .await?;
        if let Some(w) = commerce_workers {
            w.shutdown(Duration::from_secs(5)).await;
        }
    } else {
        let mut s = shutdown.clone();
        let _ = s.wait_for(|s| *s).await;
    }
    if let Some(w) = workers {
        w.await.context("kinesis workers")??;
    }
    if let Some(t) = collector_task {
        t.await.context("collector task")??;
    }
    reloader.abort();
    Ok(())
}

/// The demo shop: every product of the replayed sample, with its last price, category
/// and brand, and a generated stock (deterministic per id, 5 to 54 units).
fn demo_shop(rows: &[datasets::LoadedRow]) -> Vec<recstream_commerce::catalog::SeedProduct> {
    let mut last: std::collections::BTreeMap<&str, &recstream_ingest::Event> = Default::default();
    for r in rows {
        if let Ok(e) = &r.event
            && let Some(p) = &e.product_id
        {
            let seen = last.entry(p.as_str()).or_insert(e);
            if e.ts >= seen.ts {
                *seen = e;
            }
        }
    }
    last.into_iter()
        .map(|(id, e)| {
            let stock = 5 + id
                .bytes()
                .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32))
                % 50;
            recstream_commerce::catalog::SeedProduct {
                id: id.to_string(),
                name: format!(
                    "{} {}",
                    e.brand
                        .as_deref()
                        .filter(|b| !b.is_empty())
                        .unwrap_or("product"),
                    id
                ),
                category: e.category.as_ref().map(|c| c.to_string()),
                price: e
                    .price
                    .clone()
                    .filter(|p| p.amount > 0)
                    .unwrap_or_else(|| recstream_ingest::Money::new(100, "USD")),
                stock: stock as i64,
                active: true,
            }
        })
        .collect()
}

/// The users with the most events in the sample (good demo subjects).
fn busiest_users(rows: &[datasets::LoadedRow], n: usize) -> Vec<String> {
    let mut counts: std::collections::HashMap<&str, usize> = Default::default();
    for r in rows {
        if let Ok(e) = &r.event {
            *counts.entry(e.user_id.as_str()).or_default() += 1;
        }
    }
    let mut v: Vec<(&str, usize)> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    v.into_iter().take(n).map(|(u, _)| u.to_string()).collect()
}
