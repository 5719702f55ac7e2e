//! Diginetica (CIKM Cup 2016): item views and purchases, with product categories.
//!
//! ```text
//!  sample_train-item-views.csv  session_id;user_id;item_id;timeframe;eventdate ─► view ─┐
//!  train-purchases.csv          sessionId;userId;timeframe;eventdate;ordernumber;itemId │  stable sort
//!        (only sessions present in the views file) ──────────────────────────► purchase ┼─► by ts ─► rows 1..
//!  product-categories.csv       itemId;categoryId ─► category of both ───────────────────┘
//! ```
//!
//! This file owns the Diginetica mapping. A user id of `NA` (anonymous) becomes
//! `s<session_id>`. Event ids are `diginetica-<row of the views file>` and
//! `diginetica-purchase-<row of the purchases file>`; `row` is renumbered after the merge.
//!
//! Time: the data gives only a calendar date per event and `timeframe`, milliseconds since
//! the session started. An event's time is `session start + timeframe`, where the session
//! start is the midnight (UTC) of the session's earliest view date — so a view's time is
//! `eventdate midnight + timeframe` — unless that contradicts a view's own date (a session
//! that runs over midnight), in which case the start is moved to the earliest instant that
//! puts every view on its stated date. A purchase's time is then clamped into its own
//! `eventdate` (44 of the 256 purchases of the sample would otherwise fall up to 16 hours
//! before their date: their timeframe and date disagree in the source).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use compact_str::{CompactString, format_compact};

use super::{
    CsvRows, Dataset, LoadedRow, date_midnight_ms, digits, find_in_dir, parse_i64, resolve,
    sort_keyed, unmappable,
};
use crate::decode::{DecodeError, validate};
use crate::error::IngestError;
use crate::event::{Event, EventType, Timestamp};

/// The views file: the SR-GNN sample, or the full original.
pub(super) const VIEWS_FILES: &[&str] = &["sample_train-item-views.csv", "train-item-views.csv"];
const CATEGORIES_FILE: &str = "product-categories.csv";
const PURCHASES_FILE: &str = "train-purchases.csv";
const DAY_MS: i64 = 86_400_000;

/// A view or purchase row, parsed but not yet timed.
struct Parsed {
    session: CompactString,
    /// `None` for `NA`.
    user: Option<CompactString>,
    item: CompactString,
    timeframe: i64,
    date_ms: i64,
}

/// A row of one of the two event files.
struct Row {
    line: u64,
    raw: Bytes,
    parsed: Result<Parsed, DecodeError>,
}

/// What the views say about when a session started.
struct Anchor {
    /// Earliest start consistent with every view's date.
    lo: i64,
    /// Start must be before this for every view to stay on its date.
    hi: i64,
    /// Midnight of the earliest view date.
    first_date: i64,
}

impl Anchor {
    fn start(&self) -> i64 {
        if self.lo < self.hi {
            self.first_date.clamp(self.lo, self.hi - 1)
        } else {
            self.first_date
        }
    }
}

pub(super) fn load(path: &Path) -> Result<Vec<LoadedRow>, IngestError> {
    let views_path = resolve(Dataset::Diginetica, path, VIEWS_FILES)?;
    let dir = views_path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);

    let views = read_events(
        &views_path,
        ["sessionid", "userid", "itemid", "timeframe", "eventdate"],
    )?;
    let view_sessions: HashSet<&str> = views
        .iter()
        .filter_map(|r| r.parsed.as_ref().ok().map(|p| p.session.as_str()))
        .collect();

    let purchases = match find_in_dir(&dir, &[PURCHASES_FILE]) {
        Some(p) => {
            let all = read_events(
                &p,
                ["sessionid", "userid", "itemid", "timeframe", "eventdate"],
            )?;
            // Keep the purchases of the sessions the views file has, so a sample stays
            // consistent; an unmappable row is kept when its first field names such a session.
            all.into_iter()
                .filter(|r| match &r.parsed {
                    Ok(p) => view_sessions.contains(p.session.as_str()),
                    Err(_) => r
                        .raw
                        .split(|b| *b == b';')
                        .next()
                        .and_then(|s| std::str::from_utf8(s).ok())
                        .is_some_and(|s| view_sessions.contains(s.trim())),
                })
                .collect()
        }
        None => {
            tracing::warn!(dir = %dir.display(), "diginetica: no {PURCHASES_FILE}; loading views only");
            Vec::new()
        }
    };

    let mut anchors: HashMap<&str, Anchor> = HashMap::new();
    for p in views.iter().filter_map(|r| r.parsed.as_ref().ok()) {
        let lo = p.date_ms.saturating_sub(p.timeframe);
        let hi = lo.saturating_add(DAY_MS);
        anchors
            .entry(p.session.as_str())
            .and_modify(|a| {
                a.lo = a.lo.max(lo);
                a.hi = a.hi.min(hi);
                a.first_date = a.first_date.min(p.date_ms);
            })
            .or_insert(Anchor {
                lo,
                hi,
                first_date: p.date_ms,
            });
    }

    let needed: HashSet<&str> = views
        .iter()
        .chain(&purchases)
        .filter_map(|r| r.parsed.as_ref().ok().map(|p| p.item.as_str()))
        .collect();
    let categories = match find_in_dir(&dir, &[CATEGORIES_FILE]) {
        Some(p) => read_categories(&p, &needed)?,
        None => {
            tracing::warn!(dir = %dir.display(), "diginetica: no {CATEGORIES_FILE}; events have no category");
            HashMap::new()
        }
    };

    let mut keyed = Vec::with_capacity(views.len() + purchases.len());
    for (rows, purchase) in [(&views, false), (&purchases, true)] {
        let mut last_ts = i64::MIN;
        for r in rows.iter() {
            let event = r.parsed.as_ref().map_err(Clone::clone).and_then(|p| {
                let start = anchors
                    .get(p.session.as_str())
                    .map_or(p.date_ms, Anchor::start);
                let mut ts = start.saturating_add(p.timeframe);
                if purchase {
                    ts = ts.clamp(p.date_ms, p.date_ms.saturating_add(DAY_MS - 1));
                }
                to_event(p, r.line, ts, purchase, &categories)
            });
            if let Ok(e) = &event {
                last_ts = e.ts.0;
            }
            keyed.push((
                last_ts,
                LoadedRow {
                    row: 0,
                    line: r.line,
                    raw: r.raw.clone(),
                    event,
                },
            ));
        }
    }
    Ok(sort_keyed(keyed))
}

fn to_event(
    p: &Parsed,
    line: u64,
    ts: i64,
    purchase: bool,
    categories: &HashMap<CompactString, CompactString>,
) -> Result<Event, DecodeError> {
    let (id, event_type) = if purchase {
        (
            format_compact!("diginetica-purchase-{line}"),
            EventType::Purchase,
        )
    } else {
        (format_compact!("diginetica-{line}"), EventType::View)
    };
    let user = match &p.user {
        Some(u) => u.clone(),
        None => format_compact!("s{}", p.session),
    };
    let mut e = Event::new(&id, Timestamp(ts), &user, event_type)
        .with_product(&p.item, categories.get(&p.item).map(CompactString::as_str))
        .with_session(&p.session);
    if purchase {
        e.quantity = Some(1);
    }
    validate(&e)?;
    Ok(e)
}

/// Reads the views or the purchases file; `cols` name session, user, item, timeframe, date.
fn read_events(path: &Path, cols: [&str; 5]) -> Result<Vec<Row>, IngestError> {
    let mut rows = CsvRows::open(Dataset::Diginetica, path, b';')?;
    let c = rows.columns(cols)?;
    let mut out = Vec::with_capacity(rows.data.len() / 32);
    while let Some(r) = rows.next_row()? {
        let parsed = parse_row(&r, &c);
        out.push(Row {
            line: r.line,
            raw: r.raw,
            parsed,
        });
    }
    Ok(out)
}

fn parse_row(r: &super::CsvRow<'_>, c: &[usize; 5]) -> Result<Parsed, DecodeError> {
    r.check_width()?;
    let session = digits(r.str(c[0], "session_id")?, "session_id")?;
    let user = match r.str(c[1], "user_id")? {
        "NA" | "" => None,
        u => Some(digits(u, "user_id")?.into()),
    };
    let item = digits(r.str(c[2], "item_id")?, "item_id")?;
    let timeframe = parse_i64(r.str(c[3], "timeframe")?, "timeframe")?;
    let date_ms =
        date_midnight_ms(r.str(c[4], "eventdate")?).map_err(|e| unmappable("eventdate", e))?;
    Ok(Parsed {
        session: session.into(),
        user,
        item: item.into(),
        timeframe,
        date_ms,
    })
}

/// `itemId;categoryId` for the items in `needed` (the full table has 184k items).
fn read_categories(
    path: &Path,
    needed: &HashSet<&str>,
) -> Result<HashMap<CompactString, CompactString>, IngestError> {
    let mut rows = CsvRows::open(Dataset::Diginetica, path, b';')?;
    let [item, category] = rows.columns(["itemid", "categoryid"])?;
    let mut out = HashMap::with_capacity(needed.len());
    let mut bad = 0u64;
    while let Some(r) = rows.next_row()? {
        let pair = r.check_width().and_then(|()| {
            Ok((
                digits(r.str(item, "itemId")?, "itemId")?,
                digits(r.str(category, "categoryId")?, "categoryId")?,
            ))
        });
        match pair {
            Ok((i, c)) if needed.contains(i) => {
                out.insert(CompactString::from(i), CompactString::from(c));
            }
            Ok(_) => {}
            Err(_) => bad += 1,
        }
    }
    if bad > 0 {
        tracing::warn!(file = %path.display(), bad, "diginetica: unreadable product-category rows ignored");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::{load as load_dataset, test_data_dir};

    fn dir() -> PathBuf {
        test_data_dir().join("diginetica")
    }

    fn line_count(p: &Path) -> usize {
        std::fs::read_to_string(p).unwrap().lines().count() - 1
    }

    #[test]
    fn loads_views_and_sample_purchases_sorted_by_time() {
        let rows = load_dataset(Dataset::Diginetica, &dir()).unwrap();
        let views = line_count(&dir().join(VIEWS_FILES[0]));
        assert_eq!(views, 12_391);
        let (mut v, mut p) = (0, 0);
        let mut prev = i64::MIN;
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(r.row, i as u64 + 1);
            let e = r
                .event
                .as_ref()
                .unwrap_or_else(|e| panic!("row {}: {e}", r.row));
            assert!(e.ts.0 >= prev, "row {} goes back in time", r.row);
            prev = e.ts.0;
            // Every item of the sample has a category.
            assert!(e.category.is_some(), "{}", e.event_id);
            match e.event_type {
                EventType::View => v += 1,
                EventType::Purchase => {
                    p += 1;
                    assert_eq!(e.quantity, Some(1));
                }
                ref other => panic!("unexpected type {other}"),
            }
        }
        assert_eq!(v, views);
        assert_eq!(p, 256, "purchases of the sample's sessions");
        let ids: HashSet<&str> = rows
            .iter()
            .map(|r| r.event.as_ref().unwrap().event_id.as_str())
            .collect();
        assert_eq!(ids.len(), rows.len(), "event ids are unique");
    }

    #[test]
    fn na_users_become_session_users_and_views_keep_their_date() {
        let rows = load_dataset(Dataset::Diginetica, &dir()).unwrap();
        let first = rows
            .iter()
            .find(|r| r.event.as_ref().is_ok_and(|e| e.event_id == "diginetica-1"))
            .unwrap();
        assert_eq!(first.raw, "1;NA;81766;526309;2016-05-09");
        let e = first.event.as_ref().unwrap();
        assert_eq!(e.user_id, "s1");
        assert_eq!(e.session_id.as_deref(), Some("1"));
        assert_eq!(e.product_id.as_deref(), Some("81766"));
        assert_eq!(e.event_type, EventType::View);
        // eventdate midnight + timeframe
        let midnight = Timestamp::parse_rfc3339("2016-05-09T00:00:00Z").unwrap().0;
        assert_eq!(e.ts, Timestamp(midnight + 526_309));

        let na = rows
            .iter()
            .filter(|r| r.raw.split(|b| *b == b';').nth(1) == Some(b"NA".as_slice()))
            .count();
        assert_eq!(na, 7_681 + 135, "NA views + NA purchases of the sample");
        for r in &rows {
            let e = r.event.as_ref().unwrap();
            let fields: Vec<&[u8]> = r.raw.split(|b| *b == b';').collect();
            if fields[1] == b"NA" {
                assert_eq!(e.user_id, format!("s{}", e.session_id.as_ref().unwrap()));
            } else {
                assert_eq!(e.user_id.as_bytes(), fields[1]);
            }
            // Every event lies on its stated calendar date.
            let date = if e.event_type == EventType::View {
                fields[4]
            } else {
                fields[3]
            };
            let day = e.ts.to_datetime().format("%Y-%m-%d").to_string();
            assert_eq!(day.as_bytes(), date, "{}", e.event_id);
        }
    }

    #[test]
    fn a_session_over_midnight_keeps_its_order() {
        // Session 629 starts late on 2016-03-20 and runs into 2016-03-21.
        let rows = load_dataset(Dataset::Diginetica, &dir()).unwrap();
        let mut s: Vec<(i64, i64)> = rows
            .iter()
            .filter_map(|r| Some((r, r.event.as_ref().ok()?)))
            .filter(|(_, e)| {
                e.session_id.as_deref() == Some("629") && e.event_type == EventType::View
            })
            .map(|(r, e)| {
                let raw = std::str::from_utf8(&r.raw).unwrap();
                (
                    raw.split(';').nth(3).unwrap().parse::<i64>().unwrap(),
                    e.ts.0,
                )
            })
            .collect();
        assert_eq!(s.len(), 17);
        s.sort();
        // Ordered by timeframe, the times are ordered too, and spaced exactly as the timeframes.
        for w in s.windows(2) {
            assert_eq!(w[1].1 - w[0].1, w[1].0 - w[0].0);
        }
    }

    #[test]
    fn malformed_rows_are_unmappable_and_purchases_outside_the_sample_are_left_out() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join(VIEWS_FILES[0]),
            "session_id;user_id;item_id;timeframe;eventdate\n\
             1;NA;10;0;2016-05-09\n\
             1;NA;11;x;2016-05-09\n\
             2;7;12;5;2016-05-32\n\
             2;7;12\n\
             2;7;13;9;2016-05-10\n",
        )
        .unwrap();
        std::fs::write(
            tmp.path().join(PURCHASES_FILE),
            "sessionId;userId;timeframe;eventdate;ordernumber;itemId\n\
             1;NA;100;2016-05-09;1;10\n\
             3;NA;100;2016-05-09;2;10\n\
             2;7;-5;2016-05-10;3;13\n",
        )
        .unwrap();
        std::fs::write(
            tmp.path().join(CATEGORIES_FILE),
            "itemId;categoryId\n10;5\n13;6\n",
        )
        .unwrap();
        let rows = load_dataset(Dataset::Diginetica, tmp.path()).unwrap();
        assert_eq!(rows.len(), 7, "5 views + 2 purchases of sessions 1 and 2");
        let errs: Vec<String> = rows
            .iter()
            .filter_map(|r| r.event.as_ref().err().map(ToString::to_string))
            .collect();
        assert_eq!(
            errs,
            [
                "unmappable source row: timeframe: `x` is not a number",
                "unmappable source row: eventdate: `2016-05-32` is not a YYYY-MM-DD date",
                "unmappable source row: row: expected 5 columns, found 3",
                "unmappable source row: timeframe: `-5` is not a number",
            ]
        );
        let ok: Vec<&Event> = rows.iter().filter_map(|r| r.event.as_ref().ok()).collect();
        assert_eq!(ok[0].category.as_deref(), Some("5"));
        assert_eq!(
            ok.iter()
                .filter(|e| e.event_type == EventType::Purchase)
                .count(),
            1
        );
        let rows_seen: Vec<u64> = rows.iter().map(|r| r.row).collect();
        assert_eq!(rows_seen, [1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn a_views_file_alone_loads_without_purchases() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("views.csv");
        std::fs::write(
            &f,
            "sessionId;userId;itemId;timeframe;eventdate\n1;NA;10;0;2016-05-09\n",
        )
        .unwrap();
        let rows = load_dataset(Dataset::Diginetica, &f).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].event.as_ref().unwrap().category, None);
    }
}
