//! recstream: the binary's library — configuration, start-up wiring and the commands.
//! The stages live in their crates; this crate only chooses and connects them.
//!
//! ```text
//!  config::Config (defaults < TOML < RECSTREAM__* env; validate() before connecting)
//!     ▼
//!  runtime::Runtime  builds the stores behind the seams (embedded or AWS), then
//!     ├─► recstream_pipeline::Pipeline / KinesisWorkers   (shard processors)
//!     ├─► recstream_model::ModelHandle (hot reload) ─► cold-start lists, segments
//!     └─► recstream_serving::router (+ commerce routes)    (HTTP)
//!  kinesis    the collector's Kinesis sink, `recstream init`, bulk puts
//!  cmd_model  `recstream train | eval | segments` (batch jobs over the archive)
//! ```

/// mimalloc for the binary, its benches and its tests: the serving and aggregation paths
/// allocate many small, short-lived values (ids, lists, response bodies), where it is
/// markedly faster than glibc's allocator (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod cmd_eval;
pub mod cmd_model;
pub mod config;
pub mod kinesis;
pub mod runtime;
