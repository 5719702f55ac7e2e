//! OTTO (Kaggle 2022): one session per JSON line, with its clicks, carts and orders.
//!
//! ```text
//!  {"session":0,"events":[{"aid":1517085,"ts":1659304800025,"type":"clicks"}, …]}
//!        │                    │            │                   └─ clicks|carts|orders ─► click|add_to_cart|purchase
//!        └─ user s0, session 0 └─ product  └─ ts (ms)
//! ```
//!
//! This file owns the OTTO mapping: one row per event, event id
//! `otto-<session>-<index>` (index 0-based within the session's `events`), quantity 1 for
//! carts and orders. A line that is not a session object becomes one unmappable row; an
//! event that does not map becomes an unmappable row of its own while the rest of its
//! session loads. Rows stay in file order (by session); [`super::sort_by_time`] gives
//! event-time order.

use std::path::Path;

use bytes::Bytes;
use compact_str::format_compact;
use serde::Deserialize;

use super::{LoadedRow, read_input, resolve, unmappable};
use crate::decode::{DecodeError, validate};
use crate::error::IngestError;
use crate::event::{Event, EventType, Timestamp};

use super::Dataset;

pub(super) const DEFAULT_FILE: &str = "train.jsonl";
const OTHER_FILES: &[&str] = &["test.jsonl"];

#[derive(Deserialize)]
struct Session {
    session: u64,
    events: Vec<serde_json::Value>,
}

pub(super) fn load(path: &Path) -> Result<Vec<LoadedRow>, IngestError> {
    let mut names = vec![DEFAULT_FILE];
    names.extend_from_slice(OTHER_FILES);
    let file = resolve(Dataset::Otto, path, &names)?;
    let data = read_input(&file)?;
    let mut out = Vec::with_capacity(data.len() / 50);
    let mut row = 0u64;
    let mut start = 0usize;
    let mut line_no = 0u64;
    while start < data.len() {
        let end = data[start..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(data.len(), |i| start + i);
        let line = super::trim_eol(data.slice(start..end));
        start = end + 1;
        line_no += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Session>(&line) {
            Ok(s) => {
                for (index, value) in s.events.iter().enumerate() {
                    row += 1;
                    out.push(LoadedRow {
                        row,
                        line: line_no,
                        raw: Bytes::from(format!(
                            r#"{{"session":{},"events":[{value}]}}"#,
                            s.session
                        )),
                        event: map_event(s.session, index, value),
                    });
                }
            }
            Err(e) => {
                row += 1;
                out.push(LoadedRow {
                    row,
                    line: line_no,
                    raw: line,
                    event: Err(unmappable("line", format_args!("not an OTTO session: {e}"))),
                });
            }
        }
    }
    Ok(out)
}

fn map_event(session: u64, index: usize, v: &serde_json::Value) -> Result<Event, DecodeError> {
    let column = |name: &str| format!("events[{index}].{name}");
    let aid = v
        .get("aid")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| unmappable(&column("aid"), "missing or not an unsigned integer"))?;
    let ts = v
        .get("ts")
        .and_then(serde_json::Value::as_i64)
        .ok_or_else(|| unmappable(&column("ts"), "missing or not an integer"))?;
    let event_type = match v.get("type").and_then(serde_json::Value::as_str) {
        Some("clicks") => EventType::Click,
        Some("carts") => EventType::AddToCart,
        Some("orders") => EventType::Purchase,
        Some("") | None => return Err(unmappable(&column("type"), "missing or empty")),
        Some(other) => EventType::Other(other.into()),
    };
    let mut e = Event::new(
        &format_compact!("otto-{session}-{index}"),
        Timestamp(ts),
        &format_compact!("s{session}"),
        event_type,
    )
    .with_product(&format_compact!("{aid}"), None)
    .with_session(&format_compact!("{session}"));
    if matches!(e.event_type, EventType::AddToCart | EventType::Purchase) {
        e.quantity = Some(1);
    }
    validate(&e)?;
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::{load as load_dataset, sort_by_time, test_data_dir};

    fn dir() -> std::path::PathBuf {
        test_data_dir().join("otto_sample")
    }

    #[test]
    fn loads_every_event_of_the_sample() {
        let rows = load_dataset(Dataset::Otto, &dir()).unwrap();
        assert_eq!(rows.len(), 862);
        let first = rows[0].event.as_ref().unwrap();
        let want = Event::new(
            "otto-0-0",
            Timestamp(1_659_304_800_025),
            "s0",
            EventType::Click,
        )
        .with_product("1517085", None)
        .with_session("0");
        assert_eq!(*first, want);
        assert_eq!(
            rows[0].raw,
            r#"{"session":0,"events":[{"aid":1517085,"ts":1659304800025,"type":"clicks"}]}"#
        );
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(r.row, i as u64 + 1);
            let e = r
                .event
                .as_ref()
                .unwrap_or_else(|e| panic!("row {}: {e}", r.row));
            *counts.entry(e.event_type.to_string()).or_default() += 1;
        }
        let want: std::collections::BTreeMap<String, usize> = [
            ("add_to_cart".to_string(), 52),
            ("click".to_string(), 800),
            ("purchase".to_string(), 10),
        ]
        .into();
        assert_eq!(counts, want);
        assert_eq!(rows.last().unwrap().line, 20);
        let sorted = sort_by_time(rows);
        assert!(
            sorted
                .windows(2)
                .all(|w| { w[0].event.as_ref().unwrap().ts <= w[1].event.as_ref().unwrap().ts })
        );
    }

    #[test]
    fn malformed_lines_and_events_are_unmappable() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join(DEFAULT_FILE),
            concat!(
                r#"{"session":7,"events":[{"aid":1,"ts":1659304800025,"type":"carts"},{"aid":"x","ts":1,"type":"clicks"},{"aid":2,"ts":1659304800026}]}"#,
                "\n\n",
                r#"{"session":8,"events":[{"aid":1,"ts":1659304800025,"type":"orders"}"#,
                "\r\n",
                r#"{"session":9,"events":[{"aid":1,"ts":16593048000,"type":"clicks"}]}"#,
                "\n"
            ),
        )
        .unwrap();
        let rows = load_dataset(Dataset::Otto, tmp.path()).unwrap();
        assert_eq!(rows.len(), 5);
        let e = rows[0].event.as_ref().unwrap();
        assert_eq!((e.event_id.as_str(), e.quantity), ("otto-7-0", Some(1)));
        assert_eq!(
            rows[1].event.as_ref().unwrap_err().to_string(),
            "unmappable source row: events[1].aid: missing or not an unsigned integer"
        );
        assert_eq!(
            rows[2].event.as_ref().unwrap_err().to_string(),
            "unmappable source row: events[2].type: missing or empty"
        );
        assert!(
            matches!(&rows[3].event, Err(DecodeError::Unmappable(m)) if m.starts_with("line: not an OTTO session"))
        );
        assert_eq!(rows[3].line, 3);
        assert!(rows[3].raw.ends_with(b"}"), "the line without its CR LF");
        // Seconds instead of milliseconds map, and the validator rejects the time.
        assert!(matches!(
            rows[4].event,
            Err(DecodeError::Invalid { field: "ts", .. })
        ));
    }
}
