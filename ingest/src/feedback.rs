//! Joined feedback: the labelled impressions the shard processor derives from served lists
//! (`recommendation` events) and the clicks, carts and purchases that name them. This
//! module owns the record and its object layout, the contract between the processor (the
//! one writer, per shard) and the online learners of every server (the readers).
//!
//! ```text
//!  recommendation event ─┐  (same user ⇒ same shard, in order)
//!  click / view / add_to_cart / purchase {recommendation_id, product_id}
//!                        └─► processor join ─► FeedbackRow per labelled impression
//!      at each checkpoint, beside the archive roll:
//!      feedback/<shard>/<last sequence number>.jsonl   (JSON lines, one row per line)
//!                        └─► every server's online learner (poll, apply each object once)
//! ```
//!
//! Object names are fixed by the shard and the checkpoint's end position, and the rows
//! are a pure function of the records, so a replay after a crash rewrites the same object
//! with the same rows (effectively once, like the archive).

use bytes::Bytes;
use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::error::IngestError;
use crate::event::Timestamp;
use crate::record::{SeqNo, ShardId};

/// Prefix of every feedback object.
pub const FEEDBACK_PREFIX: &str = "feedback/";

/// One impression of a served list, labelled by what the shopper did with the list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackRow {
    /// The served list (its `recommendation` event).
    pub recommendation_id: CompactString,
    /// The shopper the list was served to (and who engaged with it).
    pub user_id: CompactString,
    /// The product shown.
    pub product_id: CompactString,
    /// Its 1-based position in the list.
    pub position: u32,
    /// The score it was served with.
    pub score: f64,
    /// `true`: the shopper engaged with it (clicked, carted, bought, viewed it from the
    /// list); `false`: it was shown in a list the shopper engaged with, and ignored.
    pub engaged: bool,
    /// The type of the event that produced the label (`click`, `add_to_cart`, …).
    #[serde(rename = "type")]
    pub event_type: CompactString,
    /// The model version that ranked the list (none: no model ranked it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<CompactString>,
    /// When the list was served (event time of the `recommendation` event).
    pub served_ts: Timestamp,
    /// When the labelling event happened.
    pub ts: Timestamp,
    /// The feature row the item was ranked with (empty when no model ranked it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<f32>,
}

/// The object holding the rows joined on `shard` up to and including `end`.
pub fn feedback_key(shard: &ShardId, end: &SeqNo) -> String {
    format!("{FEEDBACK_PREFIX}{}/{end}.jsonl", shard.file_safe())
}

/// The (shard, end position) a feedback object's key names, or `None` for a key that is
/// not one.
pub fn parse_feedback_key(key: &str) -> Option<(String, SeqNo)> {
    let rest = key.strip_prefix(FEEDBACK_PREFIX)?;
    let (shard, file) = rest.rsplit_once('/')?;
    let seq = SeqNo::parse(file.strip_suffix(".jsonl")?)?;
    (!shard.is_empty()).then(|| (shard.to_string(), seq))
}

/// Encodes rows as JSON lines.
pub fn encode_feedback(rows: &[FeedbackRow]) -> Bytes {
    let mut out = Vec::with_capacity(rows.len() * 512);
    for r in rows {
        serde_json::to_writer(&mut out, r).expect("a FeedbackRow always serialises");
        out.push(b'\n');
    }
    Bytes::from(out)
}

/// Decodes a feedback object; a line that is not a row is an error naming its number.
pub fn decode_feedback(bytes: &[u8]) -> Result<Vec<FeedbackRow>, IngestError> {
    bytes
        .split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .map(|(i, line)| {
            serde_json::from_slice(line).map_err(|e| {
                IngestError::ObjectStore(format!("feedback object, line {}: {e}", i + 1))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_shard_and_position_and_rows_round_trip() {
        let shard = ShardId::new("shardId-000000000001");
        let key = feedback_key(&shard, &SeqNo::from_u64(42));
        assert_eq!(key, "feedback/shardId-000000000001/42.jsonl");
        assert_eq!(
            parse_feedback_key(&key),
            Some(("shardId-000000000001".into(), SeqNo::from_u64(42)))
        );
        assert_eq!(parse_feedback_key("feedback/x/notanumber.jsonl"), None);
        assert_eq!(parse_feedback_key("events/x/1.jsonl"), None);
        let row = FeedbackRow {
            recommendation_id: "r".into(),
            user_id: "u".into(),
            product_id: "p".into(),
            position: 2,
            score: 0.25,
            engaged: true,
            event_type: "click".into(),
            model_version: Some("v1".into()),
            served_ts: Timestamp(1),
            ts: Timestamp(2),
            features: vec![1.5, -2.0],
        };
        let rows = vec![
            row.clone(),
            FeedbackRow {
                engaged: false,
                features: vec![],
                ..row
            },
        ];
        assert_eq!(decode_feedback(&encode_feedback(&rows)).unwrap(), rows);
        assert!(decode_feedback(b"{\"nope\":1}\n").is_err());
    }
}
