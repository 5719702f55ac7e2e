//! Kinesis record payloads, possibly KPL aggregates (magic prefix, protobuf, MD5): the
//! de-aggregator returns user records, `None` (not an aggregate) or an error, never panics.
//! The input is tried three ways: as it is, behind the magic, and behind the magic with its
//! own MD5 appended (a random input never carries a matching digest, so only this framing
//! lets the fuzzer reach the protobuf decoder and the key-table checks). Accepted records
//! are re-aggregated and must de-aggregate to the same user records.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use md5::{Digest, Md5};
use recstream_ingest::source::kinesis::kpl;

fuzz_target!(|data: &[u8]| {
    let _ = kpl::deaggregate(&Bytes::copy_from_slice(data));
    let mut framed = kpl::MAGIC.to_vec();
    framed.extend_from_slice(data);
    let _ = kpl::deaggregate(&Bytes::from(framed.clone()));
    framed.extend_from_slice(&Md5::digest(data));
    match kpl::deaggregate(&Bytes::from(framed)) {
        Ok(Some(users)) => {
            assert!(
                !users.is_empty(),
                "an aggregate without user records was accepted"
            );
            let again = kpl::aggregate(users.iter().map(|u| {
                (
                    u.partition_key.as_str(),
                    u.explicit_hash_key.as_deref(),
                    &u.data[..],
                )
            }));
            let back = kpl::deaggregate(&again)
                .expect("a re-aggregated record de-aggregates")
                .expect("a re-aggregated record carries the magic");
            assert_eq!(users, back);
        }
        Ok(None) => panic!("a record with the magic was taken for a plain record"),
        Err(_) => {}
    }
});
