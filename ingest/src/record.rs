//! Raw records as they come off a shard, their positions, and checkpoints.
//!
//! A position is a Kinesis-style sequence number: a decimal string of up to 128 digits,
//! ordered numerically. File replay and the in-process channel use small integers in the
//! same form, so every stage handles one kind of position.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::decode::DecodeError;
use crate::event::Timestamp;

/// A shard id (`shardId-000000000000`, or `file:rees46` for a replay).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ShardId(pub Arc<str>);

impl ShardId {
    /// A shard id as given (`shardId-000000000000` on Kinesis, `file:<dataset>` for
    /// replay, `collector` for the collector channel).
    pub fn new(s: &str) -> ShardId {
        ShardId(Arc::from(s))
    }
    /// The id as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The shard id made safe for object names (`[A-Za-z0-9._-]` only).
    pub fn file_safe(&self) -> String {
        self.0
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A sequence number: decimal digits without leading zeros, compared numerically.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SeqNo(Arc<str>);

impl SeqNo {
    /// The sequence number `n` (file replay positions).
    pub fn from_u64(n: u64) -> SeqNo {
        SeqNo(Arc::from(n.to_string()))
    }

    /// Parses a sequence number; `None` unless it is 1..=128 decimal digits.
    pub fn parse(s: &str) -> Option<SeqNo> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.bytes().all(|b| b.is_ascii_digit())
            && (s == "0" || !s.starts_with('0'));
        ok.then(|| SeqNo(Arc::from(s)))
    }

    /// The decimal digits, as Kinesis wrote them.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The value as u64 where it fits (file replay positions always do).
    pub fn as_u64(&self) -> Option<u64> {
        self.0.parse().ok()
    }
}

impl Ord for SeqNo {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0
            .len()
            .cmp(&other.0.len())
            .then_with(|| self.0.as_bytes().cmp(other.0.as_bytes()))
    }
}

impl PartialOrd for SeqNo {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for SeqNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SeqNo({})", self.0)
    }
}

impl fmt::Display for SeqNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for SeqNo {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        SeqNo::parse(&s).ok_or_else(|| format!("`{s}` is not a sequence number"))
    }
}

impl From<SeqNo> for String {
    fn from(s: SeqNo) -> String {
        s.0.to_string()
    }
}

/// One record read from a shard, not yet decoded.
#[derive(Debug, Clone)]
pub struct RawRecord {
    /// The shard the record was read from.
    pub shard: ShardId,
    /// Position of the record in its shard; increases along the shard.
    pub seq: SeqNo,
    /// Kinesis sub-sequence number of a KPL-aggregated user record (0 otherwise).
    pub sub_seq: u32,
    /// The partition key the producer chose (the user id for clickstream events).
    pub partition_key: CompactString,
    /// When the stream accepted the record (ApproximateArrivalTimestamp).
    pub arrival: Timestamp,
    /// The payload, normally one JSON event.
    pub data: Bytes,
    /// Set when the source already knows the record cannot be decoded (e.g. a CSV row
    /// that does not map onto an event); such records go straight to the dead letters.
    pub rejected: Option<DecodeError>,
}

/// What is durable for one shard. Stored by the checkpoint store (the embedded database
/// or the DynamoDB lease table).
///
/// Processing resumes *after* `committed`. `pending_end` is written before the archive
/// object of the next range is uploaded, so that a restart rolls at exactly the same
/// sequence number and overwrites that object instead of writing an overlapping one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardCheckpoint {
    /// Last sequence number whose effects are durable; `None` = start from the beginning.
    pub committed: Option<SeqNo>,
    /// Last sequence number of the range whose archive object is being uploaded, written
    /// before the upload (see above).
    pub pending_end: Option<SeqNo>,
    /// Object key of the aggregation state snapshot taken at `committed`.
    pub snapshot: Option<String>,
    /// The shard has been read to its end (closed after a reshard, or a finished replay).
    #[serde(default)]
    pub finished: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parse_rejects_non_numbers() {
        for bad in ["", "01", "1a", "-1", &"9".repeat(129)] {
            assert!(SeqNo::parse(bad).is_none(), "{bad}");
        }
        assert!(SeqNo::parse("49590338271490256608559692538361571095921575989136588898").is_some());
    }

    proptest! {
        /// Numeric order of sequence numbers matches the order of the integers they spell.
        #[test]
        fn order_is_numeric(a in any::<u64>(), b in any::<u64>()) {
            prop_assert_eq!(SeqNo::from_u64(a).cmp(&SeqNo::from_u64(b)), a.cmp(&b));
        }

        #[test]
        fn serde_round_trip(a in any::<u64>()) {
            let s = SeqNo::from_u64(a);
            let json = serde_json::to_string(&s).unwrap();
            prop_assert_eq!(serde_json::from_str::<SeqNo>(&json).unwrap(), s);
        }
    }
}
