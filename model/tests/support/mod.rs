//! The real datasets for the model crate's tests and benches (`mod support;` in a test,
//! `#[path = "../tests/support/mod.rs"] mod support;` in a bench).

use std::path::PathBuf;

use recstream_ingest::Event;
use recstream_ingest::datasets::{self, Dataset};

/// `../shared/data` (or `RECSTREAM_DATA_DIR`).
pub fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("RECSTREAM_DATA_DIR") {
        return PathBuf::from(d);
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        manifest.join("../../shared/data"),
        manifest.join("../shared/data"),
        PathBuf::from("/work/shared/data"),
    ];
    candidates
        .iter()
        .find(|p| p.is_dir())
        .cloned()
        .unwrap_or_else(|| panic!("real datasets missing: set RECSTREAM_DATA_DIR ({candidates:?})"))
}

/// The REES46 sample's valid events, sorted by time.
pub fn rees46() -> Vec<Event> {
    let rows = datasets::load(Dataset::Rees46, &data_dir().join("rees46_multicat")).unwrap();
    datasets::sort_by_time(rows)
        .into_iter()
        .filter_map(|r| r.event.ok())
        .collect()
}
