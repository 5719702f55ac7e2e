//! Fixtures shared by the evaluator's integration tests.

use std::path::PathBuf;

use recstream_ingest::Event;
use recstream_ingest::datasets::{self, Dataset};

/// The bundled OTTO sample's events, sorted by time.
pub fn otto() -> Vec<Event> {
    // `shared/data` beside the checkout (as every dataset test finds it), or
    // RECSTREAM_DATA_DIR; missing data fails the test, it is never skipped.
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::var_os("RECSTREAM_DATA_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            [
                manifest.join("../../shared/data"),
                manifest.join("../shared/data"),
            ]
            .into_iter()
            .find(|p| p.is_dir())
        })
        .expect("the real datasets are missing: set RECSTREAM_DATA_DIR");
    let rows = datasets::load(Dataset::Otto, &dir.join("otto_sample")).expect("otto sample");
    datasets::sort_by_time(rows)
        .into_iter()
        .filter_map(|r| r.event.ok())
        .collect()
}
