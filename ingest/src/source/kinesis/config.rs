//! Settings of the Kinesis consumer, producer and lease coordinator.
//!
//! ```text
//!  [kinesis.consumer]  where a shard without checkpoint starts, GetRecords pacing
//!  [kinesis.producer]  PutRecords batch bounds, in-flight bound
//!  [kinesis.lease]     worker id, renew / sync intervals, stealing
//!  + AwsConfig         stream and table names, lease duration, retry policy
//! ```
//!
//! serde structs with `deny_unknown_fields` and named defaults; [`KinesisConfig::validate`]
//! is pure and runs before anything connects. Kinesis' own limits are constants here.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::aws::AwsConfig;

/// Records per PutRecords call (Kinesis limit).
pub const MAX_PUT_RECORDS: usize = 500;
/// Bytes per PutRecords call, data and partition keys together (Kinesis limit).
pub const MAX_PUT_BYTES: usize = 5 * 1024 * 1024;
/// Bytes of one record, data and partition key together (Kinesis limit).
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Characters of a partition key (Kinesis limit).
pub const MAX_PARTITION_KEY_CHARS: usize = 256;
/// Records per GetRecords call (Kinesis limit).
pub const MAX_GET_RECORDS: usize = 10_000;
/// GetRecords calls per second and shard (Kinesis limit): 200 ms apart.
pub const MIN_POLL_INTERVAL_MS: u64 = 200;

/// The `[kinesis]` section: how records are read, written and balanced over workers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KinesisConfig {
    /// Reading shards (GetRecords).
    pub consumer: ConsumerConfig,
    /// Writing records (PutRecords).
    pub producer: ProducerConfig,
    /// Lease balancing over workers (DynamoDB lease table).
    pub lease: LeaseConfig,
}

/// Where a shard without a checkpoint starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitialPosition {
    /// The oldest record still in the stream (nothing lost on a first start).
    #[default]
    TrimHorizon,
    /// Only records put after the iterator was taken.
    Latest,
}

/// How one shard is read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsumerConfig {
    /// Where a shard without a checkpoint starts (default `trim_horizon`).
    pub initial_position: InitialPosition,
    /// Least time between two GetRecords of one shard while records flow (Kinesis allows
    /// 5 calls per second and shard).
    pub poll_interval_ms: u64,
    /// Longest wait between two GetRecords of an idle shard (the wait doubles from
    /// `poll_interval_ms` while the shard stays empty).
    pub idle_poll_max_ms: u64,
    /// How often an idle shard checks through ListShards whether it was closed and read
    /// to its end (0 = never). Real Kinesis says so with a null `NextShardIterator`; this
    /// probe covers emulators that never do. Harmless on AWS (see the module docs).
    pub closed_probe_interval_ms: u64,
    /// ExpiredIteratorException renewals tolerated in a row before an error.
    pub max_iterator_renewals: u32,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            initial_position: InitialPosition::TrimHorizon,
            poll_interval_ms: default_poll_interval_ms(),
            idle_poll_max_ms: default_idle_poll_max_ms(),
            closed_probe_interval_ms: default_closed_probe_interval_ms(),
            max_iterator_renewals: default_max_iterator_renewals(),
        }
    }
}

fn default_poll_interval_ms() -> u64 {
    MIN_POLL_INTERVAL_MS
}
fn default_idle_poll_max_ms() -> u64 {
    1_000
}
fn default_closed_probe_interval_ms() -> u64 {
    10_000
}
fn default_max_iterator_renewals() -> u32 {
    3
}

impl ConsumerConfig {
    /// `poll_interval_ms` as a duration.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }
    /// `idle_poll_max_ms` as a duration.
    pub fn idle_poll_max(&self) -> Duration {
        Duration::from_millis(self.idle_poll_max_ms)
    }
    /// `closed_probe_interval_ms` as a duration; `None` when the probe is off (0).
    pub fn closed_probe_interval(&self) -> Option<Duration> {
        (self.closed_probe_interval_ms > 0)
            .then(|| Duration::from_millis(self.closed_probe_interval_ms))
    }
}

/// How records are put into the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProducerConfig {
    /// Records per PutRecords call (at most 500).
    pub max_records_per_call: usize,
    /// Bytes per PutRecords call, data and partition keys (at most 5 MiB).
    pub max_bytes_per_call: usize,
    /// PutRecords calls in flight at once, across all callers of one producer.
    pub max_in_flight: usize,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            max_records_per_call: MAX_PUT_RECORDS,
            max_bytes_per_call: MAX_PUT_BYTES,
            max_in_flight: default_max_in_flight(),
        }
    }
}

fn default_max_in_flight() -> usize {
    8
}

/// How this worker takes part in lease balancing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeaseConfig {
    /// This worker's id in the lease table; default: host name, process id and a random
    /// suffix, so that a restarted process never mistakes its predecessor's leases for
    /// its own.
    pub worker_id: Option<String>,
    /// Renewal period; default: a third of `aws.lease_duration_ms`.
    pub renew_interval_ms: Option<u64>,
    /// Period of ListShards (new shards' lease items) in the background loop; default:
    /// the lease duration. Acquisition rounds run every renew interval.
    pub sync_interval_ms: Option<u64>,
    /// Take one lease per round from a worker holding more than its fair share.
    pub steal: bool,
    /// Upper bound of leases one worker holds (default: no bound beyond the fair share).
    pub max_leases: Option<usize>,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            worker_id: None,
            renew_interval_ms: None,
            sync_interval_ms: None,
            steal: true,
            max_leases: None,
        }
    }
}

impl KinesisConfig {
    /// Checks the settings against each other and against `aws` (pure, no I/O).
    pub fn validate(&self, aws: &AwsConfig) -> Result<(), String> {
        let c = &self.consumer;
        if c.poll_interval_ms < MIN_POLL_INTERVAL_MS {
            return Err(format!(
                "kinesis.consumer.poll_interval_ms must be at least {MIN_POLL_INTERVAL_MS} (5 GetRecords per second and shard)"
            ));
        }
        if c.idle_poll_max_ms < c.poll_interval_ms || c.idle_poll_max_ms > 10_000 {
            return Err(
                "kinesis.consumer.idle_poll_max_ms must be in poll_interval_ms..=10000".into(),
            );
        }
        if c.max_iterator_renewals == 0 {
            return Err("kinesis.consumer.max_iterator_renewals must be at least 1".into());
        }
        let p = &self.producer;
        if !(1..=MAX_PUT_RECORDS).contains(&p.max_records_per_call) {
            return Err(format!(
                "kinesis.producer.max_records_per_call must be in 1..={MAX_PUT_RECORDS}"
            ));
        }
        if !(MAX_RECORD_BYTES..=MAX_PUT_BYTES).contains(&p.max_bytes_per_call) {
            return Err(format!(
                "kinesis.producer.max_bytes_per_call must be in {MAX_RECORD_BYTES}..={MAX_PUT_BYTES}"
            ));
        }
        if !(1..=256).contains(&p.max_in_flight) {
            return Err("kinesis.producer.max_in_flight must be in 1..=256".into());
        }
        let l = &self.lease;
        if let Some(id) = &l.worker_id
            && (id.is_empty() || id.len() > 256)
        {
            return Err("kinesis.lease.worker_id must be 1..=256 bytes".into());
        }
        if let Some(r) = l.renew_interval_ms
            && (r == 0 || r * 2 > aws.lease_duration_ms)
        {
            return Err(
                "kinesis.lease.renew_interval_ms must be positive and at most half of aws.lease_duration_ms"
                    .into(),
            );
        }
        if l.sync_interval_ms == Some(0) {
            return Err("kinesis.lease.sync_interval_ms must be positive".into());
        }
        if l.max_leases == Some(0) {
            return Err("kinesis.lease.max_leases must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        let aws = AwsConfig::default();
        KinesisConfig::default().validate(&aws).unwrap();
        let mut c = KinesisConfig::default();
        c.producer.max_records_per_call = 501;
        assert!(
            c.validate(&aws)
                .unwrap_err()
                .contains("max_records_per_call")
        );
        let mut c = KinesisConfig::default();
        c.consumer.poll_interval_ms = 50;
        assert!(c.validate(&aws).unwrap_err().contains("poll_interval_ms"));
        let mut c = KinesisConfig::default();
        c.lease.renew_interval_ms = Some(aws.lease_duration_ms);
        assert!(c.validate(&aws).unwrap_err().contains("renew_interval_ms"));
    }

    #[test]
    fn parses_with_defaults_and_rejects_unknown_fields() {
        let c: KinesisConfig =
            serde_json::from_str(r#"{"consumer":{"initial_position":"latest"}}"#).unwrap();
        assert_eq!(c.consumer.initial_position, InitialPosition::Latest);
        assert!(c.lease.steal);
        assert_eq!(c.producer.max_records_per_call, 500);
        assert!(serde_json::from_str::<KinesisConfig>(r#"{"consumer":{"nope":1}}"#).is_err());
    }
}
