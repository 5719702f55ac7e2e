//! Kinesis record payloads, possibly KPL aggregates (magic prefix, protobuf, MD5): the
//! de-aggregator returns user records, `None` (not an aggregate) or an error, never panics.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use recstream_ingest::source::kinesis::kpl;

fuzz_target!(|data: &[u8]| {
    let _ = kpl::deaggregate(&Bytes::copy_from_slice(data));
    // The same bytes behind a valid magic prefix, to get past the first check.
    let mut framed = kpl::MAGIC.to_vec();
    framed.extend_from_slice(data);
    let _ = kpl::deaggregate(&Bytes::from(framed));
});
