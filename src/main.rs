//! The `recstream` command line: wires the crates together, nothing more.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use recstream::config::Config;
use recstream::runtime::{Runtime, install_metrics, reset_dir, shutdown_signal};
use recstream_ingest::datasets::{self, Dataset};
use recstream_ingest::source::file::FileReplaySource;
use recstream_ingest::{ShardId, Source};
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

#[derive(Subcommand)]
enum Command {
    /// Replay the bundled real sample through the whole pipeline and serve recommendations.
    Demo {
        /// Address to serve on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Where the demo keeps its state (wiped at start).
        #[arg(long, default_value = ".recstream/demo")]
        data_dir: PathBuf,
        /// Stop after this many seconds of serving (for scripts); default: until Ctrl-C.
        #[arg(long)]
        exit_after: Option<f64>,
        /// The sample to replay (REES46 CSV, optionally .gz).
        #[arg(long, default_value = SAMPLE)]
        sample: PathBuf,
    },
    /// Run the processor and the API with a configuration file.
    Run {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        exit_after: Option<f64>,
    },
    /// Replay a dataset (rees46, diginetica, yoochoose, otto) through the pipeline.
    Replay {
        /// Dataset name.
        dataset: Dataset,
        /// File or directory of the dataset (default: ../shared/data/<dataset dir>).
        #[arg(long)]
        path: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        /// Replay at N times real time (event time); default: as fast as possible.
        #[arg(long)]
        speed: Option<f64>,
        /// Print the run summary as JSON.
        #[arg(long)]
        json: bool,
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
        } => {
            let mut cfg = Config::default();
            cfg.server.listen = listen;
            cfg.embedded.data_dir = data_dir.clone();
            reset_dir(&data_dir)?;
            demo(cfg, &sample, exit_after.map(Duration::from_secs_f64)).await
        }
        Command::Run { config, exit_after } => {
            let cfg = Config::load(config.as_deref()).map_err(anyhow::Error::msg)?;
            serve_only(cfg, exit_after.map(Duration::from_secs_f64)).await
        }
        Command::Replay {
            dataset,
            path,
            config,
            speed,
            json,
        } => {
            let cfg = Config::load(config.as_deref()).map_err(anyhow::Error::msg)?;
            let path = path.unwrap_or_else(|| default_dataset_path(dataset));
            replay(cfg, dataset, &path, speed, json).await
        }
    }
}

fn default_dataset_path(d: Dataset) -> PathBuf {
    let dir = match d {
        Dataset::Rees46 => "rees46_multicat",
        Dataset::Diginetica => "diginetica",
        Dataset::YooChoose => "yoochoose_rsc15",
        Dataset::Otto => "otto_sample",
    };
    PathBuf::from("../shared/data").join(dir)
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
) -> anyhow::Result<(recstream::pipeline::ShardSummary, Duration)> {
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

async fn replay(
    cfg: Config,
    dataset: Dataset,
    path: &std::path::Path,
    speed: Option<f64>,
    json: bool,
) -> anyhow::Result<()> {
    let rt = Runtime::embedded(cfg)?;
    let t0 = Instant::now();
    let rows = datasets::load(dataset, path)
        .with_context(|| format!("loading {dataset} from {}", path.display()))?;
    let load_time = t0.elapsed();
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

async fn demo(
    cfg: Config,
    sample: &std::path::Path,
    exit_after: Option<Duration>,
) -> anyhow::Result<()> {
    if !sample.exists() {
        bail!(
            "the demo sample {} is missing: run the demo from the repository root",
            sample.display()
        );
    }
    let metrics = install_metrics();
    let rt = Runtime::embedded(cfg.clone())?;
    let (shutdown_tx, shutdown) = shutdown_signal(None);
    let ready = Arc::new(AtomicBool::new(false));

    let (collector, collector_task) = rt.spawn_collector(shutdown.clone()).await?;
    let listener = tokio::net::TcpListener::bind(cfg.server.listen)
        .await
        .with_context(|| format!("binding {}", cfg.server.listen))?;
    let addr = listener.local_addr()?;
    let server = {
        let rt = rt.clone();
        let ready = ready.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            rt.serve(listener, Arc::new(collector), metrics, ready, shutdown)
                .await
        })
    };

    let rows = datasets::load(Dataset::Rees46, sample)
        .with_context(|| format!("loading {}", sample.display()))?;
    let top_users = busiest_users(&rows, 3);
    let (summary, elapsed) =
        replay_rows(&rt, Dataset::Rees46, rows, None, shutdown.clone()).await?;
    rt.refresh_cold_start().await?;
    ready.store(true, Ordering::Release);
    println!(
        "\nreplayed {} REES46 events in {:.2}s ({:.0} events/s): {} accepted, {} dead-lettered, {} archived as Parquet under {}",
        summary.records,
        elapsed.as_secs_f64(),
        summary.records as f64 / elapsed.as_secs_f64().max(1e-9),
        summary.accepted,
        summary.dead_letters,
        summary.archived_rows,
        rt.sinks.objects.describe()
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
    println!("\nserving on http://{addr}");
    if let Some(u) = top_users.first() {
        println!("  try: curl -s http://{addr}/v1/recommendations/{u}?n=5");
    }
    println!("  metrics: http://{addr}/metrics  (Ctrl-C to stop)");

    if let Some(d) = exit_after {
        tokio::time::sleep(d).await;
        let _ = shutdown_tx.send(true);
    }
    server.await.context("server task")??;
    collector_task.await.context("collector task")??;
    Ok(())
}

/// Serves the API and runs the collector shard with the configured stores.
async fn serve_only(cfg: Config, exit_after: Option<Duration>) -> anyhow::Result<()> {
    let metrics = install_metrics();
    let rt = Runtime::embedded(cfg.clone())?;
    let (_tx, shutdown) = shutdown_signal(exit_after);
    let (collector, collector_task) = rt.spawn_collector(shutdown.clone()).await?;
    rt.refresh_cold_start().await?;
    let listener = tokio::net::TcpListener::bind(cfg.server.listen)
        .await
        .with_context(|| format!("binding {}", cfg.server.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "serving");
    rt.serve(
        listener,
        Arc::new(collector),
        metrics,
        Arc::new(AtomicBool::new(true)),
        shutdown,
    )
    .await?;
    collector_task.await.context("collector task")??;
    Ok(())
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
