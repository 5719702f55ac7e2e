//! recstream: the binary's library — configuration, the shard processor and the wiring.
//!
//! ```text
//!  sources ─► pipeline::ShardProcessor (one per shard) ─► features / archive / checkpoints
//!                                                   scoring ◄─┘
//!  runtime::Runtime builds the stores behind the seams (embedded or AWS) and serves HTTP.
//! ```

/// mimalloc for the binary, its benches and its tests: the serving and aggregation paths
/// allocate many small, short-lived values (ids, lists, response bodies), where it is
/// markedly faster than glibc's allocator (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod cmd_model;
pub mod config;
pub mod kinesis;
pub mod pipeline;
pub mod runtime;
