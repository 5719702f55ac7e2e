//! Decoding and validation of untrusted record bytes into [`Event`]s.
//!
//! ```text
//!  bytes ──► size check ──► serde_json (strings borrowed from the bytes) ──► EventRef
//!        ──► validate in place ──► EventRef (hot path: Aggregator::apply_ref)
//!                             └──► to_event() ──► Event (decode: archive, join, tests)
//!    └─ any failure ─► DecodeError { reason } ─► dead-letter store (never dropped)
//! ```
//!
//! This module owns the decoding of record bytes and the validation rules of an event;
//! [`decode`] and [`decode_ref`] share both, so the owned and the borrowed event are
//! accepted, refused and explained alike. Nothing here panics on input: every failure is
//! a [`DecodeError`] that names the field and the problem.

use std::borrow::Cow;

use crate::event::{Event, EventType, Timestamp};
use crate::event_ref::EventRef;

/// The largest record accepted, in bytes (Kinesis allows 1 MiB; an event is ~200 bytes).
pub const DEFAULT_MAX_RECORD_BYTES: usize = 64 * 1024;

const MAX_ID_BYTES: usize = 128;
const MAX_TEXT_BYTES: usize = 256;
const MAX_QUERY_BYTES: usize = 1024;
const MAX_IMPRESSIONS: usize = 200;
/// Most items in a served list (`scoring.max_n` is at most 1000).
pub const MAX_SERVED_ITEMS: usize = 1000;
/// Longest feature row of a served item.
pub const MAX_SERVED_FEATURES: usize = 128;
const MAX_QUANTITY: u32 = 10_000;
const MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000;

/// Why a record was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The payload is longer than the decoder accepts; nothing of it is parsed.
    #[error("record is {len} bytes, over the {max} byte limit")]
    Oversized {
        /// Length of the payload in bytes.
        len: usize,
        /// The byte limit.
        max: usize,
    },
    /// The payload does not parse as an event (not JSON, a field of the wrong JSON type,
    /// a missing required field).
    #[error("malformed json: {0}")]
    Malformed(String),
    /// A field parsed but its value is not accepted (a timestamp outside 2000..2100, an
    /// empty id or one with control characters, a bad price or quantity).
    #[error("field `{field}`: {problem}")]
    Invalid {
        /// The field's JSON name.
        field: &'static str,
        /// What is wrong with it.
        problem: Cow<'static, str>,
    },
    /// The record could not be mapped from its source format (e.g. a bad CSV row).
    #[error("unmappable source row: {0}")]
    Unmappable(String),
}

impl DecodeError {
    /// A short, bounded label for metrics (`oversized`, `malformed`, `invalid_<field>`).
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Oversized { .. } => "oversized",
            DecodeError::Malformed(_) => "malformed",
            DecodeError::Unmappable(_) => "unmappable",
            DecodeError::Invalid { field, .. } => match *field {
                "event_id" => "invalid_event_id",
                "ts" => "invalid_ts",
                "user_id" => "invalid_user_id",
                "product_id" => "invalid_product_id",
                "price" | "price.amount" | "price.currency" => "invalid_price",
                "quantity" => "invalid_quantity",
                "recommendation_id" => "invalid_recommendation_id",
                "items" | "model_version" | "strategy" => "invalid_served_list",
                "product" | "product.title" | "product.stock" => "invalid_product",
                _ => "invalid_other",
            },
        }
    }

    fn invalid(field: &'static str, problem: impl Into<Cow<'static, str>>) -> DecodeError {
        DecodeError::Invalid {
            field,
            problem: problem.into(),
        }
    }
}

/// Decodes and validates one record with the default size limit.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    decode_with_limit(bytes, DEFAULT_MAX_RECORD_BYTES)
}

/// Decodes and validates one record, rejecting anything over `max_bytes`.
pub fn decode_with_limit(bytes: &[u8], max_bytes: usize) -> Result<Event, DecodeError> {
    decode_ref_with_limit(bytes, max_bytes).map(|e| e.to_event())
}

/// Decodes and validates one record with the default size limit into an event that
/// borrows its text from `bytes` (the hot path: no allocation unless a string holds JSON
/// escapes or the event carries impressions or a served list).
pub fn decode_ref(bytes: &[u8]) -> Result<EventRef<'_>, DecodeError> {
    decode_ref_with_limit(bytes, DEFAULT_MAX_RECORD_BYTES)
}

/// [`decode_ref`], rejecting anything over `max_bytes`.
pub fn decode_ref_with_limit(bytes: &[u8], max_bytes: usize) -> Result<EventRef<'_>, DecodeError> {
    if bytes.len() > max_bytes {
        return Err(DecodeError::Oversized {
            len: bytes.len(),
            max: max_bytes,
        });
    }
    // The plain shape producers send is scanned directly; anything else (and every
    // malformed record) goes to serde_json, which decides and explains.
    let event: EventRef<'_> = match crate::scan::scan(bytes) {
        Some(event) => event,
        None => match serde_json::from_slice(bytes) {
            Ok(event) => event,
            // Explained as serde_json explains it of the owned `Event` (the error path
            // only), so a dead letter's reason does not depend on which type decoded it.
            Err(borrowed) => {
                let why = serde_json::from_slice::<Event>(bytes)
                    .err()
                    .unwrap_or(borrowed);
                return Err(DecodeError::Malformed(why.to_string()));
            }
        },
    };
    validate_ref(&event)?;
    Ok(event)
}

/// Whether every byte is printable ASCII (space through `~`): then the text holds no
/// control and no bidi character, and its only whitespace is the space. Written without
/// an early exit so that it vectorises.
#[inline]
fn printable_ascii(s: &str) -> bool {
    s.bytes()
        .fold(true, |ok, b| ok & (b.wrapping_sub(0x20) < 0x5f))
}

fn check_id(field: &'static str, value: &str) -> Result<(), DecodeError> {
    if value.is_empty() {
        return Err(DecodeError::invalid(field, "must not be empty"));
    }
    if value.len() <= MAX_ID_BYTES && printable_ascii(value) {
        // The common case, decided in one pass: no control or bidi character can be in
        // it, so only blankness is left of `check_text` and `id_problem`.
        return if value.bytes().all(|b| b == b' ') {
            Err(DecodeError::invalid(field, "must not be blank"))
        } else {
            Ok(())
        };
    }
    check_text(field, value, MAX_ID_BYTES)?;
    match id_problem(value) {
        Some(p) => Err(DecodeError::invalid(field, p)),
        None => Ok(()),
    }
}

/// How far after its arrival an event may be dated by default (5 minutes of clock skew):
/// the shard processor's and the collector's bound.
pub const DEFAULT_MAX_FUTURE_SKEW_MS: u64 = 5 * 60 * 1000;

/// Whether an event's time `ts` is plausible for a record that arrived at `arrival`: at
/// most `max_future_ms` after it and (unless `max_age_ms` is 0) at most `max_age_ms`
/// before it. A file replay's arrival is the event time, so it always passes; records
/// from outside (the collector, Kinesis) are judged against when they arrived.
pub fn check_time_bounds(
    ts: Timestamp,
    arrival: Timestamp,
    max_future_ms: u64,
    max_age_ms: u64,
) -> Result<(), DecodeError> {
    let ahead = ts.0.saturating_sub(arrival.0);
    if ahead > 0 && ahead as u64 > max_future_ms {
        return Err(DecodeError::invalid(
            "ts",
            format!(
                "{} s after the record's arrival (at most {} s in the future)",
                ahead / 1000,
                max_future_ms / 1000
            ),
        ));
    }
    let behind = arrival.0.saturating_sub(ts.0);
    if max_age_ms > 0 && behind > 0 && behind as u64 > max_age_ms {
        return Err(DecodeError::invalid(
            "ts",
            format!(
                "{} s before the record's arrival (at most {} s old)",
                behind / 1000,
                max_age_ms / 1000
            ),
        ));
    }
    Ok(())
}

/// Unicode bidirectional controls (embeddings, overrides, isolates, marks): they make an
/// id display as another one (Trojan Source, CVE-2021-42574).
pub fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// Why `id` is not an acceptable identifier (user, product, event, session …), if it is
/// not: empty, over 128 bytes, blank (only whitespace), or holding control or bidi
/// characters. Shared by the decoder, the collector and the commerce handlers.
pub fn id_problem(id: &str) -> Option<&'static str> {
    if id.is_empty() {
        Some("must not be empty")
    } else if id.len() > MAX_ID_BYTES {
        Some("must be at most 128 bytes")
    } else if printable_ascii(id) {
        id.bytes().all(|b| b == b' ').then_some("must not be blank")
    } else if id.chars().all(char::is_whitespace) {
        Some("must not be blank")
    } else if id.chars().any(char::is_control) {
        Some("contains control characters")
    } else if id.chars().any(is_bidi_control) {
        Some("contains bidirectional control characters")
    } else {
        None
    }
}

fn check_text(field: &'static str, value: &str, max: usize) -> Result<(), DecodeError> {
    if value.len() > max {
        return Err(DecodeError::invalid(
            field,
            format!("{} bytes, over the {max} byte limit", value.len()),
        ));
    }
    if !printable_ascii(value) && value.chars().any(char::is_control) {
        return Err(DecodeError::invalid(field, "contains control characters"));
    }
    Ok(())
}

fn check_opt(field: &'static str, value: Option<&str>, max: usize) -> Result<(), DecodeError> {
    value.map_or(Ok(()), |v| check_text(field, v, max))
}

/// Validates an already decoded event (also used for events built in-process).
pub fn validate(e: &Event) -> Result<(), DecodeError> {
    validate_ref(&e.as_event_ref())
}

/// Validates a borrowed event in place: the rules of [`validate`], which calls it.
pub fn validate_ref(e: &EventRef<'_>) -> Result<(), DecodeError> {
    check_id("event_id", &e.event_id)?;
    check_id("user_id", &e.user_id)?;
    if e.ts < Timestamp::MIN || e.ts >= Timestamp::MAX {
        return Err(DecodeError::invalid(
            "ts",
            format!("{} ms is outside 2000-01-01..2100-01-01", e.ts.0),
        ));
    }
    if let Some(s) = &e.session_id {
        check_id("session_id", s)?;
    }
    if let EventType::Other(t) = &e.event_type {
        if t.is_empty() {
            return Err(DecodeError::invalid("type", "must not be empty"));
        }
        check_text("type", t, 64)?;
    }
    match &e.product_id {
        Some(p) => check_id("product_id", p)?,
        None if e.event_type.needs_product() => {
            return Err(DecodeError::invalid(
                "product_id",
                format!("required for `{}` events", e.event_type),
            ));
        }
        None => {}
    }
    check_opt("category", e.category.as_deref(), MAX_TEXT_BYTES)?;
    check_opt("brand", e.brand.as_deref(), MAX_TEXT_BYTES)?;
    check_opt("query", e.query.as_deref(), MAX_QUERY_BYTES)?;
    if let Some(price) = &e.price {
        if !(0..=MAX_AMOUNT_MINOR).contains(&price.amount) {
            return Err(DecodeError::invalid(
                "price.amount",
                format!(
                    "{} is outside 0..={MAX_AMOUNT_MINOR} minor units",
                    price.amount
                ),
            ));
        }
        let c = price.currency.as_bytes();
        if c.len() != 3 || !c.iter().all(u8::is_ascii_uppercase) {
            return Err(DecodeError::invalid(
                "price.currency",
                "must be a three-letter ISO 4217 code such as USD",
            ));
        }
    }
    if let Some(q) = e.quantity
        && !(1..=MAX_QUANTITY).contains(&q)
    {
        return Err(DecodeError::invalid(
            "quantity",
            format!("{q} is outside 1..={MAX_QUANTITY}"),
        ));
    }
    if let Some(p) = &e.profile {
        check_opt("profile.age_band", p.age_band.as_deref(), 32)?;
        check_opt("profile.gender", p.gender.as_deref(), 32)?;
        check_opt("profile.region", p.region.as_deref(), 64)?;
    }
    if let Some(r) = &e.recommendation_id {
        check_id("recommendation_id", r)?;
    }
    if e.impressions.len() > MAX_IMPRESSIONS {
        return Err(DecodeError::invalid(
            "impressions",
            format!(
                "{} items, over the limit of {MAX_IMPRESSIONS}",
                e.impressions.len()
            ),
        ));
    }
    for i in &e.impressions {
        check_id("impressions", i)?;
    }
    validate_product(e)?;
    validate_served(e)
}

const MAX_TITLE_BYTES: usize = 512;

/// A `product` event carries its catalog entry (title 1..=512 bytes, stock not negative)
/// and a price; no other type carries one.
fn validate_product(e: &EventRef<'_>) -> Result<(), DecodeError> {
    match (&e.event_type, &e.product) {
        (EventType::Product, Some(p)) => {
            if p.title.trim().is_empty() {
                return Err(DecodeError::invalid("product.title", "must not be blank"));
            }
            check_text("product.title", &p.title, MAX_TITLE_BYTES)?;
            if p.stock < 0 {
                return Err(DecodeError::invalid(
                    "product.stock",
                    format!("{} must not be negative", p.stock),
                ));
            }
            if e.price.is_none() {
                return Err(DecodeError::invalid(
                    "price",
                    "required for `product` events",
                ));
            }
            Ok(())
        }
        (EventType::Product, None) => Err(DecodeError::invalid(
            "product",
            "required for `product` events",
        )),
        (_, Some(_)) => Err(DecodeError::invalid(
            "product",
            format!(
                "`product` belongs to `product` events, not `{}`",
                e.event_type
            ),
        )),
        (_, None) => Ok(()),
    }
}

/// A `recommendation` event names its list, holds 1..=1000 items at positions 1, 2, …
/// with finite scores and features, and says how it was built; no other type carries a
/// served list.
fn validate_served(e: &EventRef<'_>) -> Result<(), DecodeError> {
    if e.event_type != EventType::Recommendation {
        if !e.items.is_empty() || e.model_version.is_some() || e.strategy.is_some() {
            return Err(DecodeError::invalid(
                "items",
                format!(
                    "`items`, `model_version` and `strategy` belong to `recommendation` events, not `{}`",
                    e.event_type
                ),
            ));
        }
        return Ok(());
    }
    if e.recommendation_id.is_none() {
        return Err(DecodeError::invalid(
            "recommendation_id",
            "required for `recommendation` events",
        ));
    }
    match e.strategy.as_deref() {
        None => {
            return Err(DecodeError::invalid(
                "strategy",
                "required for `recommendation` events",
            ));
        }
        Some(s) => check_id("strategy", s)?,
    }
    if let Some(v) = &e.model_version {
        check_id("model_version", v)?;
    }
    if e.items.is_empty() || e.items.len() > MAX_SERVED_ITEMS {
        return Err(DecodeError::invalid(
            "items",
            format!(
                "{} items: a served list holds 1..={MAX_SERVED_ITEMS}",
                e.items.len()
            ),
        ));
    }
    for (i, item) in e.items.iter().enumerate() {
        check_id("items", &item.product_id)?;
        if item.position as usize != i + 1 {
            return Err(DecodeError::invalid(
                "items",
                format!(
                    "item {i} is at position {}, expected {} (positions are 1, 2, … in order)",
                    item.position,
                    i + 1
                ),
            ));
        }
        if !item.score.is_finite() {
            return Err(DecodeError::invalid(
                "items",
                format!("item {i}: score is not a finite number"),
            ));
        }
        if item.features.len() > MAX_SERVED_FEATURES || item.features.iter().any(|x| !x.is_finite())
        {
            return Err(DecodeError::invalid(
                "items",
                format!("item {i}: features must be at most {MAX_SERVED_FEATURES} finite numbers"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Money;
    use proptest::prelude::*;

    const GOOD: &str = r#"{"event_id":"e1","ts":"2019-10-01T00:00:00Z","user_id":"u1",
        "session_id":"s1","type":"view","product_id":"p1","category":"electronics.phone",
        "price":{"amount":3579,"currency":"USD"},"quantity":1,"unknown_field":[1,2]}"#;

    #[test]
    fn decodes_a_full_event_and_ignores_unknown_fields() {
        let e = decode(GOOD.as_bytes()).unwrap();
        assert_eq!(e.user_id, "u1");
        assert_eq!(e.event_type, EventType::View);
        assert_eq!(e.ts, Timestamp(1_569_888_000_000));
        assert_eq!(e.price, Some(Money::new(3579, "USD")));
    }

    #[test]
    fn accepts_epoch_millis_and_unknown_types() {
        let e = decode(br#"{"event_id":"e","ts":1569888000000,"user_id":"u","type":"wishlist"}"#)
            .unwrap();
        assert_eq!(e.event_type, EventType::Other("wishlist".into()));
    }

    #[test]
    fn round_trips_through_to_json() {
        let e = decode(GOOD.as_bytes()).unwrap();
        assert_eq!(decode(&e.to_json()).unwrap(), e);
    }

    fn field_of(err: DecodeError) -> &'static str {
        match err {
            DecodeError::Invalid { field, .. } => field,
            other => panic!("expected a validation error, got {other}"),
        }
    }

    #[test]
    fn names_the_bad_field() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"event_id":"","ts":1569888000000,"user_id":"u","type":"search"}"#,
                "event_id",
            ),
            (
                r#"{"event_id":"e","ts":5,"user_id":"u","type":"search"}"#,
                "ts",
            ),
            (
                r#"{"event_id":"e","ts":1569888000000,"user_id":"u","type":"view"}"#,
                "product_id",
            ),
            (
                r#"{"event_id":"e","ts":1569888000000,"user_id":"u","type":"view","product_id":"p","quantity":0}"#,
                "quantity",
            ),
            (
                r#"{"event_id":"e","ts":1569888000000,"user_id":"u","type":"view","product_id":"p","price":{"amount":-1,"currency":"USD"}}"#,
                "price.amount",
            ),
            (
                r#"{"event_id":"e","ts":1569888000000,"user_id":"u","type":"view","product_id":"p","price":{"amount":1,"currency":"usd"}}"#,
                "price.currency",
            ),
        ];
        for (json, field) in cases {
            assert_eq!(
                field_of(decode(json.as_bytes()).unwrap_err()),
                *field,
                "{json}"
            );
        }
    }

    const SERVED: &str = r#"{"event_id":"r1","ts":1569888000000,"user_id":"u","type":"recommendation",
        "recommendation_id":"r1","strategy":"personalized","model_version":"v7",
        "items":[{"product_id":"p1","position":1,"score":0.9,"features":[0.5,1.0]},
                 {"product_id":"p2","position":2,"score":0.4}]}"#;

    #[test]
    fn product_events_carry_their_catalog_entry() {
        let entry = |product: &str, price: &str| {
            format!(
                r#"{{"event_id":"p","ts":1569888000000,"user_id":"backoffice","type":"product","product_id":"sofa-1"{price}{product}}}"#
            )
        };
        let price = r#","price":{"amount":12900,"currency":"EUR"}"#;
        let e =
            decode(entry(r#","product":{"title":"Sofa","stock":3}"#, price).as_bytes()).unwrap();
        assert_eq!(e.event_type, EventType::Product);
        assert!(!e.event_type.is_activity());
        let p = e.product.as_ref().unwrap();
        assert_eq!((p.title.as_str(), p.stock, p.active), ("Sofa", 3, true));
        assert_eq!(decode(&e.to_json()).unwrap(), e);

        let bad =
            |product: &str, price: &str| decode(entry(product, price).as_bytes()).unwrap_err();
        let missing = bad("", price);
        assert_eq!(
            (missing.kind(), field_of(missing)),
            ("invalid_product", "product")
        );
        let blank = bad(r#","product":{"title":" ","stock":3}"#, price);
        assert_eq!(field_of(blank), "product.title");
        let negative = bad(r#","product":{"title":"Sofa","stock":-1}"#, price);
        assert_eq!(field_of(negative), "product.stock");
        let no_price = bad(r#","product":{"title":"Sofa","stock":1}"#, "");
        assert_eq!(field_of(no_price), "price");
        assert!(matches!(
            bad(
                r#","product":{"title":"Sofa","stock":1,"colour":"red"}"#,
                price
            ),
            DecodeError::Malformed(_)
        ));
        // Only a `product` event carries one.
        let view = decode(
            br#"{"event_id":"v","ts":1569888000000,"user_id":"u","type":"view","product_id":"sofa-1","product":{"title":"Sofa","stock":3}}"#,
        )
        .unwrap_err();
        assert_eq!(field_of(view), "product");
    }

    #[test]
    fn recommendation_events_carry_their_served_list() {
        let e = decode(SERVED.as_bytes()).unwrap();
        assert_eq!(e.event_type, EventType::Recommendation);
        assert_eq!(e.recommendation_id.as_deref(), Some("r1"));
        assert_eq!(e.model_version.as_deref(), Some("v7"));
        assert_eq!(e.items.len(), 2);
        assert_eq!(e.items[0].features, vec![0.5, 1.0]);
        assert!(e.items[1].features.is_empty());
        assert_eq!(decode(&e.to_json()).unwrap(), e, "round trip");
        let built =
            Event::recommendation("r1", e.ts, "u", "personalized", Some("v7"), e.items.clone());
        assert_eq!(built, e);
    }

    #[test]
    fn malformed_served_lists_are_refused_with_their_reason() {
        let served: serde_json::Value = serde_json::from_str(SERVED).unwrap();
        let with = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v = served.clone();
            f(&mut v);
            decode(v.to_string().as_bytes()).unwrap_err()
        };
        let cases: Vec<(DecodeError, &str, &str)> = vec![
            (
                with(&|v| {
                    v.as_object_mut().unwrap().remove("recommendation_id");
                }),
                "recommendation_id",
                "required",
            ),
            (
                with(&|v| {
                    v.as_object_mut().unwrap().remove("strategy");
                }),
                "strategy",
                "required",
            ),
            (
                with(&|v| v["items"] = serde_json::json!([])),
                "items",
                "1..=1000",
            ),
            (
                with(&|v| v["items"][1]["position"] = serde_json::json!(5)),
                "items",
                "position 5, expected 2",
            ),
            (
                with(&|v| v["items"][0]["product_id"] = serde_json::json!("")),
                "items",
                "empty",
            ),
            (
                with(&|v| {
                    v["type"] = serde_json::json!("click");
                    v["product_id"] = serde_json::json!("p1");
                }),
                "items",
                "belong to `recommendation` events",
            ),
        ];
        for (err, field, words) in cases {
            let text = err.to_string();
            assert_eq!(field_of(err.clone()), field, "{text}");
            assert!(text.contains(words), "{text} should say {words}");
            assert!(err.kind().starts_with("invalid_"), "{}", err.kind());
        }
        // A feature out of f32's range does not even parse; a non-finite one built
        // in-process is refused by validation.
        let err = with(&|v| v["items"][0]["features"] = serde_json::json!([1e300]));
        assert!(matches!(err, DecodeError::Malformed(_)), "{err}");
        let mut e = decode(SERVED.as_bytes()).unwrap();
        e.items[0].features[0] = f32::NAN;
        assert!(validate(&e).unwrap_err().to_string().contains("finite"));
        // A score of the wrong JSON type is malformed, as any other field.
        let err = with(&|v| v["items"][0]["score"] = serde_json::json!("high"));
        assert!(matches!(err, DecodeError::Malformed(_)), "{err}");
    }

    #[test]
    fn event_time_is_bounded_by_arrival() {
        let now = Timestamp(1_700_000_000_000);
        let at = |d: i64| Timestamp(now.0 + d);
        check_time_bounds(now, now, 300_000, 0).unwrap();
        check_time_bounds(at(299_000), now, 300_000, 0).unwrap();
        let e = check_time_bounds(at(301_000), now, 300_000, 0).unwrap_err();
        assert_eq!(field_of(e), "ts");
        // 2099 against today.
        assert!(check_time_bounds(Timestamp(4_070_908_800_000), now, 300_000, 0).is_err());
        // Age: unbounded by default, bounded when configured.
        check_time_bounds(Timestamp(1_569_888_000_000), now, 300_000, 0).unwrap();
        assert!(check_time_bounds(at(-3_600_001), now, 300_000, 3_600_000).is_err());
        check_time_bounds(at(-3_599_000), now, 300_000, 3_600_000).unwrap();
    }

    #[test]
    fn blank_and_bidi_ids_are_refused() {
        for (field, value) in [
            ("user_id", "   "),
            ("user_id", "\u{202E}resu"),
            ("event_id", "e\u{2066}1"),
            ("product_id", "\t"),
            ("product_id", "p\u{200F}"),
        ] {
            let mut v = serde_json::json!({"event_id":"e","ts":1569888000000i64,"user_id":"u",
                "type":"view","product_id":"p"});
            v[field] = serde_json::json!(value);
            let err = decode(v.to_string().as_bytes()).unwrap_err();
            assert_eq!(field_of(err), field, "{value:?}");
        }
        assert_eq!(id_problem("u 1"), None, "inner spaces are fine");
        assert_eq!(id_problem("ユーザー"), None);
        assert!(id_problem(" ").is_some());
    }

    #[test]
    fn float_money_is_malformed_not_rounded() {
        let err = decode(br#"{"event_id":"e","ts":1569888000000,"user_id":"u","type":"view","product_id":"p","price":{"amount":35.79,"currency":"USD"}}"#).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed(_)), "{err}");
    }

    #[test]
    fn oversized_records_are_rejected_before_parsing() {
        let big = vec![b' '; DEFAULT_MAX_RECORD_BYTES + 1];
        assert_eq!(
            decode(&big).unwrap_err(),
            DecodeError::Oversized {
                len: DEFAULT_MAX_RECORD_BYTES + 1,
                max: DEFAULT_MAX_RECORD_BYTES
            }
        );
    }

    fn arb_event() -> impl Strategy<Value = Event> {
        (
            "[a-z0-9-]{1,40}",
            Timestamp::MIN.0..Timestamp::MAX.0,
            "[a-zA-Z0-9]{1,30}",
            prop_oneof![
                Just("view"),
                Just("purchase"),
                Just("add_to_cart"),
                Just("search"),
                Just("x")
            ],
            proptest::option::of("[0-9]{1,12}"),
            proptest::option::of((0i64..1_000_000, "[A-Z]{3}")),
            proptest::option::of(1u32..100),
        )
            .prop_map(|(id, ts, user, ty, product, price, qty)| {
                let ty = EventType::parse(ty);
                let product = product.or_else(|| ty.needs_product().then(|| "p".to_string()));
                let mut e = Event::new(&id, Timestamp(ts), &user, ty);
                e.product_id = product.map(Into::into);
                e.price = price.map(|(a, c)| Money::new(a, &c));
                e.quantity = qty;
                e
            })
    }

    /// The decoder before the borrowed event: [`Event`]'s own `Deserialize`, then
    /// [`validate`]. The borrowed decoder must agree with it on every input.
    fn decode_owned(bytes: &[u8]) -> Result<Event, DecodeError> {
        if bytes.len() > DEFAULT_MAX_RECORD_BYTES {
            return Err(DecodeError::Oversized {
                len: bytes.len(),
                max: DEFAULT_MAX_RECORD_BYTES,
            });
        }
        let e: Event =
            serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        validate(&e)?;
        Ok(e)
    }

    /// The id rules as they were written before the one-pass ASCII check.
    fn id_problem_by_chars(id: &str) -> Option<&'static str> {
        if id.is_empty() {
            Some("must not be empty")
        } else if id.len() > MAX_ID_BYTES {
            Some("must be at most 128 bytes")
        } else if id.chars().all(char::is_whitespace) {
            Some("must not be blank")
        } else if id.chars().any(char::is_control) {
            Some("contains control characters")
        } else if id.chars().any(is_bidi_control) {
            Some("contains bidirectional control characters")
        } else {
            None
        }
    }

    /// Text that exercises every branch of the id and text rules: printable ASCII, blanks,
    /// controls, bidi controls, Unicode whitespace, other non-ASCII, long strings.
    fn tricky_text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9 ._-]{0,30}",
            "[ \t\n\u{b}\u{c}\r\u{85}\u{a0}\u{2028}]{1,6}",
            "[a-z \u{0}\u{1f}\u{7f}\u{9f}\u{202e}\u{2066}\u{200e}\u{61c}é✓]{0,12}",
            "\\PC{0,16}",
            ".{0,16}",
            "[a-z]{120,140}",
            "[a-zé]{60,70}",
        ]
    }

    /// A JSON value to put into a field of a valid event: strings (tricky, escaped or
    /// not), numbers, nulls, arrays and objects.
    fn field_value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::json;
        prop_oneof![
            4 => tricky_text().prop_map(|s| json!(s)),
            1 => any::<i64>().prop_map(|n| json!(n)),
            1 => any::<f64>().prop_map(|n| json!(n)),
            1 => Just(json!(null)),
            1 => Just(json!("2019-10-01T00:00:00Z")),
            1 => Just(json!({"amount": 5, "currency": "EUR"})),
            1 => Just(json!({"age_band": "25-34", "gender": "F"})),
            1 => proptest::collection::vec(tricky_text(), 0..4).prop_map(|v| json!(v)),
            1 => Just(json!([{"product_id": "p1", "position": 1, "score": 0.5}])),
        ]
    }

    const FIELDS: &[&str] = &[
        "event_id",
        "ts",
        "user_id",
        "session_id",
        "type",
        "product_id",
        "category",
        "brand",
        "price",
        "quantity",
        "query",
        "profile",
        "recommendation_id",
        "impressions",
        "items",
        "model_version",
        "strategy",
        "unknown",
    ];

    proptest! {
        /// The one-pass ASCII check decides every id and text exactly as the char-by-char
        /// rules did.
        #[test]
        fn id_rules_agree_with_the_char_rules(s in tricky_text()) {
            prop_assert_eq!(id_problem(&s), id_problem_by_chars(&s));
            let by_chars = s.chars().any(char::is_control);
            let text = check_text("category", &s, MAX_TEXT_BYTES);
            if s.len() <= MAX_TEXT_BYTES {
                prop_assert_eq!(text.is_err(), by_chars, "{:?}", s);
            }
        }

        /// The borrowed decoder accepts, refuses and explains exactly as the owned
        /// decoder did, and the event it accepts is the same.
        #[test]
        fn borrowed_decoding_agrees_with_owned(
            e in arb_event(),
            edits in proptest::collection::vec((0..FIELDS.len(), field_value()), 0..3),
        ) {
            let mut v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
            for (f, value) in edits {
                v[FIELDS[f]] = value;
            }
            let bytes = v.to_string().into_bytes();
            let borrowed = decode_ref(&bytes).map(|r| r.to_event());
            prop_assert_eq!(&borrowed, &decode_owned(&bytes), "{}", v);
            prop_assert_eq!(decode(&bytes), borrowed);
        }

        /// Arbitrary bytes and JSON-ish text are refused alike by both decoders.
        #[test]
        fn borrowed_decoding_agrees_on_junk(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
            s in r#"\{("[a-z_]{1,10}":("[^"]{0,10}"|-?[0-9]{1,20}|\[\]|null|true),?){0,12}\}"#,
        ) {
            prop_assert_eq!(decode_ref(&bytes).map(|r| r.to_event()), decode_owned(&bytes));
            prop_assert_eq!(decode_ref(s.as_bytes()).map(|r| r.to_event()), decode_owned(s.as_bytes()));
        }
    }

    #[test]
    fn the_borrowed_event_borrows_its_text() {
        let e = decode_ref(GOOD.as_bytes()).unwrap();
        assert!(matches!(e.user_id.0, Cow::Borrowed("u1")));
        assert!(matches!(
            e.category.as_ref().map(|c| &c.0),
            Some(Cow::Borrowed("electronics.phone"))
        ));
        assert_eq!(e.to_event(), decode(GOOD.as_bytes()).unwrap());
        // An escaped string is unescaped into a copy, and reads the same.
        let e = decode_ref(
            br#"{"event_id":"e\u0031","ts":1569888000000,"user_id":"u","type":"search"}"#,
        )
        .unwrap();
        assert!(matches!(e.event_id.0, Cow::Owned(_)));
        assert_eq!(e.event_id, "e1");
    }

    proptest! {
        /// Arbitrary bytes never panic the decoder, whatever they are.
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        /// Arbitrary JSON-ish text never panics either and errors are always explained.
        #[test]
        fn never_panics_on_jsonish_text(s in r#"\{("[a-z_]{1,10}":("[^"]{0,10}"|-?[0-9]{1,20}|\[\]|null|true),?){0,12}\}"#) {
            if let Err(e) = decode(s.as_bytes()) {
                prop_assert!(!e.to_string().is_empty());
            }
        }

        /// Every valid event survives an encode/decode round trip unchanged.
        #[test]
        fn valid_events_round_trip(e in arb_event()) {
            prop_assert_eq!(decode(&e.to_json()).unwrap(), e);
        }

        /// Truncating a valid record anywhere yields an error, never a panic or a wrong event.
        #[test]
        fn truncated_records_are_rejected(e in arb_event(), cut in 0usize..200) {
            let bytes = e.to_json();
            let cut = cut.min(bytes.len().saturating_sub(1));
            prop_assert!(decode(&bytes[..cut]).is_err());
        }
    }
}
