//! One measured training run on ~1M real events (the REES46 sample tiled, as in the
//! criterion bench), printing the time of every stage:
//!
//! ```text
//! cargo run -p recstream-model --release --example train_timing -- [events] [--rankers-only]
//! ```

use std::path::PathBuf;
use std::time::Instant;

use recstream_ingest::Event;
use recstream_ingest::datasets::{self, Dataset};
use recstream_model::{NoProgress, TrainParams, train};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args
        .iter()
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let rankers_only = args.iter().any(|a| a == "--rankers-only");
    let data = std::env::var_os("RECSTREAM_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    let rows = datasets::load(Dataset::Rees46, &data.join("rees46_multicat")).unwrap();
    let base: Vec<Event> = datasets::sort_by_time(rows)
        .into_iter()
        .filter_map(|r| r.event.ok())
        .collect();
    let span = base.last().unwrap().ts.0 - base.first().unwrap().ts.0 + 60_000;
    let mut events = Vec::with_capacity(n);
    'outer: for copy in 0.. {
        for e in &base {
            if events.len() == n {
                break 'outer;
            }
            let mut e = e.clone();
            e.ts.0 += copy as i64 * span;
            e.user_id = compact_str::format_compact!("{}-{copy}", e.user_id);
            if let Some(s) = &e.session_id {
                e.session_id = Some(compact_str::format_compact!("{s}-{copy}"));
            }
            events.push(e);
        }
    }
    let params = TrainParams {
        skip_embeddings: rankers_only,
        skip_segments: rankers_only,
        ..TrainParams::default()
    };
    let t = Instant::now();
    let (a, _) = train(&events, "rees46-tiled", &params, &mut NoProgress).unwrap();
    println!(
        "{} events, {} users, {} products: trained in {:.2} s",
        a.meta.events,
        a.meta.users,
        a.meta.products,
        t.elapsed().as_secs_f64()
    );
    println!("rows {} (positives {})", a.meta.rows, a.meta.positives);
    for (k, v) in &a.meta.metrics {
        println!("  {k:<20} {v}");
    }
    if let Some(e) = &a.embeddings {
        println!("  embedded products    {}", e.items.len());
    }
    if let Some(s) = &a.segments {
        println!("  segments             {}", s.profiles.len());
    }
}
