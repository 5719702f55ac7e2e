//! User segments for marketing: k-means on behaviour, with readable profiles.
//!
//! ```text
//!  UserFeatures (replay or FeatureStore::scan_users)
//!    ─► behaviour row: activity, spend, cart / purchase rates, breadth, recency, tenure,
//!                      shares of the top categories
//!    ─► standardise ─► KMeans (linfa-clustering, fixed seed; fitted on ≤ 50k sampled users,
//!                      every user assigned to the nearest centroid)
//!    ─► segments ordered by value (spend, then activity): ids seg-0, seg-1, …
//!    ─► profiles (size, top categories, mean activity, mean spend, rates, a label)
//!    ─► export: segments.{csv,parquet}, segment_members.{csv,parquet}
//! ```

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use bytes::Bytes;
use linfa::prelude::*;
use linfa_clustering::KMeans;
use ndarray::Array2;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256Plus;
use recstream_features::UserFeatures;
use recstream_ingest::ObjectStore;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// Hyper-parameters of the user segmentation (k-means over activity, spend, recency
/// and category shares).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SegmentParams {
    /// Number of segments (fewer when there are fewer users).
    pub k: usize,
    /// Seed of the k-means initialisation and of the fit sample.
    pub seed: u64,
    /// K-means runs with different initialisations; the best is kept.
    pub n_runs: usize,
    /// Most k-means iterations per run.
    pub max_iterations: u64,
    /// Categories (most engaged overall) whose shares are clustering columns.
    pub category_columns: usize,
    /// Categories listed in a profile.
    pub profile_categories: usize,
    /// K-means is fitted on at most this many users (a fixed-seed sample); every user is
    /// then assigned to the nearest centroid.
    pub max_fit_users: usize,
}

impl Default for SegmentParams {
    fn default() -> Self {
        SegmentParams {
            k: 6,
            seed: 42,
            n_runs: 4,
            max_iterations: 200,
            category_columns: 8,
            profile_categories: 3,
            max_fit_users: 50_000,
        }
    }
}

impl SegmentParams {
    /// Checks the ranges; `Err(ModelError::InvalidParams)` names the bad setting.
    pub fn validate(&self) -> Result<()> {
        if self.k == 0 || self.k > 100 {
            return Err(ModelError::InvalidParams(
                "segments.k must be in 1..=100".into(),
            ));
        }
        if self.n_runs == 0 || self.max_iterations == 0 {
            return Err(ModelError::InvalidParams(
                "segments.n_runs and max_iterations must be at least 1".into(),
            ));
        }
        if self.max_fit_users < self.k {
            return Err(ModelError::InvalidParams(
                "segments.max_fit_users must be at least k".into(),
            ));
        }
        if self.category_columns > 100 {
            return Err(ModelError::InvalidParams(
                "segments.category_columns must be at most 100".into(),
            ));
        }
        Ok(())
    }
}

/// A readable description of one segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentProfile {
    /// `seg-<n>`, `n` the segment's index.
    pub id: String,
    /// A short human-readable description, derived from the profile.
    pub label: String,
    /// Members.
    pub size: usize,
    /// Share of all users.
    pub share: f64,
    /// Mean events per member.
    pub mean_events: f64,
    /// Mean purchase spend, minor units.
    pub mean_spend_minor: f64,
    /// Share of users who bought / carted at least once.
    pub buyer_share: f64,
    /// Share of users who put something into the cart at least once.
    pub carter_share: f64,
    /// Carts and purchases per event.
    pub cart_rate: f64,
    /// Purchases per event.
    pub purchase_rate: f64,
    /// Mean hours since the user's last event, as of the newest event.
    pub mean_recency_hours: f64,
    /// `(category, mean share of the members' category engagement)`, strongest first.
    pub top_categories: Vec<(String, f64)>,
}

/// One user's membership.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentMember {
    /// The user.
    pub user_id: String,
    /// Index of the segment.
    pub segment: u32,
    /// The user's events.
    pub events: u64,
    /// The user's purchase spend, minor units.
    pub spend_minor: i64,
    /// Event time of the user's last event, epoch ms.
    pub last_ts: i64,
}

/// A fitted segmentation: the model to assign new users and the current members.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segments {
    /// The model version that produced it (set when saved).
    pub version: String,
    /// The newest event time the segmentation saw.
    pub as_of_ts: i64,
    /// Names of the clustering columns, in order.
    pub columns: Vec<String>,
    /// The categories whose shares are columns.
    pub category_columns: Vec<String>,
    /// Per-column mean of the standardisation.
    pub mean: Vec<f64>,
    /// Per-column scale of the standardisation.
    pub scale: Vec<f64>,
    /// Centroids in standardised space, in segment order.
    pub centroids: Vec<Vec<f64>>,
    /// One profile per segment, in segment order.
    pub profiles: Vec<SegmentProfile>,
    /// Sorted by (segment, user_id).
    pub members: Vec<SegmentMember>,
}

const BASE_COLUMNS: [&str; 7] = [
    "activity_log",
    "spend_log",
    "cart_rate",
    "purchase_rate",
    "breadth_log",
    "recency_log_hours",
    "tenure_log_hours",
];

fn category_shares(u: &UserFeatures) -> Vec<(&str, f64)> {
    let vals: Vec<(&str, f64)> = u
        .categories
        .iter()
        .map(|c| (c.id.as_str(), c.weight.value_at(u.last_ts, 1e18).max(0.0)))
        .collect();
    let total: f64 = vals.iter().map(|x| x.1).sum();
    if total <= 0.0 {
        return Vec::new();
    }
    vals.into_iter().map(|(c, v)| (c, v / total)).collect()
}

fn behaviour_row(u: &UserFeatures, as_of: i64, cats: &[String], out: &mut Vec<f64>) {
    let total = u.counts.total().max(1) as f64;
    out.push((u.counts.total() as f64).ln_1p());
    out.push((u.spend_minor.max(0) as f64 / 100.0).ln_1p());
    out.push(u.counts.add_to_cart as f64 / total);
    out.push(u.counts.purchase as f64 / total);
    out.push((u.items.len() as f64).ln_1p());
    out.push(((as_of - u.last_ts).max(0) as f64 / 3.6e6).ln_1p());
    out.push(((u.last_ts - u.first_ts).max(0) as f64 / 3.6e6).ln_1p());
    let shares = category_shares(u);
    for c in cats {
        out.push(
            shares
                .iter()
                .find(|(id, _)| *id == c.as_str())
                .map_or(0.0, |x| x.1),
        );
    }
}

impl Segments {
    /// Clusters users. Users without any event are skipped.
    pub fn fit<'a>(
        users: impl IntoIterator<Item = &'a UserFeatures>,
        params: &SegmentParams,
    ) -> Result<Segments> {
        params.validate()?;
        let mut users: Vec<&UserFeatures> =
            users.into_iter().filter(|u| u.counts.total() > 0).collect();
        users.sort_unstable_by(|a, b| a.user_id.cmp(&b.user_id));
        users.dedup_by(|a, b| a.user_id == b.user_id);
        if users.is_empty() {
            return Err(ModelError::NotEnoughData("no users to segment".into()));
        }
        let as_of = users.iter().map(|u| u.last_ts).max().unwrap_or(0);

        // The most engaged categories overall become columns.
        let mut cat_weight: FxHashMap<&str, f64> = FxHashMap::default();
        for u in &users {
            for (c, s) in category_shares(u) {
                *cat_weight.entry(c).or_default() += s;
            }
        }
        let mut cats: Vec<(String, f64)> = cat_weight
            .into_iter()
            .map(|(c, w)| (c.to_string(), w))
            .collect();
        recstream_features::view::sort_desc(&mut cats);
        let category_columns: Vec<String> = cats
            .into_iter()
            .take(params.category_columns)
            .map(|x| x.0)
            .collect();
        let columns: Vec<String> = BASE_COLUMNS
            .iter()
            .map(|s| s.to_string())
            .chain(
                category_columns
                    .iter()
                    .map(|c| format!("category_share:{c}")),
            )
            .collect();
        let d = columns.len();

        let mut flat = Vec::with_capacity(users.len() * d);
        for u in &users {
            behaviour_row(u, as_of, &category_columns, &mut flat);
        }
        let n = users.len();
        let mut mean = vec![0.0; d];
        let mut scale = vec![0.0; d];
        for row in flat.chunks_exact(d) {
            for j in 0..d {
                mean[j] += row[j] / n as f64;
            }
        }
        for row in flat.chunks_exact(d) {
            for j in 0..d {
                scale[j] += (row[j] - mean[j]).powi(2) / n as f64;
            }
        }
        for s in &mut scale {
            *s = if s.sqrt() > 1e-9 { s.sqrt() } else { 1.0 };
        }
        for row in flat.chunks_exact_mut(d) {
            for j in 0..d {
                row[j] = (row[j] - mean[j]) / scale[j];
            }
        }
        let x = Array2::from_shape_vec((n, d), flat).expect("n × d");
        let k = params.k.min(n);
        let mut rng = Xoshiro256Plus::seed_from_u64(params.seed);
        let fit_on = if n > params.max_fit_users {
            let mut idx = rand::seq::index::sample(&mut rng, n, params.max_fit_users).into_vec();
            idx.sort_unstable();
            x.select(ndarray::Axis(0), &idx)
        } else {
            x.clone()
        };
        let km = KMeans::params_with_rng(k, rng)
            .n_runs(params.n_runs)
            .max_n_iterations(params.max_iterations)
            .fit(&DatasetBase::from(fit_on))?;
        let assign: ndarray::Array1<usize> = km.predict(&x);

        // Per-cluster statistics, then order clusters by value for stable, meaningful ids.
        struct Acc {
            size: usize,
            events: f64,
            spend: f64,
            buyers: usize,
            carters: usize,
            carts: f64,
            purchases: f64,
            recency_h: f64,
            cats: FxHashMap<String, f64>,
        }
        let mut acc: Vec<Acc> = (0..k)
            .map(|_| Acc {
                size: 0,
                events: 0.0,
                spend: 0.0,
                buyers: 0,
                carters: 0,
                carts: 0.0,
                purchases: 0.0,
                recency_h: 0.0,
                cats: FxHashMap::default(),
            })
            .collect();
        for (u, c) in users.iter().zip(assign.iter()) {
            let a = &mut acc[*c];
            a.size += 1;
            a.events += u.counts.total() as f64;
            a.spend += u.spend_minor as f64;
            a.buyers += (u.counts.purchase > 0) as usize;
            a.carters += (u.counts.add_to_cart > 0) as usize;
            a.carts += u.counts.add_to_cart as f64;
            a.purchases += u.counts.purchase as f64;
            a.recency_h += (as_of - u.last_ts).max(0) as f64 / 3.6e6;
            for (cat, s) in category_shares(u) {
                *a.cats.entry(cat.to_string()).or_default() += s;
            }
        }
        let mut order: Vec<usize> = (0..k).filter(|c| acc[*c].size > 0).collect();
        let per = |a: &Acc, v: f64| v / a.size.max(1) as f64;
        order.sort_by(|x, y| {
            let (a, b) = (&acc[*x], &acc[*y]);
            per(b, b.spend)
                .total_cmp(&per(a, a.spend))
                .then(per(b, b.events).total_cmp(&per(a, a.events)))
                .then(b.size.cmp(&a.size))
                .then(x.cmp(y))
        });
        let mut new_index = vec![u32::MAX; k];
        for (i, c) in order.iter().enumerate() {
            new_index[*c] = i as u32;
        }
        let all_events = users.iter().map(|u| u.counts.total() as f64).sum::<f64>() / n as f64;
        let all_recency = acc.iter().map(|a| a.recency_h).sum::<f64>() / n as f64;
        let profiles: Vec<SegmentProfile> = order
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let a = &acc[*c];
                let mut top: Vec<(String, f64)> = a
                    .cats
                    .iter()
                    .map(|(k, v)| (k.clone(), round(v / a.size as f64)))
                    .collect();
                recstream_features::view::sort_desc(&mut top);
                top.truncate(params.profile_categories);
                let mut p = SegmentProfile {
                    id: format!("seg-{i}"),
                    label: String::new(),
                    size: a.size,
                    share: round(a.size as f64 / n as f64),
                    mean_events: round(per(a, a.events)),
                    mean_spend_minor: round(per(a, a.spend)),
                    buyer_share: round(a.buyers as f64 / a.size as f64),
                    carter_share: round(a.carters as f64 / a.size as f64),
                    cart_rate: round(a.carts / a.events.max(1.0)),
                    purchase_rate: round(a.purchases / a.events.max(1.0)),
                    mean_recency_hours: round(per(a, a.recency_h)),
                    top_categories: top,
                };
                p.label = label(&p, all_events, all_recency);
                p
            })
            .collect();
        let centroids = order
            .iter()
            .map(|c| km.centroids().row(*c).to_vec())
            .collect();
        let mut members: Vec<SegmentMember> = users
            .iter()
            .zip(assign.iter())
            .map(|(u, c)| SegmentMember {
                user_id: u.user_id.clone(),
                segment: new_index[*c],
                events: u.counts.total(),
                spend_minor: u.spend_minor,
                last_ts: u.last_ts,
            })
            .collect();
        members.sort_by(|a, b| a.segment.cmp(&b.segment).then(a.user_id.cmp(&b.user_id)));
        Ok(Segments {
            version: String::new(),
            as_of_ts: as_of,
            columns,
            category_columns,
            mean,
            scale,
            centroids,
            profiles,
            members,
        })
    }

    /// The segment a (new or changed) user falls in now.
    pub fn assign(&self, user: &UserFeatures) -> Option<&SegmentProfile> {
        let mut row = Vec::with_capacity(self.columns.len());
        behaviour_row(
            user,
            self.as_of_ts.max(user.last_ts),
            &self.category_columns,
            &mut row,
        );
        let mut best = (f64::INFINITY, None);
        for (i, c) in self.centroids.iter().enumerate() {
            let d: f64 = row
                .iter()
                .enumerate()
                .map(|(j, v)| ((v - self.mean[j]) / self.scale[j] - c[j]).powi(2))
                .sum();
            if d < best.0 {
                best = (d, Some(i));
            }
        }
        best.1.map(|i| &self.profiles[i])
    }

    /// The profile of segment `id`.
    pub fn profile(&self, id: &str) -> Option<&SegmentProfile> {
        self.profiles.iter().find(|p| p.id == id)
    }

    /// Members of a segment, sorted by user id.
    pub fn members_of(&self, id: &str) -> Option<&[SegmentMember]> {
        let idx = self.profiles.iter().position(|p| p.id == id)? as u32;
        let start = self.members.partition_point(|m| m.segment < idx);
        let end = self.members.partition_point(|m| m.segment <= idx);
        Some(&self.members[start..end])
    }

    /// One page of a segment's members after the user id `after` (exclusive).
    pub fn page(
        &self,
        id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Option<(&[SegmentMember], Option<&str>)> {
        let all = self.members_of(id)?;
        let start = match after {
            Some(a) => all.partition_point(|m| m.user_id.as_str() <= a),
            None => 0,
        };
        let end = (start + limit).min(all.len());
        let page = &all[start..end];
        let next = (end < all.len())
            .then(|| page.last().map(|m| m.user_id.as_str()))
            .flatten();
        Some((page, next))
    }

    fn segment_id(&self, m: &SegmentMember) -> &str {
        &self.profiles[m.segment as usize].id
    }

    /// `segments.csv`: one row per segment.
    pub fn profiles_csv(&self) -> Result<Vec<u8>> {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record([
            "segment_id",
            "label",
            "size",
            "share",
            "mean_events",
            "mean_spend_minor",
            "buyer_share",
            "carter_share",
            "cart_rate",
            "purchase_rate",
            "mean_recency_hours",
            "top_categories",
        ])?;
        for p in &self.profiles {
            w.write_record([
                p.id.clone(),
                p.label.clone(),
                p.size.to_string(),
                p.share.to_string(),
                p.mean_events.to_string(),
                p.mean_spend_minor.to_string(),
                p.buyer_share.to_string(),
                p.carter_share.to_string(),
                p.cart_rate.to_string(),
                p.purchase_rate.to_string(),
                p.mean_recency_hours.to_string(),
                top_categories_text(p),
            ])?;
        }
        w.into_inner().map_err(|e| ModelError::Io(e.into_error()))
    }

    /// `segment_members.csv`: one row per user.
    pub fn members_csv(&self) -> Result<Vec<u8>> {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(["user_id", "segment_id", "events", "spend_minor", "last_ts"])?;
        for m in &self.members {
            w.write_record([
                m.user_id.as_str(),
                self.segment_id(m),
                &m.events.to_string(),
                &m.spend_minor.to_string(),
                &m.last_ts.to_string(),
            ])?;
        }
        w.into_inner().map_err(|e| ModelError::Io(e.into_error()))
    }

    /// `segments.parquet`.
    pub fn profiles_parquet(&self) -> Result<Vec<u8>> {
        let f = |name: &str, t: DataType| Field::new(name, t, false);
        let schema = Arc::new(Schema::new(vec![
            f("segment_id", DataType::Utf8),
            f("label", DataType::Utf8),
            f("size", DataType::UInt64),
            f("share", DataType::Float64),
            f("mean_events", DataType::Float64),
            f("mean_spend_minor", DataType::Float64),
            f("buyer_share", DataType::Float64),
            f("carter_share", DataType::Float64),
            f("cart_rate", DataType::Float64),
            f("purchase_rate", DataType::Float64),
            f("mean_recency_hours", DataType::Float64),
            f("top_categories", DataType::Utf8),
        ]));
        let p = &self.profiles;
        let fl = |g: fn(&SegmentProfile) -> f64| -> ArrayRef {
            Arc::new(Float64Array::from(p.iter().map(g).collect::<Vec<_>>()))
        };
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                p.iter().map(|p| p.id.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                p.iter().map(|p| p.label.as_str()),
            )),
            Arc::new(UInt64Array::from_iter_values(
                p.iter().map(|p| p.size as u64),
            )),
            fl(|p| p.share),
            fl(|p| p.mean_events),
            fl(|p| p.mean_spend_minor),
            fl(|p| p.buyer_share),
            fl(|p| p.carter_share),
            fl(|p| p.cart_rate),
            fl(|p| p.purchase_rate),
            fl(|p| p.mean_recency_hours),
            Arc::new(StringArray::from_iter_values(
                p.iter().map(top_categories_text),
            )),
        ];
        write_parquet(RecordBatch::try_new(schema, cols)?)
    }

    /// `segment_members.parquet`.
    pub fn members_parquet(&self) -> Result<Vec<u8>> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Utf8, false),
            Field::new("segment_id", DataType::Utf8, false),
            Field::new("events", DataType::UInt64, false),
            Field::new("spend_minor", DataType::Int64, false),
            Field::new("last_ts", DataType::Int64, false),
        ]));
        let m = &self.members;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                m.iter().map(|m| m.user_id.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                m.iter().map(|m| self.segment_id(m)),
            )),
            Arc::new(UInt64Array::from_iter_values(m.iter().map(|m| m.events))),
            Arc::new(arrow::array::Int64Array::from_iter_values(
                m.iter().map(|m| m.spend_minor),
            )),
            Arc::new(arrow::array::Int64Array::from_iter_values(
                m.iter().map(|m| m.last_ts),
            )),
        ];
        write_parquet(RecordBatch::try_new(schema, cols)?)
    }

    /// Writes the four export files under `prefix` (`<prefix>/segments.csv`, …); returns
    /// the keys written.
    pub async fn export(&self, store: &dyn ObjectStore, prefix: &str) -> Result<Vec<String>> {
        let prefix = prefix.trim_end_matches('/');
        let files = [
            ("segments.csv", self.profiles_csv()?),
            ("segment_members.csv", self.members_csv()?),
            ("segments.parquet", self.profiles_parquet()?),
            ("segment_members.parquet", self.members_parquet()?),
        ];
        let mut keys = Vec::new();
        for (name, body) in files {
            let key = if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}/{name}")
            };
            store.put(&key, Bytes::from(body)).await?;
            keys.push(key);
        }
        Ok(keys)
    }
}

/// Reads `segment_members.parquet` back as `(user_id, segment_id)` pairs.
pub fn read_members_parquet(bytes: Bytes) -> Result<Vec<(String, String)>> {
    use arrow::array::AsArray;
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch?;
        let (Some(u), Some(s)) = (
            batch.column_by_name("user_id"),
            batch.column_by_name("segment_id"),
        ) else {
            return Err(ModelError::Corrupt {
                key: "segment_members.parquet".into(),
                message: "missing user_id or segment_id".into(),
            });
        };
        let (u, s) = (u.as_string::<i32>(), s.as_string::<i32>());
        for i in 0..batch.num_rows() {
            out.push((u.value(i).to_string(), s.value(i).to_string()));
        }
    }
    Ok(out)
}

fn write_parquet(batch: RecordBatch) -> Result<Vec<u8>> {
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut w = ArrowWriter::try_new(Vec::new(), batch.schema(), Some(props))?;
    w.write(&batch)?;
    Ok(w.into_inner()?)
}

fn top_categories_text(p: &SegmentProfile) -> String {
    p.top_categories
        .iter()
        .map(|(c, s)| format!("{c}:{s}"))
        .collect::<Vec<_>>()
        .join(";")
}

fn round(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

fn label(p: &SegmentProfile, all_events: f64, all_recency: f64) -> String {
    let mut s = String::new();
    if p.mean_recency_hours > 2.0 * all_recency && all_recency > 0.0 {
        s.push_str("lapsed ");
    }
    s.push_str(if p.buyer_share >= 0.5 {
        "buyers"
    } else if p.carter_share >= 0.5 {
        "cart abandoners"
    } else if p.mean_events >= 2.0 * all_events {
        "engaged browsers"
    } else {
        "browsers"
    });
    if let Some((c, share)) = p.top_categories.first()
        && *share >= 0.3
    {
        s.push_str(" · ");
        s.push_str(c);
    }
    s
}
