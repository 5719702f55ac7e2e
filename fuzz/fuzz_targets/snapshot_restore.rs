//! Checkpoint state is read back after a crash: the state delta a checkpoint names, the
//! state store's rows, and (from earlier versions) a full snapshot. A corrupt or
//! truncated one is an error, never a panic; a state that resumes writes a delta that
//! reads back (a checkpoint reads back as it was written).
#![no_main]

use libfuzzer_sys::fuzz_target;
use recstream_features::{Aggregator, FeatureConfig, StateDelta};

fn writes_a_readable_delta(mut agg: Aggregator) {
    let _ = agg.drain();
    let delta = agg.take_delta();
    let back = StateDelta::decode(&delta.encode()).expect("a delta the aggregator wrote reads back");
    assert_eq!(back, delta, "delta → encode → decode changed it");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(agg) = Aggregator::restore(FeatureConfig::default(), data) {
        writes_a_readable_delta(agg);
    }
    if let Ok(delta) = StateDelta::decode(data) {
        let products = delta.products.iter().map(|r| (r.id.clone(), r.state.clone()));
        if let Ok(mut agg) = Aggregator::resume(FeatureConfig::default(), &delta.meta, products) {
            for r in &delta.users {
                let _ = agg.load_user(&r.id, &r.state);
            }
            writes_a_readable_delta(agg);
        }
    }
});
