//! Exports the ranker's lists as CSV, for comparing rankers outside the project on exactly
//! the rows the served ranker sees (`eval/experiments/ranker_ceiling.py`, EVAL.md).
//!
//! ```text
//! cargo run --release -p recstream-model --example export_lists -- yoochoose [OUT_DIR]
//! ```
//!
//! The dataset's log is split by time (80 / 20, as `recstream eval`'s next-event protocol).
//! The replay of the first part yields the training lists; the replay continues into the
//! second part, whose lists (each next item with the served list at that moment, features
//! as they were then) are the test lists. One row per candidate:
//! `list, label, <the NUM_FEATURES raw features in FEATURE_NAMES order>`, the positive first.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use recstream_ingest::datasets::{self, Dataset};
use recstream_model::{
    NUM_FEATURES, NoProgress, Objective, Replay, TrainParams, build_training_set, temporal_split,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "yoochoose".into());
    let out = PathBuf::from(args.next().unwrap_or_else(|| "target/lists".into()));
    let data = std::env::var("RECSTREAM_DATA_DIR").unwrap_or_else(|_| "../shared/data".into());
    let dataset: Dataset = name.parse()?;
    let rows = datasets::load(dataset, &Path::new(&data).join(dataset.dir()))?;
    let events: Vec<_> = datasets::sort_by_time(rows)
        .into_iter()
        .filter_map(|r| r.event.ok())
        .collect();
    let (train, test) = temporal_split(events, 0.8);
    let params = TrainParams {
        objective: Objective::Listwise,
        max_positives: usize::MAX,
        ..TrainParams::default()
    };
    std::fs::create_dir_all(&out)?;
    let mut replay = Replay::new(params.features.clone());
    for (part, events) in [("train", &train), ("test", &test)] {
        let set = build_training_set(&mut replay, events, &params, &mut NoProgress)?;
        let path = out.join(format!("{name}-{part}.csv"));
        let mut f = BufWriter::new(std::fs::File::create(&path)?);
        for (list, w) in set.starts.windows(2).enumerate() {
            for r in w[0]..w[1] {
                write!(f, "{list},{}", u8::from(set.labels[r]))?;
                for v in &set.rows[r * NUM_FEATURES..(r + 1) * NUM_FEATURES] {
                    write!(f, ",{v}")?;
                }
                writeln!(f)?;
            }
        }
        f.flush()?;
        eprintln!(
            "{}: {} lists, {} rows",
            path.display(),
            set.starts.len().saturating_sub(1),
            set.len()
        );
    }
    Ok(())
}
