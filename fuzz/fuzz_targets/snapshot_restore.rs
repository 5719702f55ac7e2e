//! Checkpoint state is read back from the object store and the state store after a
//! crash: a corrupt or truncated delta, state row or (earlier versions') full snapshot is
//! an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recstream_features::{Aggregator, FeatureConfig, StateDelta};

fuzz_target!(|data: &[u8]| {
    let _ = Aggregator::restore(FeatureConfig::default(), data);
    if let Ok(delta) = StateDelta::decode(data) {
        let products = delta.products.iter().map(|r| (r.id.clone(), r.state.clone()));
        if let Ok(mut agg) = Aggregator::resume(FeatureConfig::default(), &delta.meta, products) {
            for r in &delta.users {
                let _ = agg.load_user(&r.id, &r.state);
            }
            let _ = agg.drain();
        }
    }
});
