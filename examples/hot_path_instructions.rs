//! A fixed amount of hot-path work for instruction counting under callgrind
//! (`benches/hot_path_instructions.sh`): the bundled REES46 sample as wire JSON, an
//! aggregator warmed with the whole sample (the steady state of a shard), then `passes`
//! passes of decode + validate + aggregate over the sample.
//!
//! `hot_path_instructions <owned|borrowed|decode> <passes>`: `owned` decodes into the
//! owned `Event` and applies it (the path before the borrowed event type), `borrowed`
//! decodes into `EventRef` and applies that, `decode` only decodes into `EventRef`. The
//! setup is the same for every pass count, so the difference between two pass counts
//! divided by the difference in events is the per-event cost.

use std::hint::black_box;
use std::path::Path;

use recstream_features::{Aggregator, FeatureConfig};
use recstream_ingest::datasets::{self, Dataset};
use recstream_ingest::{Event, decode};

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "borrowed".into());
    let passes: usize = args.next().and_then(|p| p.parse().ok()).unwrap_or(1);
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sample/rees46-2019-10-01-head.csv.gz");
    let rows = datasets::load(Dataset::Rees46, &path).expect("bundled sample");
    let events: Vec<Event> = rows.into_iter().filter_map(|r| r.event.ok()).collect();
    let json: Vec<Vec<u8>> = events.iter().map(Event::to_json).collect();
    let mut agg = Aggregator::new(FeatureConfig::default());
    agg.apply_all(&events);
    for _ in 0..passes {
        match mode.as_str() {
            "owned" => {
                for j in &json {
                    agg.apply(&decode(black_box(j)).expect("valid"));
                }
            }
            "borrowed" => {
                for j in &json {
                    agg.apply_ref(&recstream_ingest::decode_ref(black_box(j)).expect("valid"));
                }
            }
            "decode" => {
                for j in &json {
                    black_box(recstream_ingest::decode_ref(black_box(j)).expect("valid"));
                }
            }
            other => panic!("unknown mode {other}: owned, borrowed or decode"),
        }
    }
    println!("{} events x {passes} passes ({mode})", json.len());
}
