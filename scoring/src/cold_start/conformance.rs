//! The cold-start cache conformance suite: one test run against every [`ColdStartCache`]
//! implementation (in-process in unit tests, Redis in `tests/conformance_cold_start.rs`).
//!
//! ```text
//!  run_cold_start_suite(&InProcessCache)      ─┐
//!  run_cold_start_suite(&RedisColdStartCache) ─┴─► missing, round trip, overwrite,
//!                                                  segment keys verbatim, empty and long lists
//! ```
//!
//! The cache must hold none of the suite's segments when it starts (a fresh cache, or a
//! fresh Redis namespace). Segments used: [`SUITE_SEGMENTS`].

use super::{ColdStartCache, ColdStartList, OVERALL};

/// Every segment the suite writes (for cleanup by the caller).
pub const SUITE_SEGMENTS: &[&str] = &[
    OVERALL,
    "25-34|f|DE",
    "25-34|f|DE ",
    "18-24|m|Zürich",
    "unknown|unknown|unknown",
    "empty",
    "long",
];

/// Runs every check of the cold-start cache contract against `cache`.
pub async fn run_cold_start_suite(cache: &dyn ColdStartCache) {
    let name = cache.name();
    assert!(!name.is_empty(), "name() must be set");

    for seg in SUITE_SEGMENTS {
        assert_eq!(
            cache.top(seg).await.expect("top"),
            None,
            "{name}: {seg:?} starts missing"
        );
    }

    let overall = list(&[("p1", 10.0), ("p2", 7.5), ("p3", 0.125)], "model-v1");
    cache.put(OVERALL, &overall).await.expect("put");
    same(
        cache.top(OVERALL).await.expect("top").as_deref(),
        &overall,
        "round trip",
        name,
    );

    // Segment keys are used verbatim: near-identical keys stay apart.
    let de = list(&[("p9", 3.0), ("p1", 2.0)], "model-v1");
    let de_space = list(&[("p4", 1.0)], "model-v1");
    let zurich = list(&[("p7", 1.0e-12), ("p8", 1.0e12)], "model-v1");
    cache.put("25-34|f|DE", &de).await.expect("put");
    cache.put("25-34|f|DE ", &de_space).await.expect("put");
    cache.put("18-24|m|Zürich", &zurich).await.expect("put");
    same(
        cache.top("25-34|f|DE").await.expect("top").as_deref(),
        &de,
        "segment",
        name,
    );
    same(
        cache.top("25-34|f|DE ").await.expect("top").as_deref(),
        &de_space,
        "segment with a trailing space",
        name,
    );
    same(
        cache.top("18-24|m|Zürich").await.expect("top").as_deref(),
        &zurich,
        "unicode segment, extreme scores",
        name,
    );
    assert_eq!(
        cache.top("unknown|unknown|unknown").await.expect("top"),
        None,
        "{name}: other segment"
    );

    // Overwrite replaces the whole list.
    let overall2 = list(&[("p5", 1.0)], "model-v2");
    cache.put(OVERALL, &overall2).await.expect("put");
    same(
        cache.top(OVERALL).await.expect("top").as_deref(),
        &overall2,
        "overwrite",
        name,
    );

    // Empty and long lists.
    let empty = ColdStartList {
        items: Vec::new(),
        source: String::new(),
    };
    cache.put("empty", &empty).await.expect("put");
    same(
        cache.top("empty").await.expect("top").as_deref(),
        &empty,
        "empty list",
        name,
    );
    let long = ColdStartList {
        items: (0..1000)
            .map(|i| (format!("product-{i:06}"), 1000.0 - i as f64 / 3.0))
            .collect(),
        source: "popularity-2019-10-01".into(),
    };
    cache.put("long", &long).await.expect("put");
    same(
        cache.top("long").await.expect("top").as_deref(),
        &long,
        "long list",
        name,
    );
}

/// Equal lists, scores within 1e-12 (JSON parsers may round the last bit of an f64).
fn same(got: Option<&ColdStartList>, want: &ColdStartList, what: &str, name: &str) {
    let Some(got) = got else {
        panic!("{name}: {what}: missing")
    };
    assert_eq!(got.source, want.source, "{name}: {what}: source");
    assert_eq!(got.items.len(), want.items.len(), "{name}: {what}: length");
    for ((gp, gs), (wp, ws)) in got.items.iter().zip(&want.items) {
        assert_eq!(gp, wp, "{name}: {what}: order");
        assert!(
            (gs - ws).abs() <= 1e-12 * ws.abs().max(1.0),
            "{name}: {what}: score of {wp}: {gs} != {ws}"
        );
    }
}

fn list(items: &[(&str, f64)], source: &str) -> ColdStartList {
    ColdStartList {
        items: items.iter().map(|(p, s)| (p.to_string(), *s)).collect(),
        source: source.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cold_start::InProcessCache;

    #[tokio::test]
    async fn in_process_cache_conforms() {
        run_cold_start_suite(&InProcessCache::new()).await;
    }
}
