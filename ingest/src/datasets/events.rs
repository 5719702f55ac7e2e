//! Bring your own log: any event log in the event contract, one JSON event per line
//! (`.jsonl`, or `.jsonl.gz`).
//!
//! ```text
//!  line ─► decode::decode (the stream's own decoder and validation) ─► Event
//!                                                                   └─ Err ─► dead letters
//! ```

use std::path::Path;

use super::{Dataset, LoadedRow, read_input, resolve};
use crate::error::IngestError;

pub(super) const DEFAULT_FILE: &str = "events.jsonl";

pub(super) fn load(path: &Path) -> Result<Vec<LoadedRow>, IngestError> {
    let file = resolve(Dataset::Events, path, &[DEFAULT_FILE])?;
    let data = read_input(&file)?;
    let mut out = Vec::new();
    let (mut start, mut line_no, mut row) = (0usize, 0u64, 0u64);
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
        row += 1;
        let event = crate::decode::decode(&line);
        out.push(LoadedRow {
            row,
            line: line_no,
            raw: line,
            event,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn reads_plain_and_gzipped_json_lines_and_keeps_bad_lines_as_errors() {
        let dir = tempfile::tempdir().unwrap();
        let body = concat!(
            r#"{"event_id":"e1","ts":"2019-10-01T03:00:00Z","user_id":"u1","type":"view","product_id":"p1","category":"c"}"#,
            "\n\n",
            "not json\n",
            r#"{"event_id":"e2","ts":1569899000000,"user_id":"u1","type":"add_to_cart","product_id":"p2"}"#,
            "\n"
        );
        let plain = dir.path().join("log.jsonl");
        std::fs::write(&plain, body).unwrap();
        let gz = dir.path().join("log.jsonl.gz");
        let mut enc = flate2::write::GzEncoder::new(
            std::fs::File::create(&gz).unwrap(),
            flate2::Compression::fast(),
        );
        enc.write_all(body.as_bytes()).unwrap();
        enc.finish().unwrap();
        for f in [&plain, &gz] {
            let rows = super::super::load(Dataset::Events, f).unwrap();
            assert_eq!(rows.len(), 3, "{}", f.display());
            assert_eq!(
                rows[0].event.as_ref().unwrap().product_id.as_deref(),
                Some("p1")
            );
            assert!(rows[1].event.is_err());
            assert_eq!((rows[1].row, rows[1].line), (2, 3));
            assert_eq!(rows[2].event.as_ref().unwrap().user_id, "u1");
        }
        assert!("events".parse::<Dataset>().unwrap() == Dataset::Events);
        assert!(!Dataset::ALL.contains(&Dataset::Events));
    }
}
