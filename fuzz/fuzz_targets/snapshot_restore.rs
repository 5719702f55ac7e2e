//! Aggregation snapshots are read back from the object store after a crash: a corrupt or
//! truncated one is an error, never a panic; one that restores writes a snapshot that
//! restores to the same snapshot again (a checkpoint reads back as it was written).
#![no_main]

use libfuzzer_sys::fuzz_target;
use recstream_features::{Aggregator, FeatureConfig};

fuzz_target!(|data: &[u8]| {
    if let Ok(agg) = Aggregator::restore(FeatureConfig::default(), data) {
        let first = agg.snapshot();
        let again = Aggregator::restore(FeatureConfig::default(), &first)
            .expect("a snapshot written by the aggregator restores");
        assert_eq!(
            first,
            again.snapshot(),
            "snapshot → restore → snapshot changed it"
        );
    }
});
