//! YooChoose, RecSys Challenge 2015: clicks, as session-rec prepares them (TSV).
//!
//! ```text
//!  SessionId  ItemId     Time (unix s, decimal)
//!  3          214716935  1396437466.94   ─► click { user s3, session 3, product 214716935, ts 1396437466940 }
//! ```
//!
//! This file owns the YooChoose mapping and its splits (`train_full`, `test`, `train_tr`,
//! `train_valid`: session-rec split by time, the test set is the last day). Clicks carry
//! no user, so the user is `s<SessionId>`. Time is rounded to the millisecond exactly from
//! its decimal text. Event ids are `yoochoose-<row>` for `train_full` and
//! `yoochoose-<split>-<row>` for the other files. Rows stay in file order (by session);
//! [`super::sort_by_time`] gives event-time order.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use compact_str::format_compact;

use super::{CsvRows, Dataset, LoadedRow, digits, parse_scaled, resolve, unmappable};
use crate::decode::{DecodeError, validate};
use crate::error::IngestError;
use crate::event::{Event, EventType, Timestamp};

/// One of session-rec's files of the YooChoose sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum YooChooseSplit {
    /// All training sessions (`train_tr` + `train_valid`); what [`super::load`] reads.
    TrainFull,
    /// The last day: the evaluation sessions.
    Test,
    /// Training part of `train_full` for validation runs.
    TrainTr,
    /// Validation part of `train_full`.
    TrainValid,
}

impl YooChooseSplit {
    /// Every split of the YooChoose files.
    pub const ALL: [YooChooseSplit; 4] = [
        YooChooseSplit::TrainFull,
        YooChooseSplit::Test,
        YooChooseSplit::TrainTr,
        YooChooseSplit::TrainValid,
    ];

    /// `train_full`, `test`, `train_tr`, `train_valid`.
    pub fn name(self) -> &'static str {
        match self {
            YooChooseSplit::TrainFull => "train_full",
            YooChooseSplit::Test => "test",
            YooChooseSplit::TrainTr => "train_tr",
            YooChooseSplit::TrainValid => "train_valid",
        }
    }

    /// The split's file in the dataset directory.
    pub fn file_name(self) -> &'static str {
        match self {
            YooChooseSplit::TrainFull => "yoochoose-clicks-100k_train_full.txt",
            YooChooseSplit::Test => "yoochoose-clicks-100k_test.txt",
            YooChooseSplit::TrainTr => "yoochoose-clicks-100k_train_tr.txt",
            YooChooseSplit::TrainValid => "yoochoose-clicks-100k_train_valid.txt",
        }
    }

    /// The split a session-rec file name ends with (`…_test.txt`, `…_train_full.txt.gz`, …).
    pub fn from_file_name(name: &str) -> Option<YooChooseSplit> {
        let stem = name.strip_suffix(".gz").unwrap_or(name);
        let stem = stem.strip_suffix(".txt").unwrap_or(stem);
        YooChooseSplit::ALL
            .into_iter()
            .find(|s| stem.ends_with(&format!("_{}", s.name())))
    }

    fn id_prefix(self) -> &'static str {
        match self {
            YooChooseSplit::TrainFull => "yoochoose",
            YooChooseSplit::Test => "yoochoose-test",
            YooChooseSplit::TrainTr => "yoochoose-train_tr",
            YooChooseSplit::TrainValid => "yoochoose-train_valid",
        }
    }
}

impl fmt::Display for YooChooseSplit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for YooChooseSplit {
    type Err = IngestError;

    fn from_str(s: &str) -> Result<YooChooseSplit, IngestError> {
        YooChooseSplit::ALL
            .into_iter()
            .find(|x| x.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                IngestError::Config(format!(
                    "unknown yoochoose split `{s}` (expected train_full, test, train_tr or train_valid)"
                ))
            })
    }
}

/// Loads `path` (a file, or the directory with `split`'s file, `train_full` by default).
/// Without an explicit split, a file's split is read from its name for the event ids.
pub(super) fn load(
    path: &Path,
    split: Option<YooChooseSplit>,
) -> Result<Vec<LoadedRow>, IngestError> {
    let dir_split = split.unwrap_or(YooChooseSplit::TrainFull);
    let file = resolve(Dataset::YooChoose, path, &[dir_split.file_name()])?;
    let split = split
        .or_else(|| {
            file.file_name()
                .and_then(|n| n.to_str())
                .and_then(YooChooseSplit::from_file_name)
        })
        .unwrap_or(YooChooseSplit::TrainFull);
    let prefix = split.id_prefix();
    let mut rows = CsvRows::open(Dataset::YooChoose, &file, b'\t')?;
    let c = rows.columns(["sessionid", "itemid", "time"])?;
    let mut out = Vec::with_capacity(rows.data.len() / 30);
    while let Some(r) = rows.next_row()? {
        let event = map_row(&r, &c, prefix);
        out.push(LoadedRow {
            row: r.line,
            line: r.line,
            raw: r.raw,
            event,
        });
    }
    Ok(out)
}

fn map_row(r: &super::CsvRow<'_>, c: &[usize; 3], prefix: &str) -> Result<Event, DecodeError> {
    r.check_width()?;
    let session = digits(r.str(c[0], "SessionId")?, "SessionId")?;
    let item = digits(r.str(c[1], "ItemId")?, "ItemId")?;
    let ts = parse_seconds(r.str(c[2], "Time")?).map_err(|e| unmappable("Time", e))?;
    let e = Event::new(
        &format_compact!("{prefix}-{}", r.line),
        Timestamp(ts),
        &format_compact!("s{session}"),
        EventType::Click,
    )
    .with_product(item, None)
    .with_session(session);
    validate(&e)?;
    Ok(e)
}

/// Unix seconds as decimal text to milliseconds, rounded half away from zero; exponent
/// notation (`1.3964e9`, as some exports write) goes through a float.
fn parse_seconds(s: &str) -> Result<i64, String> {
    if s.contains(['e', 'E']) {
        let v: f64 = s
            .parse()
            .map_err(|_| format!("`{}` is not a number", super::clip(s)))?;
        let ms = (v * 1000.0).round();
        if ms.is_finite() && ms.abs() < 9.0e15 {
            // In range (checked just above), so the cast is exact.
            return Ok(ms as i64);
        }
        return Err(format!("`{}` is out of range", super::clip(s)));
    }
    parse_scaled(s, 3, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::{
        load as load_dataset, load_yoochoose_split, sort_by_time, test_data_dir,
    };

    fn dir() -> std::path::PathBuf {
        test_data_dir().join("yoochoose_rsc15")
    }

    #[test]
    fn first_row_of_train_full_maps_exactly() {
        let rows = load_dataset(Dataset::YooChoose, &dir()).unwrap();
        assert_eq!(rows[0].raw, "3\t214716935\t1396437466.94");
        let want = Event::new(
            "yoochoose-1",
            Timestamp(1_396_437_466_940),
            "s3",
            EventType::Click,
        )
        .with_product("214716935", None)
        .with_session("3");
        assert_eq!(rows[0].event, Ok(want));
    }

    #[test]
    fn every_split_loads_with_counts_matching_the_files() {
        let mut ids = std::collections::HashSet::new();
        for split in YooChooseSplit::ALL {
            let file = dir().join(split.file_name());
            let lines = std::fs::read_to_string(&file).unwrap().lines().count() - 1;
            let rows = load_yoochoose_split(&dir(), split).unwrap();
            assert_eq!(rows.len(), lines, "{split}");
            for (i, r) in rows.iter().enumerate() {
                assert_eq!(r.row, i as u64 + 1);
                let e = r
                    .event
                    .as_ref()
                    .unwrap_or_else(|e| panic!("{split} row {}: {e}", r.row));
                assert_eq!(e.user_id, format!("s{}", e.session_id.as_ref().unwrap()));
                assert!(
                    ids.insert(e.event_id.clone()),
                    "duplicate id {}",
                    e.event_id
                );
            }
            // Loading the file itself names its split from the file name.
            let direct = load_dataset(Dataset::YooChoose, &file).unwrap();
            assert_eq!(direct[0].event, rows[0].event);
        }
        assert_eq!(
            load_yoochoose_split(&dir(), YooChooseSplit::Test).unwrap()[0]
                .event
                .as_ref()
                .unwrap()
                .event_id,
            "yoochoose-test-1"
        );
        // The whole sample is train_full + test. train_tr + train_valid is 485 clicks short
        // of train_full: session-rec drops validation clicks on items unseen in train_tr
        // (422) and the sessions that leaves shorter than two clicks.
        let n = |s| load_yoochoose_split(&dir(), s).unwrap().len();
        assert_eq!(
            n(YooChooseSplit::TrainFull) + n(YooChooseSplit::Test),
            83_846
        );
        assert_eq!(
            n(YooChooseSplit::TrainFull)
                - n(YooChooseSplit::TrainTr)
                - n(YooChooseSplit::TrainValid),
            485
        );
    }

    #[test]
    fn test_split_is_after_training_in_time() {
        let max_train = load_yoochoose_split(&dir(), YooChooseSplit::TrainFull)
            .unwrap()
            .iter()
            .map(|r| r.event.as_ref().unwrap().ts)
            .max()
            .unwrap();
        let test = sort_by_time(load_yoochoose_split(&dir(), YooChooseSplit::Test).unwrap());
        let min_test = test[0].event.as_ref().unwrap().ts;
        assert!(max_train <= min_test, "{max_train} > {min_test}");
    }

    #[test]
    fn malformed_rows_are_unmappable() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("x_test.txt");
        std::fs::write(
            &f,
            "SessionId\tItemId\tTime\n1\t2\t1396860669.2775\n1\t2\tsoon\n1\t2\n1\tx\t1.0\n1\t2\t1.3968606692775e9\n",
        )
        .unwrap();
        let rows = load_dataset(Dataset::YooChoose, &f).unwrap();
        assert_eq!(rows.len(), 5);
        let e = rows[0].event.as_ref().unwrap();
        assert_eq!(
            (e.event_id.as_str(), e.ts),
            ("yoochoose-test-1", Timestamp(1_396_860_669_278))
        );
        let errs: Vec<String> = rows[1..4]
            .iter()
            .map(|r| r.event.as_ref().unwrap_err().to_string())
            .collect();
        assert_eq!(
            errs,
            [
                "unmappable source row: Time: `soon` is not a decimal number",
                "unmappable source row: row: expected 3 columns, found 2",
                "unmappable source row: ItemId: `x` is not a number",
            ]
        );
        assert_eq!(
            rows[4].event.as_ref().unwrap().ts,
            Timestamp(1_396_860_669_278)
        );
    }

    #[test]
    fn split_names_parse() {
        for s in YooChooseSplit::ALL {
            assert_eq!(s.name().parse::<YooChooseSplit>().unwrap(), s);
            assert_eq!(YooChooseSplit::from_file_name(s.file_name()), Some(s));
        }
        assert_eq!(
            YooChooseSplit::from_file_name("yoochoose-clicks-1_64_test.txt.gz"),
            Some(YooChooseSplit::Test)
        );
        assert_eq!(YooChooseSplit::from_file_name("clicks.tsv"), None);
    }
}
