//! REES46 / Open CDP "eCommerce behavior data from multi category store" (CSV).
//!
//! ```text
//!  event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session
//!  2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,72d7…
//!      │                    │      │           │              │    │       │      │        └► session_id
//!      ▼                    ▼      ▼           └─ category ◄──┘    ▼       ▼      └► user_id
//!  ts (ms, UTC)   view|cart|purchase product_id  (code, else id)  brand  Money{3579, USD}
//! ```
//!
//! This file owns the REES46 mapping: `cart` is `add_to_cart` and cart/purchase rows get
//! quantity 1; the price is parsed exactly from its decimal text (never through a float);
//! event ids are `rees46-<row>`. Other event types (`remove_from_cart` in the cosmetics
//! shop's months, anything else) are kept, not rejected.

use std::path::Path;

use compact_str::{CompactString, format_compact};

use super::{CsvRows, LoadedRow, digits, parse_scaled, resolve, unmappable};
use crate::decode::{DecodeError, validate};
use crate::error::IngestError;
use crate::event::{Event, EventType, Money, Timestamp};

use super::Dataset;

/// The bundled head of `2019-Oct.csv`.
pub(super) const DEFAULT_FILE: &str = "2019-Oct_head.csv";
const OTHER_FILES: &[&str] = &["2019-Oct.csv", "2019-Nov.csv"];

const COLUMNS: [&str; 9] = [
    "eventtime",
    "eventtype",
    "productid",
    "categoryid",
    "categorycode",
    "brand",
    "price",
    "userid",
    "usersession",
];

pub(super) fn load(path: &Path) -> Result<Vec<LoadedRow>, IngestError> {
    let mut names = vec![DEFAULT_FILE];
    names.extend_from_slice(OTHER_FILES);
    let file = resolve(Dataset::Rees46, path, &names)?;
    let mut rows = CsvRows::open(Dataset::Rees46, &file, b',')?;
    let cols = rows.columns(COLUMNS)?;
    let mut out = Vec::with_capacity(rows.data.len() / 128);
    // Rows of one second share their time text: parse it once.
    let mut last_time: (CompactString, Timestamp) = (CompactString::default(), Timestamp(0));
    while let Some(r) = rows.next_row()? {
        let event = map_row(&r, &cols, &mut last_time);
        out.push(LoadedRow {
            row: r.line,
            line: r.line,
            raw: r.raw,
            event,
        });
    }
    Ok(out)
}

fn map_row(
    r: &super::CsvRow<'_>,
    c: &[usize; 9],
    last_time: &mut (CompactString, Timestamp),
) -> Result<Event, DecodeError> {
    r.check_width()?;
    let time = r.str(c[0], "event_time")?;
    let ts = if time == last_time.0 {
        last_time.1
    } else {
        let ts = parse_time(time)?;
        *last_time = (CompactString::from(time), ts);
        ts
    };
    let event_type = match r.str(c[1], "event_type")? {
        "view" => EventType::View,
        "cart" => EventType::AddToCart,
        "purchase" => EventType::Purchase,
        "remove_from_cart" => EventType::RemoveFromCart,
        "" => return Err(unmappable("event_type", "empty")),
        other => EventType::Other(other.into()),
    };
    let product = digits(r.str(c[2], "product_id")?, "product_id")?;
    let category_id = r.str(c[3], "category_id")?;
    if !category_id.is_empty() {
        digits(category_id, "category_id")?;
    }
    let category_code = r.str(c[4], "category_code")?;
    let brand = r.str(c[5], "brand")?;
    let price = match r.str(c[6], "price")? {
        "" => None,
        p => Some(Money::new(
            parse_scaled(p, 2, false).map_err(|e| unmappable("price", e))?,
            "USD",
        )),
    };
    let user = digits(r.str(c[7], "user_id")?, "user_id")?;
    let session = r.str(c[8], "user_session")?;

    let mut e = Event::new(&format_compact!("rees46-{}", r.line), ts, user, event_type);
    e.product_id = Some(product.into());
    e.category = [category_code, category_id]
        .into_iter()
        .find(|s| !s.is_empty())
        .map(Into::into);
    e.brand = (!brand.is_empty()).then(|| brand.into());
    e.price = price;
    e.session_id = (!session.is_empty()).then(|| session.into());
    if matches!(e.event_type, EventType::AddToCart | EventType::Purchase) {
        e.quantity = Some(1);
    }
    validate(&e)?;
    Ok(e)
}

/// `2019-10-01 00:00:00 UTC` (the ` UTC` suffix may be missing).
fn parse_time(s: &str) -> Result<Timestamp, DecodeError> {
    let body = s.strip_suffix(" UTC").unwrap_or(s);
    chrono::NaiveDateTime::parse_from_str(body, "%Y-%m-%d %H:%M:%S")
        .map(|t| Timestamp(t.and_utc().timestamp_millis()))
        .map_err(|_| {
            unmappable(
                "event_time",
                format_args!("`{}` is not `YYYY-MM-DD HH:MM:SS UTC`", super::clip(s)),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::{load as load_dataset, test_data_dir};

    fn dir() -> std::path::PathBuf {
        test_data_dir().join("rees46_multicat")
    }

    #[test]
    fn first_row_maps_exactly() {
        let rows = load_dataset(Dataset::Rees46, &dir()).unwrap();
        let first = &rows[0];
        assert_eq!((first.row, first.line), (1, 1));
        assert_eq!(
            first.raw,
            "2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,72d76fde-8bb3-4e00-8c23-a032dfed738c"
        );
        let mut want = Event::new(
            "rees46-1",
            Timestamp::parse_rfc3339("2019-10-01T00:00:00Z").unwrap(),
            "541312140",
            EventType::View,
        )
        .with_product("44600062", Some("2103807459595387724"))
        .with_session("72d76fde-8bb3-4e00-8c23-a032dfed738c");
        want.brand = Some("shiseido".into());
        want.price = Some(Money::new(3579, "USD"));
        assert_eq!(first.event, Ok(want));

        // The second row has a category code, which wins over the id.
        let second = rows[1].event.as_ref().unwrap();
        assert_eq!(
            second.category.as_deref(),
            Some("appliances.environment.water_heater")
        );
        assert_eq!(second.price, Some(Money::new(3320, "USD")));
    }

    #[test]
    fn every_row_maps_and_counts_match_the_file() {
        let file = dir().join(DEFAULT_FILE);
        let text = std::fs::read_to_string(&file).unwrap();
        let lines = text.lines().count() as u64 - 1;
        let rows = load_dataset(Dataset::Rees46, &file).unwrap();
        assert_eq!(rows.len() as u64, lines);
        assert_eq!(lines, 17_434);
        let mut by_type = std::collections::BTreeMap::<String, usize>::new();
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(r.row, i as u64 + 1);
            let e = r
                .event
                .as_ref()
                .unwrap_or_else(|e| panic!("row {}: {e}", r.row));
            *by_type.entry(e.event_type.to_string()).or_default() += 1;
            let qty = matches!(e.event_type, EventType::AddToCart | EventType::Purchase);
            assert_eq!(e.quantity.is_some(), qty);
            assert!(e.category.is_some() && e.price.is_some() && e.session_id.is_some());
        }
        let want: std::collections::BTreeMap<String, usize> = [
            ("add_to_cart".to_string(), 165),
            ("purchase".to_string(), 214),
            ("view".to_string(), 17_055),
        ]
        .into();
        assert_eq!(by_type, want);
        // Time-ordered window 00:00:00..=02:50:00 UTC.
        let ts: Vec<i64> = rows
            .iter()
            .map(|r| r.event.as_ref().unwrap().ts.0)
            .collect();
        assert!(ts.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(ts[ts.len() - 1] - ts[0], (2 * 3600 + 50 * 60) * 1000);
    }

    #[test]
    fn bundled_gz_sample_loads_like_the_csv() {
        let sample = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../data/sample/rees46-2019-10-01-head.csv.gz");
        let gz = load_dataset(Dataset::Rees46, &sample).unwrap();
        let csv = load_dataset(Dataset::Rees46, &dir()).unwrap();
        assert_eq!(gz.len(), csv.len());
        for (a, b) in gz.iter().zip(&csv) {
            assert_eq!((a.row, &a.raw, &a.event), (b.row, &b.raw, &b.event));
        }
    }

    #[test]
    fn malformed_rows_are_unmappable_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.csv");
        let body = "\
event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session
2019-10-01 00:00:00 UTC,view,1,2,,b,1.00,3,s
2019-10-01 00:00:00 UTC,view,1,2,,b,12.3x,3,s
2019-13-01 00:00:00 UTC,view,1,2,,b,1.00,3,s
2019-10-01 00:00:00 UTC,view,1,2,,b,1.00,3
2019-10-01 00:00:00 UTC,view,abc,2,,b,1.00,3,s
2019-10-01 00:00:00 UTC,view,1,2,,b,1.005,3,s
2019-10-01 00:00:00 UTC,view,1,2,,b,-1.00,3,s
2019-10-01 00:00:00 UTC,wishlist,1,,,,,3,
";
        std::fs::write(&file, body).unwrap();
        let rows = load_dataset(Dataset::Rees46, &file).unwrap();
        assert_eq!(rows.len(), 8);
        let errs: Vec<Option<String>> = rows
            .iter()
            .map(|r| r.event.as_ref().err().map(ToString::to_string))
            .collect();
        assert_eq!(errs[0], None);
        let unmappable = |s: &str| Some(format!("unmappable source row: {s}"));
        assert_eq!(
            errs[1],
            unmappable("price: `12.3x` is not a decimal number")
        );
        assert_eq!(
            errs[2],
            unmappable("event_time: `2019-13-01 00:00:00 UTC` is not `YYYY-MM-DD HH:MM:SS UTC`")
        );
        assert_eq!(errs[3], unmappable("row: expected 9 columns, found 8"));
        assert_eq!(errs[4], unmappable("product_id: `abc` is not a number"));
        assert_eq!(
            errs[5],
            unmappable("price: `1.005` has more than 2 decimal places")
        );
        // Maps, but the validator rejects a negative price.
        assert!(matches!(
            rows[6].event,
            Err(DecodeError::Invalid {
                field: "price.amount",
                ..
            })
        ));
        assert_eq!(rows[3].raw, "2019-10-01 00:00:00 UTC,view,1,2,,b,1.00,3");
        // Unknown types are kept; optional columns may be empty.
        let e = rows[7].event.as_ref().unwrap();
        assert_eq!(e.event_type, EventType::Other("wishlist".into()));
        assert_eq!(
            (e.category.as_ref(), e.brand.as_ref(), e.price.as_ref()),
            (None, None, None)
        );
        assert_eq!(e.session_id, None);
    }

    #[test]
    fn a_missing_column_is_a_dataset_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.csv");
        std::fs::write(
            &file,
            "event_time,event_type\n2019-10-01 00:00:00 UTC,view\n",
        )
        .unwrap();
        assert!(matches!(
            load_dataset(Dataset::Rees46, &file),
            Err(IngestError::Dataset { .. })
        ));
    }
}
