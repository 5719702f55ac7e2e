//! Bring your own CSV: any delimited log with a header, mapped onto the event contract by
//! a user-given column mapping.
//!
//! ```text
//!  --csv-map user=visitorid,item=itemid,ts=timestamp,type=event,type.transaction=purchase
//!  (or, serde, a file with the same keys: user, item, ts, type, session, category,
//!   price, currency, delimiter, types = { transaction = "purchase" })
//!        ▼
//!  header ─► column indices ─► each row: ts (epoch s / ms, RFC 3339, `YYYY-MM-DD[ HH:MM:SS][ UTC]`),
//!            type (mapped name, else the contract's name, `view` when no type column) ─► Event
//!                                                                   └─ Err ─► dead letters
//! ```
//!
//! Event ids are `csv-<line>`; a row that cannot be mapped keeps its error (the replay turns
//! it into a dead letter), exactly as the bundled datasets' loaders do.

use std::collections::BTreeMap;
use std::path::Path;

use compact_str::format_compact;
use serde::{Deserialize, Serialize};

use super::{CsvRows, Dataset, LoadedRow, clip, dataset_error, normalise_header, parse_scaled};
use crate::decode::{DecodeError, validate};
use crate::error::IngestError;
use crate::event::{Event, EventType, Money, Timestamp};

/// Which CSV column holds which event field, and how type names map onto the contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvMapping {
    /// The user id column (required).
    pub user: String,
    /// The product id column (required).
    pub item: String,
    /// The event time column (required): epoch seconds or milliseconds, RFC 3339, or
    /// `YYYY-MM-DD[ HH:MM:SS][ UTC]`.
    pub ts: String,
    /// The event type column; without one every row is a `view`.
    #[serde(default)]
    pub r#type: Option<String>,
    /// The session id column.
    #[serde(default)]
    pub session: Option<String>,
    /// The category column.
    #[serde(default)]
    pub category: Option<String>,
    /// The price column (a decimal number, in `currency`).
    #[serde(default)]
    pub price: Option<String>,
    /// ISO-4217 code of the prices (default `USD`).
    #[serde(default = "default_currency")]
    pub currency: String,
    /// The field delimiter: one character, or `tab` / `comma` / `semicolon` (default `,`).
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
    /// The log's type names → the contract's (`transaction = "purchase"`); names not
    /// listed are taken as the contract's own (`view`, `add_to_cart`, `purchase`, …), with
    /// the common aliases `cart`/`addtocart` (add to cart) and `transaction`/`buy`/`order`
    /// (purchase).
    #[serde(default)]
    pub types: BTreeMap<String, String>,
}

fn default_currency() -> String {
    "USD".into()
}

fn default_delimiter() -> String {
    ",".into()
}

impl CsvMapping {
    /// Parses `key=value` pairs separated by commas: `user=`, `item=`, `ts=`, `type=`,
    /// `session=`, `category=`, `price=`, `currency=`, `delimiter=` and `type.<name>=<contract type>`.
    pub fn parse_spec(spec: &str) -> Result<CsvMapping, IngestError> {
        let bad = |m: String| IngestError::Config(format!("--csv-map: {m}"));
        let (mut user, mut item, mut ts) = (None, None, None);
        let mut m = CsvMapping {
            user: String::new(),
            item: String::new(),
            ts: String::new(),
            r#type: None,
            session: None,
            category: None,
            price: None,
            currency: default_currency(),
            delimiter: default_delimiter(),
            types: BTreeMap::new(),
        };
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("`{part}` is not key=value")))?;
            let (k, v) = (k.trim(), v.trim().to_string());
            if v.is_empty() {
                return Err(bad(format!("`{k}` has no value")));
            }
            match k {
                "user" => user = Some(v),
                "item" | "product" => item = Some(v),
                "ts" | "time" => ts = Some(v),
                "type" => m.r#type = Some(v),
                "session" => m.session = Some(v),
                "category" => m.category = Some(v),
                "price" => m.price = Some(v),
                "currency" => m.currency = v,
                "delimiter" => m.delimiter = v,
                _ => match k.strip_prefix("type.") {
                    Some(name) if !name.is_empty() => {
                        m.types.insert(name.to_string(), v);
                    }
                    _ => return Err(bad(format!("unknown key `{k}`"))),
                },
            }
        }
        m.user = user.ok_or_else(|| bad("`user=<column>` is required".into()))?;
        m.item = item.ok_or_else(|| bad("`item=<column>` is required".into()))?;
        m.ts = ts.ok_or_else(|| bad("`ts=<column>` is required".into()))?;
        m.delimiter_byte()?;
        Ok(m)
    }

    /// Checks a mapping read from a file (serde): required columns named, delimiter valid.
    pub fn check(&self) -> Result<(), IngestError> {
        for (k, v) in [("user", &self.user), ("item", &self.item), ("ts", &self.ts)] {
            if v.trim().is_empty() {
                return Err(IngestError::Config(format!("--csv-map: `{k}` is required")));
            }
        }
        self.delimiter_byte().map(|_| ())
    }

    fn delimiter_byte(&self) -> Result<u8, IngestError> {
        match self.delimiter.as_str() {
            "tab" | "\\t" | "\t" => Ok(b'\t'),
            "comma" => Ok(b','),
            "semicolon" => Ok(b';'),
            "pipe" => Ok(b'|'),
            d if d.len() == 1 && d.is_ascii() => Ok(d.as_bytes()[0]),
            d => Err(IngestError::Config(format!(
                "--csv-map: delimiter `{d}` is not one ASCII character, tab, comma, semicolon or pipe"
            ))),
        }
    }

    /// The contract type of a log's type name.
    fn event_type(&self, name: &str) -> EventType {
        if let Some(t) = self.types.get(name) {
            return EventType::parse(t);
        }
        match name.to_ascii_lowercase().as_str() {
            "cart" | "addtocart" | "add-to-cart" | "carts" => EventType::AddToCart,
            "transaction" | "buy" | "order" | "orders" => EventType::Purchase,
            "views" | "pageview" | "clicks" => EventType::View,
            other => EventType::parse(other),
        }
    }
}

/// Loads a CSV log through `mapping` (`.gz` is decompressed transparently).
pub fn load_csv(path: &Path, mapping: &CsvMapping) -> Result<Vec<LoadedRow>, IngestError> {
    let file = super::resolve(Dataset::Events, path, &["events.csv"])?;
    let mut rows = CsvRows::open(Dataset::Events, &file, mapping.delimiter_byte()?)?;
    let col = |name: &str| -> Result<usize, IngestError> {
        let want = normalise_header(name);
        rows.header.iter().position(|h| *h == want).ok_or_else(|| {
            dataset_error(
                Dataset::Events,
                format!(
                    "{}: no `{name}` column in the header ({})",
                    file.display(),
                    rows.header.join(",")
                ),
            )
        })
    };
    let opt = |name: &Option<String>| name.as_deref().map(col).transpose();
    let cols = Cols {
        user: col(&mapping.user)?,
        item: col(&mapping.item)?,
        ts: col(&mapping.ts)?,
        ty: opt(&mapping.r#type)?,
        session: opt(&mapping.session)?,
        category: opt(&mapping.category)?,
        price: opt(&mapping.price)?,
    };
    let mut out = Vec::new();
    while let Some(r) = rows.next_row()? {
        let event = map_row(&r, &cols, mapping);
        out.push(LoadedRow {
            row: r.line,
            line: r.line,
            raw: r.raw,
            event,
        });
    }
    Ok(out)
}

struct Cols {
    user: usize,
    item: usize,
    ts: usize,
    ty: Option<usize>,
    session: Option<usize>,
    category: Option<usize>,
    price: Option<usize>,
}

fn map_row(r: &super::CsvRow<'_>, c: &Cols, m: &CsvMapping) -> Result<Event, DecodeError> {
    r.check_width()?;
    let ts = parse_ts(r.str(c.ts, &m.ts)?.trim()).map_err(|e| super::unmappable(&m.ts, e))?;
    let event_type = match c.ty {
        Some(i) => {
            let t = r.str(i, "type")?.trim();
            if t.is_empty() {
                return Err(super::unmappable("type", "empty"));
            }
            m.event_type(t)
        }
        None => EventType::View,
    };
    let user = r.str(c.user, &m.user)?.trim();
    let item = r.str(c.item, &m.item)?.trim();
    let mut e = Event::new(&format_compact!("csv-{}", r.line), ts, user, event_type);
    e.product_id = (!item.is_empty()).then(|| item.into());
    e.session_id = text(r, c.session, "session")?.map(Into::into);
    e.category = text(r, c.category, "category")?.map(Into::into);
    if let Some(p) = text(r, c.price, "price")? {
        let minor = parse_scaled(p, 2, true).map_err(|e| super::unmappable("price", e))?;
        e.price = Some(Money::new(minor, &m.currency));
    }
    if matches!(e.event_type, EventType::AddToCart | EventType::Purchase) {
        e.quantity = Some(1);
    }
    validate(&e)?;
    Ok(e)
}

/// An optional column's text, `None` when there is no such column or the field is blank.
fn text<'r>(
    r: &'r super::CsvRow<'_>,
    i: Option<usize>,
    name: &str,
) -> Result<Option<&'r str>, DecodeError> {
    match i {
        Some(i) => Ok(Some(r.str(i, name)?.trim()).filter(|s| !s.is_empty())),
        None => Ok(None),
    }
}

/// Epoch seconds (up to 11 digits, an optional fraction) or milliseconds (12+ digits),
/// RFC 3339, `YYYY-MM-DD HH:MM:SS[.fff][ UTC]` or `YYYY-MM-DD` (midnight UTC).
pub fn parse_ts(s: &str) -> Result<Timestamp, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let int_len = s.split('.').next().map_or(0, str::len);
        return if int_len >= 12 {
            parse_scaled(s, 0, true).map(Timestamp)
        } else {
            parse_scaled(s, 3, true).map(Timestamp)
        };
    }
    if let Some(t) = Timestamp::parse_rfc3339(s) {
        return Ok(t);
    }
    let body = s.strip_suffix(" UTC").unwrap_or(s);
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(body, f) {
            return Ok(Timestamp(t.and_utc().timestamp_millis()));
        }
    }
    super::date_midnight_ms(body)
        .map(Timestamp)
        .map_err(|_| format!("`{}` is not a time this mapping reads", clip(s)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::{load, test_data_dir};

    #[test]
    fn a_real_rees46_file_through_a_mapping_gives_the_loader_s_events() {
        let dir = test_data_dir().join("rees46_multicat");
        let m = CsvMapping::parse_spec(
            "user=user_id, item=product_id, ts=event_time, type=event_type, session=user_session, category=category_code, price=price",
        )
        .unwrap();
        let mapped = load_csv(&dir.join("2019-Oct_head.csv"), &m).unwrap();
        let native = load(Dataset::Rees46, &dir).unwrap();
        assert_eq!(mapped.len(), native.len());
        assert!(mapped.len() > 10_000);
        let mut compared = 0;
        for (a, b) in mapped.iter().zip(&native) {
            let (Ok(a), Ok(b)) = (&a.event, &b.event) else {
                continue;
            };
            assert_eq!(
                (
                    &a.user_id,
                    &a.product_id,
                    &a.event_type,
                    a.ts,
                    &a.session_id,
                    &a.price
                ),
                (
                    &b.user_id,
                    &b.product_id,
                    &b.event_type,
                    b.ts,
                    &b.session_id,
                    &b.price
                )
            );
            compared += 1;
        }
        assert!(compared > 10_000, "{compared}");
    }

    #[test]
    fn specs_files_types_and_times() {
        let m = CsvMapping::parse_spec(
            "user=visitorid,item=itemid,ts=timestamp,type=event,type.transaction=purchase",
        )
        .unwrap();
        assert_eq!(m.event_type("transaction"), EventType::Purchase);
        assert_eq!(m.event_type("addtocart"), EventType::AddToCart);
        assert_eq!(m.event_type("view"), EventType::View);
        assert!(
            CsvMapping::parse_spec("user=a,item=b").is_err(),
            "ts missing"
        );
        assert!(CsvMapping::parse_spec("user=a,item=b,ts=c,colour=d").is_err());
        assert!(CsvMapping::parse_spec("user=a,item=b,ts=c,delimiter=ab").is_err());

        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("log.csv");
        std::fs::write(
            &f,
            "timestamp;visitorid;event;itemid\n1433221332117;257597;view;355908\n1433224214164;992329;transaction;248676\nbad;1;view;2\n",
        )
        .unwrap();
        let m: CsvMapping = serde_json::from_str(
            r#"{"user": "visitorid", "item": "itemid", "ts": "timestamp", "type": "event", "delimiter": ";"}"#,
        )
        .unwrap();
        m.check().unwrap();
        let rows = load_csv(&f, &m).unwrap();
        assert_eq!(rows.len(), 3);
        let e = rows[1].event.as_ref().unwrap();
        assert_eq!(
            (
                e.user_id.as_str(),
                e.product_id.as_deref(),
                &e.event_type,
                e.ts
            ),
            (
                "992329",
                Some("248676"),
                &EventType::Purchase,
                Timestamp(1433224214164)
            )
        );
        assert!(
            rows[2].event.is_err(),
            "a bad time is a dead letter, not a crash"
        );

        assert_eq!(parse_ts("1569888000"), Ok(Timestamp(1_569_888_000_000)));
        assert_eq!(parse_ts("1569888000.5"), Ok(Timestamp(1_569_888_000_500)));
        assert_eq!(
            parse_ts("2019-10-01 00:00:00 UTC"),
            Ok(Timestamp(1_569_888_000_000))
        );
        assert_eq!(
            parse_ts("2019-10-01T00:00:00Z"),
            Ok(Timestamp(1_569_888_000_000))
        );
        assert_eq!(parse_ts("2019-10-01"), Ok(Timestamp(1_569_888_000_000)));
        assert!(parse_ts("yesterday").is_err());
    }
}
