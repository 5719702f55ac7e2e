//! Any bytes a producer may put into the stream: the decoder returns an event or a typed
//! error, never panics; an accepted event survives a round trip through its wire JSON and
//! feeds the aggregator without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recstream_features::{Aggregator, FeatureConfig};
use recstream_ingest::decode::decode_with_limit;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = decode_with_limit(data, 64 * 1024) {
        let again = decode_with_limit(&event.to_json(), 1024 * 1024)
            .expect("an accepted event re-decodes from its own JSON");
        assert_eq!(event, again);
        let mut agg = Aggregator::new(FeatureConfig::default());
        agg.apply(&event);
        let _ = agg.drain();
    }
});
