//! Loaders that map the public e-commerce datasets in `shared/data` onto [`Event`]s.
//!
//! ```text
//!  REES46 csv ──────────────────────┐
//!  Diginetica views + purchases ────┤   load(dataset, path)       ┌─ Ok(Event)  ──► replay ─► decode ─► features
//!  YooChoose RSC15 tsv (per split) ─┼─► file | dir | .gz ─► row ─┤
//!  OTTO jsonl ──────────────────────┘                             └─ Err(Unmappable("<column>: <problem>")) ─► dead letters
//! ```
//!
//! This module owns the mapping from each dataset's columns to the event model, the
//! deterministic event ids (`<dataset>-<row>`), and the rule that a row is never dropped:
//! a row that cannot be mapped (bad number, bad time, wrong column count) becomes a
//! [`LoadedRow`] whose `event` is `Err(DecodeError::Unmappable(..))`, and a mapped event
//! that fails [`validate`](crate::decode::validate) keeps that validation error. The
//! replay source ([`crate::source::file`]) turns both into dead letters.
//!
//! Loading is blocking I/O plus parsing of the whole file into memory (the samples are
//! 17k–100k rows and load in milliseconds); call it from `spawn_blocking` inside a runtime.
//! `.gz` files are decompressed transparently.

mod diginetica;
mod events;
mod mapped;
mod otto;
mod rees46;
mod yoochoose;

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::decode::DecodeError;
use crate::error::IngestError;
use crate::event::Event;
use crate::record::ShardId;

pub use mapped::{CsvMapping, load_csv, parse_ts};
pub use yoochoose::YooChooseSplit;

/// One of the public datasets recstream can replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dataset {
    /// REES46 / Open CDP "eCommerce behavior data from multi category store" (CSV).
    Rees46,
    /// Diginetica, CIKM Cup 2016: item views, purchases and product categories (`;` CSV).
    Diginetica,
    /// YooChoose, RecSys Challenge 2015: clicks (session-rec TSV, split into train/test).
    YooChoose,
    /// OTTO, Kaggle 2022: sessions of clicks, carts and orders (JSON lines).
    Otto,
    /// Your own log: one event per line in the event contract (JSON lines, `.gz` too).
    /// Not in [`Dataset::ALL`] (the bundled public datasets).
    Events,
}

impl Dataset {
    /// Every supported dataset (for commands and examples that run over all of them).
    pub const ALL: [Dataset; 4] = [
        Dataset::Rees46,
        Dataset::Diginetica,
        Dataset::YooChoose,
        Dataset::Otto,
    ];

    /// The dataset's directory in the layout of `shared/data` (`--data-dir`).
    pub fn dir(self) -> &'static str {
        match self {
            Dataset::Rees46 => "rees46_multicat",
            Dataset::Diginetica => "diginetica",
            Dataset::YooChoose => "yoochoose_rsc15",
            Dataset::Otto => "otto_sample",
            Dataset::Events => "events",
        }
    }

    /// The name used on the command line, in shard ids and in event ids.
    pub fn name(self) -> &'static str {
        match self {
            Dataset::Rees46 => "rees46",
            Dataset::Diginetica => "diginetica",
            Dataset::YooChoose => "yoochoose",
            Dataset::Otto => "otto",
            Dataset::Events => "events",
        }
    }

    /// The file looked for when `load` is given a directory (a `.gz` variant is accepted too).
    /// Diginetica also reads `product-categories.csv` and `train-purchases.csv` beside it.
    pub fn default_file(self) -> &'static str {
        match self {
            Dataset::Rees46 => rees46::DEFAULT_FILE,
            Dataset::Diginetica => diginetica::VIEWS_FILES[0],
            Dataset::YooChoose => YooChooseSplit::TrainFull.file_name(),
            Dataset::Otto => otto::DEFAULT_FILE,
            Dataset::Events => events::DEFAULT_FILE,
        }
    }

    /// The replay shard of this dataset: `file:<name>`.
    pub fn shard_id(self) -> ShardId {
        ShardId::new(&format!("file:{}", self.name()))
    }
}

impl fmt::Display for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dataset {
    type Err = IngestError;

    /// Accepts the names `rees46`, `diginetica`, `yoochoose`, `otto` (any case).
    fn from_str(s: &str) -> Result<Dataset, IngestError> {
        Dataset::ALL
            .into_iter()
            .chain([Dataset::Events])
            .find(|d| d.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                IngestError::Config(format!(
                    "unknown dataset `{s}` (expected rees46, diginetica, yoochoose, otto or events)"
                ))
            })
    }
}

/// One row of a dataset, mapped or not.
#[derive(Debug, Clone)]
pub struct LoadedRow {
    /// 1-based position in the loaded sequence, strictly increasing: the replay sequence
    /// number. For REES46 and YooChoose it is the row number in the file (after the header);
    /// Diginetica is renumbered after merging views and purchases by time; OTTO counts
    /// events across the whole file.
    pub row: u64,
    /// 1-based row number within the source file (after the header; for OTTO the line).
    pub line: u64,
    /// The original line, without its line terminator (for an OTTO event: a one-event
    /// OTTO line, `{"session":S,"events":[<the event as read>]}`).
    pub raw: Bytes,
    /// The event, or why the row does not map onto one.
    pub event: Result<Event, DecodeError>,
}

/// Loads a dataset from a file or a directory (standard file names, see
/// [`Dataset::default_file`]); `.gz` files are decompressed transparently.
pub fn load(dataset: Dataset, path: &Path) -> Result<Vec<LoadedRow>, IngestError> {
    match dataset {
        Dataset::Rees46 => rees46::load(path),
        Dataset::Diginetica => diginetica::load(path),
        Dataset::YooChoose => yoochoose::load(path, None),
        Dataset::Otto => otto::load(path),
        Dataset::Events => events::load(path),
    }
}

/// Loads one YooChoose split: `path` is the dataset directory (the split's standard file
/// name is used) or the split's file itself. Event ids are `yoochoose-<row>` for
/// `train_full` (as [`load`] gives) and `yoochoose-<split>-<row>` for the others, so
/// that train and test events never share an id.
pub fn load_yoochoose_split(
    path: &Path,
    split: YooChooseSplit,
) -> Result<Vec<LoadedRow>, IngestError> {
    yoochoose::load(path, Some(split))
}

/// Orders rows by event time (stable: ties keep their order) and renumbers `row` from 1.
/// A row without an event sorts with the row before it. YooChoose and OTTO files are
/// ordered by session; this gives a replay in event-time order.
pub fn sort_by_time(rows: Vec<LoadedRow>) -> Vec<LoadedRow> {
    let mut last = i64::MIN;
    let keyed = rows
        .into_iter()
        .map(|r| {
            if let Ok(e) = &r.event {
                last = e.ts.0;
            }
            (last, r)
        })
        .collect();
    sort_keyed(keyed)
}

/// Stable sort by the key, then renumbering.
fn sort_keyed(mut keyed: Vec<(i64, LoadedRow)>) -> Vec<LoadedRow> {
    keyed.sort_by_key(|(k, _)| *k);
    keyed
        .into_iter()
        .zip(1u64..)
        .map(|((_, mut r), row)| {
            r.row = row;
            r
        })
        .collect()
}

// ---- helpers shared by the loaders ---------------------------------------------------

/// `DecodeError::Unmappable("<column>: <problem>")`.
pub(crate) fn unmappable(column: &str, problem: impl fmt::Display) -> DecodeError {
    DecodeError::Unmappable(format!("{column}: {problem}"))
}

fn dataset_error(dataset: Dataset, message: impl Into<String>) -> IngestError {
    IngestError::Dataset {
        dataset: dataset.name().to_string(),
        message: message.into(),
    }
}

/// `dir/name` or `dir/name.gz`, the first of `names` that exists.
fn find_in_dir(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    names.iter().find_map(|n| {
        let plain = dir.join(n);
        let gz = dir.join(format!("{n}.gz"));
        [plain, gz].into_iter().find(|p| p.is_file())
    })
}

/// The file to read: `path` itself, or the first of `names` inside it when it is a directory.
fn resolve(dataset: Dataset, path: &Path, names: &[&str]) -> Result<PathBuf, IngestError> {
    if path.is_dir() {
        find_in_dir(path, names).ok_or_else(|| {
            dataset_error(
                dataset,
                format!("{} contains none of {}", path.display(), names.join(", ")),
            )
        })
    } else {
        Ok(path.to_path_buf())
    }
}

/// Reads a whole file, decompressing it when its name ends in `.gz`.
fn read_input(path: &Path) -> Result<Bytes, IngestError> {
    let raw = std::fs::read(path).map_err(|e| IngestError::io(path.display().to_string(), e))?;
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"))
    {
        let mut out = Vec::with_capacity(raw.len() * 8);
        flate2::read::MultiGzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| IngestError::io(path.display().to_string(), e))?;
        Ok(Bytes::from(out))
    } else {
        Ok(Bytes::from(raw))
    }
}

fn trim_eol(mut b: Bytes) -> Bytes {
    while let [.., b'\r' | b'\n'] = b[..] {
        b.truncate(b.len() - 1);
    }
    while let [b'\r' | b'\n', ..] = b[..] {
        b = b.slice(1..);
    }
    b
}

/// Header names compared without case, underscores, blanks or a byte-order mark, so
/// `session_id`, `sessionId` and `SessionId` are the same column.
fn normalise_header(h: &str) -> String {
    h.trim_start_matches('\u{feff}')
        .chars()
        .filter(|c| *c != '_' && !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

/// A CSV (or TSV) file read into memory, row by row, keeping each row's original line.
struct CsvRows {
    dataset: Dataset,
    file: String,
    data: Bytes,
    reader: csv::Reader<std::io::Cursor<Bytes>>,
    header: Vec<String>,
    record: csv::ByteRecord,
    line: u64,
}

/// One row of a [`CsvRows`]; borrows the reader's record buffer.
struct CsvRow<'a> {
    line: u64,
    raw: Bytes,
    record: &'a csv::ByteRecord,
    width: usize,
}

impl CsvRows {
    fn open(dataset: Dataset, path: &Path, delimiter: u8) -> Result<CsvRows, IngestError> {
        let data = read_input(path)?;
        CsvRows::new(dataset, path.display().to_string(), data, delimiter)
    }

    fn new(
        dataset: Dataset,
        file: String,
        data: Bytes,
        delimiter: u8,
    ) -> Result<CsvRows, IngestError> {
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .has_headers(true)
            .flexible(true)
            .from_reader(std::io::Cursor::new(data.clone()));
        let header = reader
            .byte_headers()
            .map_err(|e| dataset_error(dataset, format!("{file}: header: {e}")))?
            .iter()
            .map(|h| normalise_header(&String::from_utf8_lossy(h)))
            .collect();
        Ok(CsvRows {
            dataset,
            file,
            data,
            reader,
            header,
            record: csv::ByteRecord::new(),
            line: 0,
        })
    }

    /// The index of each named column (names as [`normalise_header`] writes them).
    fn columns<const N: usize>(&self, names: [&str; N]) -> Result<[usize; N], IngestError> {
        let mut out = [0; N];
        for (slot, name) in out.iter_mut().zip(names) {
            *slot = self.header.iter().position(|h| h == name).ok_or_else(|| {
                dataset_error(
                    self.dataset,
                    format!(
                        "{}: no `{name}` column in the header ({})",
                        self.file,
                        self.header.join(",")
                    ),
                )
            })?;
        }
        Ok(out)
    }

    fn next_row(&mut self) -> Result<Option<CsvRow<'_>>, IngestError> {
        let before = self.reader.position().byte();
        let more = self
            .reader
            .read_byte_record(&mut self.record)
            .map_err(|e| dataset_error(self.dataset, format!("{}: {e}", self.file)))?;
        if !more {
            return Ok(None);
        }
        self.line += 1;
        let start = self.record.position().map_or(before, |p| p.byte());
        let end = self.reader.position().byte();
        let raw = match (usize::try_from(start), usize::try_from(end)) {
            (Ok(s), Ok(e)) if s <= e && e <= self.data.len() => trim_eol(self.data.slice(s..e)),
            // Positions are always inside the buffer; rebuild the line if they ever are not.
            _ => Bytes::from(self.record.iter().collect::<Vec<_>>().join(&b',')),
        };
        Ok(Some(CsvRow {
            line: self.line,
            raw,
            record: &self.record,
            width: self.header.len(),
        }))
    }
}

impl CsvRow<'_> {
    /// A row must have exactly as many fields as the header.
    fn check_width(&self) -> Result<(), DecodeError> {
        if self.record.len() == self.width {
            Ok(())
        } else {
            Err(unmappable(
                "row",
                format!(
                    "expected {} columns, found {}",
                    self.width,
                    self.record.len()
                ),
            ))
        }
    }

    /// Field `idx` as text (after [`check_width`](Self::check_width)).
    fn str(&self, idx: usize, column: &str) -> Result<&str, DecodeError> {
        let bytes = self
            .record
            .get(idx)
            .ok_or_else(|| unmappable(column, "missing"))?;
        std::str::from_utf8(bytes).map_err(|_| unmappable(column, "not valid UTF-8"))
    }
}

/// A non-empty string of ASCII digits (numeric ids).
fn digits<'a>(s: &'a str, column: &str) -> Result<&'a str, DecodeError> {
    if s.is_empty() {
        Err(unmappable(column, "empty"))
    } else if s.len() > 40 || !s.bytes().all(|b| b.is_ascii_digit()) {
        Err(unmappable(
            column,
            format_args!("`{}` is not a number", clip(s)),
        ))
    } else {
        Ok(s)
    }
}

fn parse_i64(s: &str, column: &str) -> Result<i64, DecodeError> {
    digits(s, column)?
        .parse()
        .map_err(|_| unmappable(column, format_args!("`{}` is out of range", clip(s))))
}

/// At most 40 characters of untrusted text for an error message.
fn clip(s: &str) -> &str {
    match s.char_indices().nth(40) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Parses a plain decimal number (`35.79`, `-1`, `1396437466.94`) exactly, scaled by
/// 10^`scale`. Fraction digits beyond `scale` are rounded half away from zero when
/// `round`, otherwise they must be zeros. No floats are involved.
fn parse_scaled(s: &str, scale: u32, round: bool) -> Result<i64, String> {
    let bad = || format!("`{}` is not a decimal number", clip(s));
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !all_digits(int) || !all_digits(frac) {
        return Err(bad());
    }
    let range = || format!("`{}` is out of range", clip(s));
    let mut v: i64 = 0;
    for b in int.bytes() {
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(i64::from(b - b'0')))
            .ok_or_else(range)?;
    }
    let (kept, rest) = frac.split_at(frac.len().min(scale as usize));
    for i in 0..scale as usize {
        let d = kept.as_bytes().get(i).map_or(0, |b| i64::from(b - b'0'));
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(d))
            .ok_or_else(range)?;
    }
    if round {
        if rest.as_bytes().first().is_some_and(|b| *b >= b'5') {
            v = v.checked_add(1).ok_or_else(range)?;
        }
    } else if rest.bytes().any(|b| b != b'0') {
        return Err(format!(
            "`{}` has more than {scale} decimal places",
            clip(s)
        ));
    }
    Ok(if neg { -v } else { v })
}

/// Midnight UTC of a `YYYY-MM-DD` date, in epoch milliseconds.
fn date_midnight_ms(s: &str) -> Result<i64, String> {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map(|d| {
            d.and_time(chrono::NaiveTime::MIN)
                .and_utc()
                .timestamp_millis()
        })
        .map_err(|_| format!("`{}` is not a YYYY-MM-DD date", clip(s)))
}

/// Where the real datasets live for the tests (`shared/data` beside the checkout, or
/// `RECSTREAM_DATA_DIR`). A missing directory fails the tests; they are never skipped.
#[cfg(test)]
pub(crate) fn test_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("RECSTREAM_DATA_DIR") {
        return PathBuf::from(d);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        manifest.join("../../shared/data"),
        manifest.join("../shared/data"),
        PathBuf::from("/work/shared/data"),
    ];
    let found = candidates.iter().find(|p| p.is_dir()).cloned();
    found.unwrap_or_else(|| {
        panic!("the real datasets are missing: set RECSTREAM_DATA_DIR (looked in {candidates:?})")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn dataset_names_round_trip() {
        for d in Dataset::ALL {
            assert_eq!(d.to_string().parse::<Dataset>().unwrap(), d);
            assert_eq!(
                serde_json::to_string(&d).unwrap(),
                format!("\"{}\"", d.name())
            );
        }
        assert_eq!("YooChoose".parse::<Dataset>().unwrap(), Dataset::YooChoose);
        assert!(matches!(
            "movielens".parse::<Dataset>(),
            Err(IngestError::Config(_))
        ));
        assert_eq!(Dataset::Rees46.shard_id().as_str(), "file:rees46");
    }

    #[test]
    fn parse_scaled_is_exact() {
        assert_eq!(parse_scaled("35.79", 2, false), Ok(3579));
        assert_eq!(parse_scaled("35.7", 2, false), Ok(3570));
        assert_eq!(parse_scaled("35", 2, false), Ok(3500));
        assert_eq!(parse_scaled("0.01", 2, false), Ok(1));
        assert_eq!(parse_scaled("35.790", 2, false), Ok(3579));
        assert_eq!(parse_scaled("-1.5", 2, false), Ok(-150));
        assert!(parse_scaled("35.795", 2, false).is_err());
        assert_eq!(
            parse_scaled("1396437466.94", 3, true),
            Ok(1_396_437_466_940)
        );
        assert_eq!(
            parse_scaled("1396437466.9405", 3, true),
            Ok(1_396_437_466_941)
        );
        assert_eq!(
            parse_scaled("1396437466.9404", 3, true),
            Ok(1_396_437_466_940)
        );
        assert_eq!(parse_scaled("-0.0005", 3, true), Ok(-1));
        for bad in [
            "",
            ".",
            "-",
            "1e9",
            "1.2.3",
            "abc",
            "1,5",
            " 1",
            "99999999999999999999",
        ] {
            assert!(parse_scaled(bad, 2, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn trim_eol_strips_terminators_only() {
        assert_eq!(trim_eol(Bytes::from_static(b"a,b\r\n")), "a,b");
        assert_eq!(trim_eol(Bytes::from_static(b"\na,b")), "a,b");
        assert_eq!(trim_eol(Bytes::from_static(b"\r\n")), "");
    }

    #[test]
    fn csv_rows_keep_the_original_line_and_flag_the_width() {
        let data = Bytes::from_static(b"a,b\r\n1,2\r\n\r\n\"x,y\",3\r\n4\r\n5,6");
        let mut rows = CsvRows::new(Dataset::Rees46, "t".into(), data, b',').unwrap();
        let mut seen = Vec::new();
        while let Some(r) = rows.next_row().unwrap() {
            seen.push((r.line, r.raw.clone(), r.check_width().is_ok()));
        }
        let want: Vec<(u64, Bytes, bool)> = vec![
            (1, Bytes::from_static(b"1,2"), true),
            (2, Bytes::from_static(b"\"x,y\",3"), true),
            (3, Bytes::from_static(b"4"), false),
            (4, Bytes::from_static(b"5,6"), true),
        ];
        assert_eq!(seen, want);
        assert!(rows.columns(["a", "b"]).is_ok());
        assert!(matches!(
            rows.columns(["c"]),
            Err(IngestError::Dataset { .. })
        ));
    }

    #[test]
    fn gz_and_directories_resolve() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            resolve(Dataset::Otto, dir.path(), &["train.jsonl"]),
            Err(IngestError::Dataset { .. })
        ));
        let gz = dir.path().join("train.jsonl.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut enc, b"hello\n").unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
        let found = resolve(Dataset::Otto, dir.path(), &["train.jsonl"]).unwrap();
        assert_eq!(found, gz);
        assert_eq!(read_input(&found).unwrap(), "hello\n");
        assert!(matches!(
            read_input(&dir.path().join("missing.csv")),
            Err(IngestError::Io { .. })
        ));
    }

    #[test]
    fn sort_by_time_is_stable_and_renumbers() {
        use crate::event::{EventType, Timestamp};
        let row = |line: u64, ts: Option<i64>| LoadedRow {
            row: line,
            line,
            raw: Bytes::new(),
            event: ts
                .map(|t| Event::new(&format!("e{line}"), Timestamp(t), "u", EventType::Search))
                .ok_or_else(|| unmappable("row", "bad")),
        };
        let rows = vec![
            row(1, Some(30)),
            row(2, None),
            row(3, Some(10)),
            row(4, Some(30)),
            row(5, Some(20)),
        ];
        let sorted = sort_by_time(rows);
        let lines: Vec<u64> = sorted.iter().map(|r| r.line).collect();
        assert_eq!(lines, [3, 5, 1, 2, 4]);
        let rows: Vec<u64> = sorted.iter().map(|r| r.row).collect();
        assert_eq!(rows, [1, 2, 3, 4, 5]);
    }

    proptest! {
        /// The exact parser agrees with integer arithmetic on every two-decimal amount.
        #[test]
        fn parse_scaled_matches_integers(units in 0i64..1_000_000_000, cents in 0i64..100) {
            let s = format!("{units}.{cents:02}");
            prop_assert_eq!(parse_scaled(&s, 2, false), Ok(units * 100 + cents));
        }

        /// Arbitrary text never panics the number parser.
        #[test]
        fn parse_scaled_never_panics(s in "\\PC{0,30}") {
            let _ = parse_scaled(&s, 3, true);
        }
    }
}
