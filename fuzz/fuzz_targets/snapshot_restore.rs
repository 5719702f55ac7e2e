//! Aggregation snapshots are read back from the object store after a crash: a corrupt or
//! truncated one is an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recstream_features::{Aggregator, FeatureConfig};

fuzz_target!(|data: &[u8]| {
    let _ = Aggregator::restore(FeatureConfig::default(), data);
});
