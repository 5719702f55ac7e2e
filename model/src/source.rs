//! Where training reads its events from: a log in memory, or the Parquet archive streamed
//! one partition at a time, both behind [`EventSource`] so that one training code path
//! serves both.
//!
//! ```text
//!  &[Event] ──────────────────────────────┐
//!  ArchiveSource: archive ─► ArchiveEventStream (one partition, sorted) ─┴─► for_each_chunk(f)
//! ```
//!
//! Training reads the source twice (a summary pass, then the replay: see
//! [`crate::train::train_from`]); the archive is then fetched and decoded twice instead of
//! being held in memory.

use std::sync::Arc;

use recstream_ingest::archive::ArchiveEventStream;
use recstream_ingest::{Event, ObjectStore};

use crate::error::{ModelError, Result};

/// An event log sorted by time that can be read more than once, a chunk at a time.
pub trait EventSource {
    /// Calls `f` with every event of the log, in time order, in chunks (never empty);
    /// stops at `f`'s first error and returns it.
    fn for_each_chunk(&mut self, f: &mut dyn FnMut(&[Event]) -> Result<()>) -> Result<()>;
}

impl EventSource for &[Event] {
    fn for_each_chunk(&mut self, f: &mut dyn FnMut(&[Event]) -> Result<()>) -> Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        f(self)
    }
}

/// The events of a Parquet archive (`events/dt=…/hour=…/….parquet`) in an object store,
/// read one partition at a time ([`ArchiveEventStream`]): memory holds one partition, not
/// the archive. Must be read from a thread outside the Tokio runtime it was made on (a
/// `spawn_blocking` thread).
#[derive(Clone)]
pub struct ArchiveSource {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for ArchiveSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveSource")
            .field("store", &self.store.describe())
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl ArchiveSource {
    /// The objects under `prefix` (normally `events/`), read on the current Tokio runtime
    /// (panics outside one).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> ArchiveSource {
        ArchiveSource {
            store,
            prefix: prefix.to_string(),
            runtime: tokio::runtime::Handle::current(),
        }
    }
}

impl EventSource for ArchiveSource {
    fn for_each_chunk(&mut self, f: &mut dyn FnMut(&[Event]) -> Result<()>) -> Result<()> {
        let mut stream = {
            let _entered = self.runtime.enter();
            ArchiveEventStream::open(self.store.clone(), &self.prefix)
        };
        while let Some(batch) = stream.blocking_next() {
            f(&batch.map_err(ModelError::Store)?)?;
        }
        Ok(())
    }
}
