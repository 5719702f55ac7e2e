//! KPL aggregation: the Kinesis Producer Library's format for packing many user records
//! into one Kinesis record, and its reverse.
//!
//! ```text
//!  Kinesis record data:
//!  ┌────────────┬──────────────────────────────────────────┬──────────────────────┐
//!  │ F3 89 9A C2│ protobuf AggregatedRecord                │ MD5(protobuf), 16 B  │
//!  └────────────┴──────────────────────────────────────────┴──────────────────────┘
//!   AggregatedRecord { partition_key_table[], explicit_hash_key_table[],
//!                      records[] { partition_key_index, explicit_hash_key_index?, data, tags[] } }
//!
//!  deaggregate(data) ─┬─ no magic ───────────────► Ok(None)          (a plain record)
//!                     ├─ magic, digest, indexes ok ► Ok(Some(users))   (sub_seq = position)
//!                     └─ anything else ───────────► Err(KplError)     (the consumer dead-letters it)
//! ```
//!
//! This file owns the wire format (`ingest/proto/kpl.proto` is the reference; the message
//! structs are written here by hand with `prost::Message`, no build script) and never
//! panics on input. Unlike the KCL, which passes a record with the magic but a bad digest
//! through as a plain record, a corrupt aggregate is an error here: a JSON event cannot
//! start with the magic (0xF3 is not a valid first UTF-8 byte), so such a record is a
//! broken aggregate and belongs in the dead letters with a reason. An aggregate with no
//! user records is an error for the same reason (every Kinesis record read must end up
//! applied or dead-lettered). The format is described in the KPL's
//! `aggregation-format.md`.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use compact_str::CompactString;
use md5::{Digest, Md5};
use prost::Message;

/// The four bytes every aggregated record starts with.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
/// Length of the trailing MD5 digest.
pub const DIGEST_LEN: usize = 16;

/// One user record packed inside an aggregated Kinesis record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// Position inside the aggregate: the Kinesis sub-sequence number.
    pub sub_seq: u32,
    /// The user record's own partition key (from the aggregate's key table).
    pub partition_key: CompactString,
    /// The explicit hash key, when the producer set one.
    pub explicit_hash_key: Option<CompactString>,
    /// The user record's payload.
    pub data: Bytes,
}

/// Why an aggregated record could not be unpacked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KplError {
    /// The record is shorter than the magic plus the MD5 digest.
    #[error("aggregated record of {len} bytes is too short for magic and digest")]
    TooShort {
        /// Length of the whole aggregated record in bytes.
        len: usize,
    },
    /// The trailing MD5 digest does not match the protobuf part.
    #[error("aggregated record digest mismatch (corrupt or truncated)")]
    DigestMismatch,
    /// The protobuf part does not decode as an `AggregatedRecord`.
    #[error("aggregated record protobuf is invalid: {0}")]
    Protobuf(String),
    /// The aggregate holds no user records.
    #[error("aggregated record holds no user records")]
    Empty,
    /// A user record points past the end of the partition key table.
    #[error("user record {record}: partition key index {index} is outside the table of {table}")]
    PartitionKeyIndex {
        /// Index of the user record inside the aggregate.
        record: usize,
        /// The index it names.
        index: u64,
        /// Length of the table.
        table: usize,
    },
    /// A user record points past the end of the explicit hash key table.
    #[error(
        "user record {record}: explicit hash key index {index} is outside the table of {table}"
    )]
    ExplicitHashKeyIndex {
        /// Index of the user record inside the aggregate.
        record: usize,
        /// The index it names.
        index: u64,
        /// Length of the table.
        table: usize,
    },
    /// More user records than a `u32` sub-sequence number can count.
    #[error("aggregated record holds {0} user records, more than a sub-sequence number can count")]
    TooMany(usize),
}

/// The protobuf messages of the format (proto2; see `ingest/proto/kpl.proto`).
pub mod proto {
    use bytes::Bytes;

    /// The protobuf message after the magic: the key tables and the user records.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AggregatedRecord {
        /// Partition keys, referenced by index from the records.
        #[prost(string, repeated, tag = "1")]
        pub partition_key_table: Vec<String>,
        /// Explicit hash keys, referenced by index from the records.
        #[prost(string, repeated, tag = "2")]
        pub explicit_hash_key_table: Vec<String>,
        /// The user records, in sub-sequence order.
        #[prost(message, repeated, tag = "3")]
        pub records: Vec<Record>,
    }

    /// A key-value tag of a user record (kept by the format, ignored here).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Tag {
        /// The tag's key.
        #[prost(string, required, tag = "1")]
        pub key: String,
        /// The tag's value, if any.
        #[prost(string, optional, tag = "2")]
        pub value: Option<String>,
    }

    /// One user record: indexes into the key tables and its payload.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Record {
        /// Index into `partition_key_table`.
        #[prost(uint64, required, tag = "1")]
        pub partition_key_index: u64,
        /// Index into `explicit_hash_key_table`, if the record has one.
        #[prost(uint64, optional, tag = "2")]
        pub explicit_hash_key_index: Option<u64>,
        /// The payload.
        #[prost(bytes = "bytes", required, tag = "3")]
        pub data: Bytes,
        /// Tags (ignored).
        #[prost(message, repeated, tag = "4")]
        pub tags: Vec<Tag>,
    }
}

/// Whether `data` starts with the aggregation magic.
pub fn is_aggregated(data: &[u8]) -> bool {
    data.starts_with(&MAGIC)
}

/// Unpacks an aggregated record. `Ok(None)`: `data` is a plain record (no magic).
/// The user records' data are slices of `data` (no copy).
pub fn deaggregate(data: &Bytes) -> Result<Option<Vec<UserRecord>>, KplError> {
    if !is_aggregated(data) {
        return Ok(None);
    }
    if data.len() < MAGIC.len() + DIGEST_LEN {
        return Err(KplError::TooShort { len: data.len() });
    }
    let body_end = data.len() - DIGEST_LEN;
    let body = data.slice(MAGIC.len()..body_end);
    if Md5::digest(&body).as_slice() != &data[body_end..] {
        return Err(KplError::DigestMismatch);
    }
    let agg =
        proto::AggregatedRecord::decode(body).map_err(|e| KplError::Protobuf(e.to_string()))?;
    if agg.records.is_empty() {
        return Err(KplError::Empty);
    }
    if u32::try_from(agg.records.len()).is_err() {
        return Err(KplError::TooMany(agg.records.len()));
    }
    let pks: Vec<CompactString> = agg
        .partition_key_table
        .iter()
        .map(CompactString::from)
        .collect();
    let ehks: Vec<CompactString> = agg
        .explicit_hash_key_table
        .iter()
        .map(CompactString::from)
        .collect();
    let mut out = Vec::with_capacity(agg.records.len());
    for (i, r) in agg.records.into_iter().enumerate() {
        let partition_key = usize::try_from(r.partition_key_index)
            .ok()
            .and_then(|ix| pks.get(ix))
            .ok_or(KplError::PartitionKeyIndex {
                record: i,
                index: r.partition_key_index,
                table: pks.len(),
            })?
            .clone();
        let explicit_hash_key = match r.explicit_hash_key_index {
            None => None,
            Some(index) => Some(
                usize::try_from(index)
                    .ok()
                    .and_then(|ix| ehks.get(ix))
                    .ok_or(KplError::ExplicitHashKeyIndex {
                        record: i,
                        index,
                        table: ehks.len(),
                    })?
                    .clone(),
            ),
        };
        out.push(UserRecord {
            sub_seq: i as u32,
            partition_key,
            explicit_hash_key,
            data: r.data,
        });
    }
    Ok(Some(out))
}

/// Packs user records `(partition key, explicit hash key, data)` into one aggregated
/// record, the way the KPL does (tables deduplicated in first-seen order). The caller
/// keeps the result under Kinesis' 1 MiB record limit; the Kinesis partition key of the
/// aggregate is conventionally the first user record's.
pub fn aggregate<'a, I>(records: I) -> Bytes
where
    I: IntoIterator<Item = (&'a str, Option<&'a str>, &'a [u8])>,
{
    let mut agg = proto::AggregatedRecord::default();
    let mut pk_ix: HashMap<&str, u64> = HashMap::new();
    let mut ehk_ix: HashMap<&str, u64> = HashMap::new();
    for (pk, ehk, data) in records {
        let partition_key_index = *pk_ix.entry(pk).or_insert_with(|| {
            agg.partition_key_table.push(pk.to_string());
            agg.partition_key_table.len() as u64 - 1
        });
        let explicit_hash_key_index = ehk.map(|h| {
            *ehk_ix.entry(h).or_insert_with(|| {
                agg.explicit_hash_key_table.push(h.to_string());
                agg.explicit_hash_key_table.len() as u64 - 1
            })
        });
        agg.records.push(proto::Record {
            partition_key_index,
            explicit_hash_key_index,
            data: Bytes::copy_from_slice(data),
            tags: Vec::new(),
        });
    }
    let body = agg.encode_to_vec();
    let mut out = BytesMut::with_capacity(MAGIC.len() + body.len() + DIGEST_LEN);
    out.put_slice(&MAGIC);
    out.put_slice(&body);
    out.put_slice(&Md5::digest(&body));
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn user(pk: &str, data: &[u8]) -> (String, Option<String>, Vec<u8>) {
        (pk.to_string(), None, data.to_vec())
    }

    fn pack(records: &[(String, Option<String>, Vec<u8>)]) -> Bytes {
        aggregate(
            records
                .iter()
                .map(|(p, e, d)| (p.as_str(), e.as_deref(), d.as_slice())),
        )
    }

    #[test]
    fn plain_records_are_not_aggregates() {
        assert_eq!(deaggregate(&Bytes::from_static(b"{\"a\":1}")), Ok(None));
        assert_eq!(deaggregate(&Bytes::new()), Ok(None));
        assert_eq!(deaggregate(&Bytes::from_static(&[0xF3, 0x89])), Ok(None));
    }

    #[test]
    fn known_aggregate_unpacks_with_tables_and_sub_sequence_numbers() {
        let data = pack(&[
            user("u1", b"one"),
            ("u2".into(), Some("123".into()), b"two".to_vec()),
            user("u1", b"three"),
        ]);
        assert!(is_aggregated(&data));
        let users = deaggregate(&data).unwrap().unwrap();
        assert_eq!(users.len(), 3);
        assert_eq!(users[0].partition_key, "u1");
        assert_eq!(users[1].explicit_hash_key.as_deref(), Some("123"));
        assert_eq!(users[2].partition_key, "u1");
        assert_eq!(&users[2].data[..], b"three");
        assert_eq!(
            users.iter().map(|u| u.sub_seq).collect::<Vec<_>>(),
            [0, 1, 2]
        );
    }

    #[test]
    fn a_hand_encoded_aggregate_decodes() {
        // protobuf bytes written by hand from the format description, independent of
        // the encoder above: partition_key_table ["k"], one record {pk 0, data "hi"}.
        let body: &[u8] = &[
            0x0A, 0x01, b'k', // 1: "k"
            0x1A, 0x06, // 3: record, 6 bytes
            0x08, 0x00, // 1: 0
            0x1A, 0x02, b'h', b'i', // 3: "hi"
        ];
        let mut data = MAGIC.to_vec();
        data.extend_from_slice(body);
        data.extend_from_slice(&Md5::digest(body));
        let users = deaggregate(&Bytes::from(data)).unwrap().unwrap();
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].partition_key, "k");
        assert_eq!(&users[0].data[..], b"hi");
    }

    #[test]
    fn corrupt_aggregates_are_errors() {
        let good = pack(&[user("u1", b"one"), user("u2", b"two")]);
        // truncated
        let cut = good.slice(..good.len() - 3);
        assert_eq!(deaggregate(&cut), Err(KplError::DigestMismatch));
        // too short for a digest
        let short = Bytes::from(MAGIC.iter().copied().chain([1, 2, 3]).collect::<Vec<_>>());
        assert!(matches!(
            deaggregate(&short),
            Err(KplError::TooShort { .. })
        ));
        // a flipped payload byte
        let mut flipped = good.to_vec();
        flipped[8] ^= 0x40;
        assert_eq!(
            deaggregate(&Bytes::from(flipped)),
            Err(KplError::DigestMismatch)
        );
        // valid digest over garbage protobuf
        let garbage: &[u8] = &[0xFF, 0xFF, 0xFF, 0xFF];
        let mut bad = MAGIC.to_vec();
        bad.extend_from_slice(garbage);
        bad.extend_from_slice(&Md5::digest(garbage));
        assert!(matches!(
            deaggregate(&Bytes::from(bad)),
            Err(KplError::Protobuf(_))
        ));
        // empty aggregate
        assert_eq!(deaggregate(&pack(&[])), Err(KplError::Empty));
    }

    #[test]
    fn out_of_range_indexes_are_errors() {
        let agg = proto::AggregatedRecord {
            partition_key_table: vec!["a".into()],
            explicit_hash_key_table: vec![],
            records: vec![proto::Record {
                partition_key_index: 1,
                explicit_hash_key_index: None,
                data: Bytes::from_static(b"x"),
                tags: vec![],
            }],
        };
        let seal = |agg: &proto::AggregatedRecord| {
            let body = agg.encode_to_vec();
            let mut v = MAGIC.to_vec();
            v.extend_from_slice(&body);
            v.extend_from_slice(&Md5::digest(&body));
            Bytes::from(v)
        };
        assert!(matches!(
            deaggregate(&seal(&agg)),
            Err(KplError::PartitionKeyIndex { index: 1, .. })
        ));
        let mut agg2 = agg.clone();
        agg2.records[0].partition_key_index = 0;
        agg2.records[0].explicit_hash_key_index = Some(u64::MAX);
        assert!(matches!(
            deaggregate(&seal(&agg2)),
            Err(KplError::ExplicitHashKeyIndex { .. })
        ));
    }

    fn arb_records() -> impl Strategy<Value = Vec<(String, Option<String>, Vec<u8>)>> {
        prop::collection::vec(
            (
                "[a-z0-9]{1,12}",
                prop::option::of("[0-9]{1,39}"),
                prop::collection::vec(any::<u8>(), 0..200),
            ),
            1..40,
        )
    }

    proptest! {
        /// aggregate ∘ deaggregate is the identity on (partition key, hash key, data).
        #[test]
        fn round_trip(records in arb_records()) {
            let data = pack(&records);
            let users = deaggregate(&data).unwrap().unwrap();
            prop_assert_eq!(users.len(), records.len());
            for (i, (u, (pk, ehk, d))) in users.iter().zip(&records).enumerate() {
                prop_assert_eq!(u.sub_seq as usize, i);
                prop_assert_eq!(u.partition_key.as_str(), pk.as_str());
                prop_assert_eq!(u.explicit_hash_key.as_deref(), ehk.as_deref());
                prop_assert_eq!(&u.data[..], &d[..]);
            }
        }

        /// Any single-byte corruption of an aggregate is detected (never a panic, never
        /// silently different records).
        #[test]
        fn corruption_is_detected(records in arb_records(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let data = pack(&records);
            let mut bytes = data.to_vec();
            let i = MAGIC.len() + pos.index(bytes.len() - MAGIC.len());
            bytes[i] ^= 1 << bit;
            prop_assert!(deaggregate(&Bytes::from(bytes)).is_err());
        }

        /// Arbitrary bytes after the magic never panic.
        #[test]
        fn arbitrary_input_never_panics(tail in prop::collection::vec(any::<u8>(), 0..300)) {
            let mut bytes = MAGIC.to_vec();
            bytes.extend_from_slice(&tail);
            let _ = deaggregate(&Bytes::from(bytes.clone()));
            // and with a valid digest over the arbitrary body
            let mut sealed = MAGIC.to_vec();
            sealed.extend_from_slice(&tail);
            sealed.extend_from_slice(&Md5::digest(&tail));
            let _ = deaggregate(&Bytes::from(sealed));
        }
    }
}
