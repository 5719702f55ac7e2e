//! The fast path of the decoder: a scanner for the plain JSON shape producers send, that
//! yields the same [`EventRef`] as serde_json would, or gives up.
//!
//! ```text
//!  bytes ──► scan: { "known key": plain value, … } ──► Some(EventRef)   (borrowed, no allocation)
//!                  anything else ─────────────────────► None ─► serde_json (decides and explains)
//! ```
//!
//! This module owns the subset of JSON it accepts, and the promise that makes it safe:
//! whenever [`scan`] returns `Some(e)`, `serde_json::from_slice::<EventRef>` returns
//! `Ok(e)` for the same bytes. It accepts an object of the event's scalar fields
//! (`event_id`, `ts`, `user_id`, `session_id`, `type`, `product_id`, `category`, `brand`,
//! `price`, `quantity`, `query`, `recommendation_id`, `model_version`, `strategy`), each
//! at most once, with strings free of escapes and control characters, integers without
//! sign, fraction or exponent (a signed amount is accepted), `null` for the optional ones,
//! and JSON whitespace anywhere between tokens. Everything else — an unknown key,
//! a duplicate, an escape, a float, `impressions`, `items`, `profile`, a missing required
//! field, a syntax error — returns `None`, and serde_json decides; so the errors of
//! refused records are serde_json's own, word for word.

use std::borrow::Cow;

use crate::event::{EventType, Timestamp};
use crate::event_ref::{EventRef, MoneyRef, Str};

/// The event in `bytes`, if it is in the plain subset (see the module docs).
pub fn scan(bytes: &[u8]) -> Option<EventRef<'_>> {
    // One UTF-8 check of the whole record (word at a time) instead of one per string:
    // the strings are then slices of it, cut at quotes, which are always char boundaries.
    let text = std::str::from_utf8(bytes).ok()?;
    let mut s = Scanner {
        t: text,
        b: bytes,
        i: 0,
    };
    s.ws();
    s.eat(b'{')?;
    let mut e = Fields::default();
    s.ws();
    if s.peek()? == b'}' {
        return None; // required fields are missing: serde_json explains which
    }
    loop {
        s.ws();
        let key = s.string()?;
        s.ws();
        s.eat(b':')?;
        s.ws();
        match key.as_bytes() {
            b"event_id" => set(&mut e.event_id, s.string()?)?,
            b"ts" => {
                if e.ts.is_some() {
                    return None;
                }
                e.ts = Some(s.timestamp()?);
            }
            b"user_id" => set(&mut e.user_id, s.string()?)?,
            b"session_id" => set(&mut e.session_id, s.opt_string()?)?,
            b"type" => {
                if e.event_type.is_some() {
                    return None;
                }
                e.event_type = Some(EventType::parse(s.string()?));
            }
            b"product_id" => set(&mut e.product_id, s.opt_string()?)?,
            b"category" => set(&mut e.category, s.opt_string()?)?,
            b"brand" => set(&mut e.brand, s.opt_string()?)?,
            b"price" => set(&mut e.price, s.opt_money()?)?,
            b"quantity" => set(&mut e.quantity, s.opt_u32()?)?,
            b"query" => set(&mut e.query, s.opt_string()?)?,
            b"recommendation_id" => set(&mut e.recommendation_id, s.opt_string()?)?,
            b"model_version" => set(&mut e.model_version, s.opt_string()?)?,
            b"strategy" => set(&mut e.strategy, s.opt_string()?)?,
            _ => return None,
        }
        s.ws();
        match s.next()? {
            b',' => continue,
            b'}' => break,
            _ => return None,
        }
    }
    s.ws();
    if s.i != bytes.len() {
        return None;
    }
    Some(EventRef {
        event_id: Str(Cow::Borrowed(e.event_id?)),
        ts: e.ts?,
        user_id: Str(Cow::Borrowed(e.user_id?)),
        session_id: borrowed(e.session_id),
        event_type: e.event_type?,
        product_id: borrowed(e.product_id),
        category: borrowed(e.category),
        brand: borrowed(e.brand),
        price: e.price.flatten().map(|(amount, currency)| MoneyRef {
            amount,
            currency: Str(Cow::Borrowed(currency)),
        }),
        quantity: e.quantity.flatten(),
        query: borrowed(e.query),
        profile: None,
        recommendation_id: borrowed(e.recommendation_id),
        impressions: Vec::new(),
        items: Cow::Borrowed(&[]),
        model_version: borrowed(e.model_version),
        strategy: borrowed(e.strategy),
        product: None,
    })
}

/// What the scan found so far; the outer `Option` of an optional field is "seen", so
/// that a duplicate (which serde_json refuses) gives up.
#[derive(Default)]
struct Fields<'a> {
    event_id: Option<&'a str>,
    ts: Option<Timestamp>,
    user_id: Option<&'a str>,
    session_id: Option<Option<&'a str>>,
    event_type: Option<EventType>,
    product_id: Option<Option<&'a str>>,
    category: Option<Option<&'a str>>,
    brand: Option<Option<&'a str>>,
    price: Option<Option<(i64, &'a str)>>,
    quantity: Option<Option<u32>>,
    query: Option<Option<&'a str>>,
    recommendation_id: Option<Option<&'a str>>,
    model_version: Option<Option<&'a str>>,
    strategy: Option<Option<&'a str>>,
}

/// Sets a field seen for the first time; a second time gives up.
#[inline]
fn set<T>(slot: &mut Option<T>, v: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(v);
    Some(())
}

fn borrowed(v: Option<Option<&str>>) -> Option<Str<'_>> {
    v.flatten().map(|s| Str(Cow::Borrowed(s)))
}

struct Scanner<'a> {
    t: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline]
    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    #[inline]
    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    /// JSON whitespace, as serde_json skips it.
    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// A string without escapes or control characters.
    #[inline]
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        let rest = &self.b[start..];
        let len = rest
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
        if rest[len] != b'"' {
            return None;
        }
        self.i = start + len + 1;
        self.t.get(start..start + len)
    }

    #[inline]
    fn null(&mut self) -> Option<()> {
        if self.b.get(self.i..self.i + 4)? == b"null" {
            self.i += 4;
            Some(())
        } else {
            None
        }
    }

    #[inline]
    fn opt_string(&mut self) -> Option<Option<&'a str>> {
        if self.peek()? == b'n' {
            self.null()?;
            Some(None)
        } else {
            self.string().map(Some)
        }
    }

    /// Digits of an integer without sign, fraction or exponent, at most 18 of them (no
    /// overflow) and without a leading zero (which JSON forbids), ended by a delimiter.
    #[inline]
    fn unsigned(&mut self) -> Option<u64> {
        let start = self.i;
        let mut v: u64 = 0;
        while let Some(c @ b'0'..=b'9') = self.peek() {
            // Wraps past 19 digits; such a number is refused below, whatever `v` holds.
            v = v.wrapping_mul(10).wrapping_add(u64::from(c - b'0'));
            self.i += 1;
        }
        let n = self.i - start;
        if n == 0 || n > 18 || (n > 1 && self.b[start] == b'0') {
            return None;
        }
        match self.peek()? {
            b',' | b'}' | b' ' | b'\n' | b'\t' | b'\r' => Some(v),
            _ => None,
        }
    }

    /// Epoch milliseconds (an unsigned integer) or an RFC 3339 string, as
    /// [`Timestamp`]'s `Deserialize` reads them.
    #[inline]
    fn timestamp(&mut self) -> Option<Timestamp> {
        if self.peek()? == b'"' {
            Timestamp::parse_rfc3339(self.string()?)
        } else {
            // At most 18 digits: always within i64.
            Some(Timestamp(self.unsigned()? as i64))
        }
    }

    #[inline]
    fn opt_u32(&mut self) -> Option<Option<u32>> {
        if self.peek()? == b'n' {
            self.null()?;
            return Some(None);
        }
        u32::try_from(self.unsigned()?).ok().map(Some)
    }

    /// `null` or `{"amount": <integer>, "currency": "<code>"}` in either order.
    fn opt_money(&mut self) -> Option<Option<(i64, &'a str)>> {
        if self.peek()? == b'n' {
            self.null()?;
            return Some(None);
        }
        self.eat(b'{')?;
        let (mut amount, mut currency) = (None, None);
        loop {
            self.ws();
            let key = self.string()?;
            self.ws();
            self.eat(b':')?;
            self.ws();
            match key.as_bytes() {
                b"amount" => {
                    let negative = self.peek()? == b'-';
                    if negative {
                        self.i += 1;
                    }
                    let v = self.unsigned()? as i64;
                    if negative && v == 0 {
                        return None; // `-0`: leave it to serde_json
                    }
                    set(&mut amount, if negative { -v } else { v })?;
                }
                b"currency" => set(&mut currency, self.string()?)?,
                _ => return None,
            }
            self.ws();
            match self.next()? {
                b',' => continue,
                b'}' => break,
                _ => return None,
            }
        }
        Some(Some((amount?, currency?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn serde(bytes: &[u8]) -> Option<EventRef<'_>> {
        serde_json::from_slice(bytes).ok()
    }

    #[test]
    fn scans_the_plain_shape_as_serde_json_reads_it() {
        let plain: &[&str] = &[
            r#"{"event_id":"e1","ts":1569888000000,"user_id":"u1","session_id":"s1","type":"view","product_id":"p1","category":"a.b","brand":"x","price":{"amount":3579,"currency":"USD"}}"#,
            r#" { "ts" : "2019-10-01T00:00:00Z" , "event_id":"e","user_id":"ü","type":"wishlist","price":{"currency":"EUR","amount":-5},"quantity":7,"query":null } "#,
            "{\"event_id\":\"e\",\"ts\":0,\"user_id\":\"u\",\"type\":\"search\",\"query\":\"red shoes\"}\n",
        ];
        for json in plain {
            let fast = scan(json.as_bytes()).unwrap_or_else(|| panic!("not scanned: {json}"));
            assert_eq!(Some(fast), serde(json.as_bytes()), "{json}");
        }
    }

    #[test]
    fn gives_up_on_everything_else() {
        let other: &[&str] = &[
            r#"{"event_id":"e\u0031","ts":1,"user_id":"u","type":"view"}"#,
            r#"{"event_id":"e","ts":1.5,"user_id":"u","type":"view"}"#,
            r#"{"event_id":"e","ts":01,"user_id":"u","type":"view"}"#,
            // Too many digits for the scanner (found by cargo-fuzz: it overflowed once).
            r#"{"event_id":"e5","ts":170088888888888888888088,"user_id":"u","type":"view"}"#,
            r#"{"event_id":"e","ts":1,"user_id":"u","type":"view","product_id":"p","quantity":99999999999999999999999999}"#,
            r#"{"event_id":"e","ts":1,"user_id":"u","type":"view","x":1}"#,
            r#"{"event_id":"e","ts":1,"user_id":"u","user_id":"v","type":"view"}"#,
            r#"{"event_id":"e","ts":1,"user_id":"u","type":"view","impressions":["a"]}"#,
            r#"{"event_id":"e","ts":1,"user_id":"u"}"#,
            r#"{"event_id":"e","ts":1,"user_id":"u","type":"view"} x"#,
            r#"{"event_id":"e","ts":1,"user_id":"u","type":"view",}"#,
            r#"{"event_id":"e","ts":1,"user_id":"u","type":"view","price":{"amount":-0,"currency":"USD"}}"#,
            r#"{"event_id":"e","ts":1234567890123456789,"user_id":"u","type":"view"}"#,
            r#"{"event_id":null,"ts":1,"user_id":"u","type":"view"}"#,
            "{\"event_id\":\"a\tb\",\"ts\":1,\"user_id\":\"u\",\"type\":\"view\"}",
            r#"["e",1,"u","view"]"#,
        ];
        for json in other {
            assert!(scan(json.as_bytes()).is_none(), "{json}");
        }
    }

    fn token() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("{".to_string()),
            Just("}".to_string()),
            Just(",".to_string()),
            Just(":".to_string()),
            Just(" ".to_string()),
            Just("null".to_string()),
            Just("\"event_id\"".to_string()),
            Just("\"ts\"".to_string()),
            Just("\"user_id\"".to_string()),
            Just("\"type\"".to_string()),
            Just("\"price\"".to_string()),
            Just("\"amount\"".to_string()),
            Just("\"currency\"".to_string()),
            Just("\"quantity\"".to_string()),
            Just("\"session_id\"".to_string()),
            "\"[a-zé\\\\\\t ]{0,4}\"",
            "-?[0-9]{1,20}(\\.[0-9])?",
        ]
    }

    proptest! {
        /// Whenever the scan gives an event, serde_json gives the same one.
        #[test]
        fn a_scanned_event_is_serde_jsons(tokens in proptest::collection::vec(token(), 0..40)) {
            let json = tokens.concat();
            if let Some(fast) = scan(json.as_bytes()) {
                prop_assert_eq!(Some(fast), serde(json.as_bytes()), "{}", json);
            }
        }

        /// And it does give one for the records producers write.
        #[test]
        fn scans_what_to_json_writes(
            id in "[a-z0-9-]{1,40}",
            ts in 0i64..4_102_444_800_000,
            amount in proptest::option::of(-1000i64..1_000_000),
            qty in proptest::option::of(any::<u32>()),
        ) {
            let mut e = crate::Event::new(&id, Timestamp(ts), "u", EventType::View)
                .with_product("p", Some("c"));
            e.price = amount.map(|a| crate::Money::new(a, "USD"));
            e.quantity = qty;
            let json = e.to_json();
            prop_assert_eq!(scan(&json).map(|f| f.to_event()), Some(e));
        }
    }
}
