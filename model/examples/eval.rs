//! Offline evaluation on the public datasets, without the CLI:
//!
//! ```text
//! cargo run -p recstream-model --example eval -- ../shared/data [--json] [--markdown EVAL-tables.md] [--only rees46]
//! ```
//!
//! YooChoose uses its given `train_full` / `test` files; the others an 80 / 20 split by time.

use std::path::{Path, PathBuf};

use recstream_ingest::Event;
use recstream_ingest::datasets::{self, Dataset, YooChooseSplit};
use recstream_model::{EvalParams, EvalReport, NoProgress, evaluate, temporal_split};

fn events(rows: Vec<datasets::LoadedRow>) -> Vec<Event> {
    datasets::sort_by_time(rows)
        .into_iter()
        .filter_map(|r| r.event.ok())
        .collect()
}

fn split(d: Dataset, path: &Path, fraction: f64) -> (Vec<Event>, Vec<Event>) {
    if d == Dataset::YooChoose {
        let train =
            events(datasets::load_yoochoose_split(path, YooChooseSplit::TrainFull).unwrap());
        let test = events(datasets::load_yoochoose_split(path, YooChooseSplit::Test).unwrap());
        return (train, test);
    }
    temporal_split(events(datasets::load(d, path).unwrap()), fraction)
}

fn dir_of(d: Dataset) -> &'static str {
    match d {
        Dataset::Rees46 => "rees46_multicat",
        Dataset::Diginetica => "diginetica",
        Dataset::YooChoose => "yoochoose_rsc15",
        Dataset::Otto => "otto_sample",
        Dataset::Events => "events",
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let data = PathBuf::from(args.first().map(String::as_str).unwrap_or("../shared/data"));
    let json = args.iter().any(|a| a == "--json");
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let only = flag("--only");
    let mut reports: Vec<EvalReport> = Vec::new();
    for d in Dataset::ALL {
        if only.as_deref().is_some_and(|o| o != d.name()) {
            continue;
        }
        let params = EvalParams::default();
        let (train, test) = split(d, &data.join(dir_of(d)), params.train_fraction);
        let r = evaluate(d.name(), &train, &test, &params, &mut NoProgress).unwrap();
        if !json {
            println!("{}", r.table());
        }
        reports.push(r);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&reports).unwrap());
    }
    if let Some(path) = flag("--markdown") {
        let md: String = reports.iter().map(EvalReport::markdown).collect();
        std::fs::write(path, md).unwrap();
    }
}
