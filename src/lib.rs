//! recstream: the binary's library — configuration, the shard processor and the wiring.
//!
//! ```text
//!  sources ─► pipeline::ShardProcessor (one per shard) ─► features / archive / checkpoints
//!                                                   scoring ◄─┘
//!  runtime::Runtime builds the stores behind the seams (embedded or AWS) and serves HTTP.
//! ```

pub mod cmd_model;
pub mod config;
pub mod kinesis;
pub mod pipeline;
pub mod runtime;
