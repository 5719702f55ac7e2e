//! Dead letters: records that could not be decoded, kept with the reason and their exact
//! bytes so they can be inspected, fixed and replayed. Never dropped.
//!
//! ```text
//!  RawRecord + DecodeError ─► DeadLetter (buffered) ─► JSON line ─► dead-letter/dt=…/<shard>-<first>-<last>.jsonl
//! ```
//!
//! One JSON object per line (see [`DeadLetterLine`]):
//!
//! ```json
//! {"reason":"field `ts`: …","kind":"invalid_ts","shard":"shardId-000000000000",
//!  "sequence_number":"4959…","sub_sequence_number":0,"partition_key":"u1",
//!  "arrival_ts":"2019-10-01T00:00:01.000Z","raw_len":57,"raw_truncated":false,
//!  "raw":"{\"event_id\":…}","raw_base64":"eyJldmVudF9pZCI6…"}
//! ```
//!
//! `raw_base64` is the exact payload; `raw` is a lossy UTF-8 rendering of at most
//! [`RAW_TEXT_MAX_BYTES`] bytes, for humans and `grep`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use compact_str::CompactString;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::decode::DecodeError;
use crate::error::IngestError;
use crate::event::Timestamp;
use crate::object_store::ObjectStore;
use crate::record::{RawRecord, SeqNo, ShardId};

/// At most this many bytes of the payload are rendered as text in `raw`.
pub const RAW_TEXT_MAX_BYTES: usize = 4 * 1024;

/// A rejected record waiting in the writer's buffer.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetter {
    pub shard: ShardId,
    pub seq: SeqNo,
    pub sub_seq: u32,
    pub partition_key: CompactString,
    pub arrival: Timestamp,
    pub reason: String,
    pub kind: &'static str,
    pub raw: Bytes,
}

impl DeadLetter {
    pub fn new(rec: &RawRecord, err: &DecodeError) -> DeadLetter {
        DeadLetter {
            shard: rec.shard.clone(),
            seq: rec.seq.clone(),
            sub_seq: rec.sub_seq,
            partition_key: rec.partition_key.clone(),
            arrival: rec.arrival,
            reason: err.to_string(),
            kind: err.kind(),
            raw: rec.data.clone(),
        }
    }

    pub fn to_line(&self) -> DeadLetterLine {
        let (raw, raw_truncated) = raw_text(&self.raw);
        DeadLetterLine {
            reason: self.reason.clone(),
            kind: self.kind.to_string(),
            shard: self.shard.to_string(),
            sequence_number: self.seq.to_string(),
            sub_sequence_number: self.sub_seq,
            partition_key: self.partition_key.to_string(),
            arrival_ts: self.arrival.to_string(),
            raw_len: self.raw.len(),
            raw_truncated,
            raw,
            raw_base64: BASE64.encode(&self.raw),
        }
    }
}

/// One line of a dead-letter object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterLine {
    /// Why the record was rejected ([`DecodeError`]'s message).
    pub reason: String,
    /// A short, bounded label ([`DecodeError::kind`]), e.g. `malformed`, `invalid_ts`.
    pub kind: String,
    /// The shard the record was read from ([`crate::ShardId`]'s string form).
    pub shard: String,
    /// Kinesis sequence number of the record (decimal digits; a line number for file replay).
    pub sequence_number: String,
    /// Position inside a KPL aggregate (0 for a plain record).
    pub sub_sequence_number: u32,
    /// The partition key the producer sent.
    pub partition_key: String,
    /// When the stream accepted the record, RFC 3339 UTC.
    pub arrival_ts: String,
    /// Length of the payload in bytes.
    pub raw_len: usize,
    /// Whether `raw` holds only the first [`RAW_TEXT_MAX_BYTES`] bytes.
    pub raw_truncated: bool,
    /// The payload as lossy UTF-8, truncated; for reading, not for replaying.
    pub raw: String,
    /// The exact payload, base64 (standard alphabet, padded).
    pub raw_base64: String,
}

impl DeadLetterLine {
    /// The exact bytes of the rejected record.
    pub fn raw_bytes(&self) -> Result<Vec<u8>, IngestError> {
        BASE64.decode(&self.raw_base64).map_err(|e| {
            IngestError::ObjectStore(format!("dead letter raw_base64 is not base64: {e}"))
        })
    }
}

/// Lossy UTF-8 of at most [`RAW_TEXT_MAX_BYTES`] bytes of `raw`, and whether it was cut.
fn raw_text(raw: &[u8]) -> (String, bool) {
    let truncated = raw.len() > RAW_TEXT_MAX_BYTES;
    let head = &raw[..raw.len().min(RAW_TEXT_MAX_BYTES)];
    let mut text = String::from_utf8_lossy(head).into_owned();
    // Replacement characters can make the text longer than the bytes it came from.
    if text.len() > RAW_TEXT_MAX_BYTES {
        let mut cut = RAW_TEXT_MAX_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    (text, truncated)
}

/// Encodes dead letters as JSON lines (each line ends with `\n`).
pub(crate) fn encode_lines(letters: &[&DeadLetter]) -> Result<Bytes, IngestError> {
    let mut out = Vec::with_capacity(letters.iter().map(|d| d.raw.len() * 2 + 256).sum());
    for d in letters {
        serde_json::to_writer(&mut out, &d.to_line())
            .map_err(|e| IngestError::ObjectStore(format!("dead letter encoding failed: {e}")))?;
        out.push(b'\n');
    }
    Ok(Bytes::from(out))
}

/// Parses a dead-letter object (blank lines are skipped).
pub fn parse_lines(body: &[u8]) -> Result<Vec<DeadLetterLine>, IngestError> {
    body.split(|b| *b == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_slice(line)
                .map_err(|e| IngestError::ObjectStore(format!("dead letter line {}: {e}", i + 1)))
        })
        .collect()
}

/// Reads every `.jsonl` dead-letter object whose key starts with `prefix`
/// (`dead-letter/` for all of them), in key order.
pub async fn read_dead_letters<S>(
    store: &S,
    prefix: &str,
) -> Result<Vec<DeadLetterLine>, IngestError>
where
    S: ObjectStore + ?Sized,
{
    let keys: Vec<String> = store
        .list(prefix)
        .await?
        .into_iter()
        .filter(|k| k.ends_with(".jsonl"))
        .collect();
    let parts: Vec<Vec<DeadLetterLine>> = futures::stream::iter(keys)
        .map(|key| async move {
            match store.get(&key).await? {
                Some(body) => {
                    parse_lines(&body).map_err(|e| IngestError::ObjectStore(format!("{key}: {e}")))
                }
                None => Ok(Vec::new()),
            }
        })
        .buffered(8)
        .try_collect()
        .await?;
    Ok(parts.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_text_is_bounded_and_lossy() {
        let (t, cut) = raw_text(b"{\"a\":1}");
        assert_eq!((t.as_str(), cut), ("{\"a\":1}", false));

        let invalid = vec![0xffu8; RAW_TEXT_MAX_BYTES * 2];
        let (t, cut) = raw_text(&invalid);
        assert!(cut);
        assert!(t.len() <= RAW_TEXT_MAX_BYTES);
        assert!(t.chars().all(|c| c == char::REPLACEMENT_CHARACTER));

        let (t, cut) = raw_text("é".repeat(RAW_TEXT_MAX_BYTES).as_bytes());
        assert!(cut && t.len() <= RAW_TEXT_MAX_BYTES && !t.is_empty());
    }

    #[test]
    fn lines_round_trip_with_exact_bytes() {
        let rec = RawRecord {
            shard: ShardId::new("shardId-000000000000"),
            seq: SeqNo::from_u64(12),
            sub_seq: 3,
            partition_key: "u1".into(),
            arrival: Timestamp(1_569_888_000_000),
            data: Bytes::from_static(b"\x00\xffnot json\n{"),
            rejected: None,
        };
        let err = crate::decode::decode(&rec.data).unwrap_err();
        let d = DeadLetter::new(&rec, &err);
        let body = encode_lines(&[&d, &d]).unwrap();
        assert_eq!(body.iter().filter(|b| **b == b'\n').count(), 2);
        let lines = parse_lines(&body).unwrap();
        assert_eq!(lines.len(), 2);
        let l = &lines[0];
        assert_eq!(l.kind, "malformed");
        assert_eq!(l.reason, err.to_string());
        assert_eq!(l.sequence_number, "12");
        assert_eq!(l.sub_sequence_number, 3);
        assert_eq!(l.arrival_ts, "2019-10-01T00:00:00.000Z");
        assert_eq!(l.raw_bytes().unwrap(), rec.data.to_vec());
        assert_eq!(l.raw_len, rec.data.len());
    }
}
