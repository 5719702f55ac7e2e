//! Progress reporting for long loops, so the CLI can draw bars without this crate knowing how.

/// Receives progress of a long job. Every method has a no-op default.
pub trait Progress {
    /// A new stage begins with `total` steps (0 when unknown).
    fn stage(&mut self, _name: &str, _total: u64) {}
    /// `n` more steps of the current stage are done.
    fn inc(&mut self, _n: u64) {}
    /// The current stage is done.
    fn finish_stage(&mut self) {}
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}
