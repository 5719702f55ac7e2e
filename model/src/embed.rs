//! Product embeddings from the co-visitation graph, and similar products.
//!
//! ```text
//!  events ─► sessions ─► co-occurrence counts (window of the last W distinct items)
//!        ─► items with ≥ min_occurrences (at most max_items, most frequent first)
//!        ─► M[i][j] = ln(1 + count(i, j))  ─► PCA (linfa-reduction, truncated SVD)
//!        ─► unit vectors ─► k nearest neighbours (linfa-nn) ─► similar(product, n)
//! ```
//!
//! Neighbour lists are precomputed at training time, so serving a `similar` call is a
//! lookup; the vectors stay in the artifact for analysis. The counting half is
//! [`CoOccurrence`], fed a chunk of the log at a time (streamed training never holds the
//! log); [`ProductEmbeddings::fit`] runs it over a slice.

use std::collections::VecDeque;

use compact_str::CompactString;
use linfa::prelude::*;
use linfa_nn::distance::L2Dist;
use linfa_nn::{CommonNearestNeighbour, NearestNeighbour};
use linfa_reduction::Pca;
use ndarray::Array2;
use recstream_ingest::Event;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::progress::Progress;

/// Hyper-parameters of the product embeddings (item co-occurrence in sessions, reduced
/// to `dimensions`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddingParams {
    /// Items need at least this many product events to get a vector.
    pub min_occurrences: usize,
    /// At most this many items (the most frequent); the matrix is dense, items².
    pub max_items: usize,
    /// Length of a vector (1..=512).
    pub dimensions: usize,
    /// Neighbours precomputed per item.
    pub neighbours: usize,
    /// Earlier distinct items of a session an item pairs with.
    pub window: usize,
    /// A gap longer than this starts a new session when events carry no session id.
    pub session_gap_secs: i64,
}

impl Default for EmbeddingParams {
    fn default() -> Self {
        EmbeddingParams {
            min_occurrences: 3,
            max_items: 2000,
            dimensions: 32,
            neighbours: 20,
            window: 5,
            session_gap_secs: 30 * 60,
        }
    }
}

impl EmbeddingParams {
    /// Checks the ranges; `Err(ModelError::InvalidParams)` names the bad setting.
    pub fn validate(&self) -> Result<()> {
        if self.dimensions == 0 || self.dimensions > 512 {
            return Err(ModelError::InvalidParams(
                "embeddings.dimensions must be in 1..=512".into(),
            ));
        }
        if self.max_items < 2 || self.max_items > 20_000 {
            return Err(ModelError::InvalidParams(
                "embeddings.max_items must be in 2..=20000".into(),
            ));
        }
        if self.window == 0 || self.neighbours == 0 {
            return Err(ModelError::InvalidParams(
                "embeddings.window and neighbours must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Product vectors and their precomputed nearest neighbours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductEmbeddings {
    /// Length of each vector.
    pub dimensions: usize,
    /// Product ids, sorted (index = row).
    pub items: Vec<String>,
    /// Unit vectors, row-major `items.len() × dimensions`.
    pub vectors: Vec<f32>,
    /// Per item: `(neighbour index, cosine similarity)`, most similar first.
    pub similar: Vec<Vec<(u32, f32)>>,
    /// Share of variance the kept dimensions explain.
    pub explained_variance: f64,
}

impl ProductEmbeddings {
    fn index_of(&self, product_id: &str) -> Option<usize> {
        self.items
            .binary_search_by(|p| p.as_str().cmp(product_id))
            .ok()
    }

    /// The `n` most similar products, or `None` for a product without a vector.
    pub fn similar(&self, product_id: &str, n: usize) -> Option<Vec<(&str, f32)>> {
        let i = self.index_of(product_id)?;
        Some(
            self.similar[i]
                .iter()
                .take(n)
                .map(|(j, s)| (self.items[*j as usize].as_str(), *s))
                .collect(),
        )
    }

    /// The product's unit vector, or `None` for a product without one.
    pub fn vector(&self, product_id: &str) -> Option<&[f32]> {
        let i = self.index_of(product_id)?;
        Some(&self.vectors[i * self.dimensions..(i + 1) * self.dimensions])
    }

    /// Learns embeddings from an event log sorted by time. `Ok(None)` when too few items
    /// co-occur to embed.
    pub fn fit(
        events: &[Event],
        params: &EmbeddingParams,
        progress: &mut dyn Progress,
    ) -> Result<Option<ProductEmbeddings>> {
        params.validate()?;
        progress.stage("co-occurrence", events.len() as u64);
        let mut co = CoOccurrence::new(params);
        for chunk in events.chunks(65_536) {
            co.apply_all(chunk);
            if chunk.len() == 65_536 {
                progress.inc(65_536);
            }
        }
        progress.finish_stage();
        co.fit(progress)
    }
}

/// Per-user session state of [`CoOccurrence`].
#[derive(Debug)]
struct Session {
    session: Option<CompactString>,
    last_ts: i64,
    items: VecDeque<u32>,
}

/// The first half of [`ProductEmbeddings::fit`], fed a chunk at a time: item occurrences and
/// co-occurrence counts within sessions. Holds one small window per user and the pair
/// counts, not the events.
#[derive(Debug)]
pub struct CoOccurrence {
    params: EmbeddingParams,
    ids: FxHashMap<CompactString, u32>,
    names: Vec<CompactString>,
    occ: Vec<u64>,
    pairs: FxHashMap<(u32, u32), f32>,
    users: FxHashMap<CompactString, Session>,
}

impl CoOccurrence {
    /// Empty counts.
    pub fn new(params: &EmbeddingParams) -> CoOccurrence {
        CoOccurrence {
            params: params.clone(),
            ids: FxHashMap::default(),
            names: Vec::new(),
            occ: Vec::new(),
            pairs: FxHashMap::default(),
            users: FxHashMap::default(),
        }
    }

    /// Counts the next events of the log (in time order).
    pub fn apply_all(&mut self, events: &[Event]) {
        for e in events {
            self.apply(e);
        }
    }

    /// Counts the next event of the log.
    pub fn apply(&mut self, e: &Event) {
        let Some(p) = e.product_id.as_ref() else {
            return;
        };
        let id = match self.ids.get(p) {
            Some(id) => *id,
            None => {
                self.names.push(p.clone());
                self.occ.push(0);
                let id = (self.names.len() - 1) as u32;
                self.ids.insert(p.clone(), id);
                id
            }
        };
        self.occ[id as usize] += 1;
        let s = match self.users.get_mut(e.user_id.as_str()) {
            Some(s) => s,
            None => self.users.entry(e.user_id.clone()).or_insert(Session {
                session: None,
                last_ts: e.ts.0,
                items: VecDeque::new(),
            }),
        };
        let new_session = match e.session_id.as_deref() {
            Some(sid) => s.session.as_deref() != Some(sid),
            None => e.ts.0 - s.last_ts > self.params.session_gap_secs * 1000,
        };
        if new_session {
            s.session = e.session_id.clone();
            s.items.clear();
        }
        s.last_ts = e.ts.0;
        for &a in &s.items {
            if a != id {
                *self.pairs.entry((a.min(id), a.max(id))).or_default() += 1.0;
            }
        }
        if let Some(pos) = s.items.iter().position(|x| *x == id) {
            s.items.remove(pos);
        }
        s.items.push_back(id);
        if s.items.len() > self.params.window {
            s.items.pop_front();
        }
    }

    /// Reduces the counts to embeddings (the per-user windows are dropped first).
    /// `Ok(None)` when too few items co-occur to embed.
    pub fn fit(self, progress: &mut dyn Progress) -> Result<Option<ProductEmbeddings>> {
        let CoOccurrence {
            params,
            names,
            occ,
            pairs,
            users,
            ids,
        } = self;
        drop(users);
        drop(ids);
        let params = &params;
        // Keep frequent items that co-occur with something.
        let mut has_pair = vec![false; names.len()];
        for (a, b) in pairs.keys() {
            has_pair[*a as usize] = true;
            has_pair[*b as usize] = true;
        }
        let mut kept: Vec<u32> = (0..names.len() as u32)
            .filter(|i| {
                occ[*i as usize] as usize >= params.min_occurrences && has_pair[*i as usize]
            })
            .collect();
        kept.sort_unstable_by(|a, b| {
            occ[*b as usize]
                .cmp(&occ[*a as usize])
                .then_with(|| names[*a as usize].cmp(&names[*b as usize]))
        });
        kept.truncate(params.max_items);
        kept.sort_unstable_by(|a, b| names[*a as usize].cmp(&names[*b as usize]));
        let n = kept.len();
        let dims = params.dimensions.min(n.saturating_sub(1));
        if n < 3 || dims == 0 {
            return Ok(None);
        }
        progress.stage("embeddings", n as u64);
        let mut row_of = vec![u32::MAX; names.len()];
        for (r, i) in kept.iter().enumerate() {
            row_of[*i as usize] = r as u32;
        }
        let mut m = Array2::<f64>::zeros((n, n));
        for ((a, b), c) in &pairs {
            let (ra, rb) = (row_of[*a as usize], row_of[*b as usize]);
            if ra != u32::MAX && rb != u32::MAX {
                let v = (*c as f64).ln_1p();
                m[[ra as usize, rb as usize]] = v;
                m[[rb as usize, ra as usize]] = v;
            }
        }
        // Rows without any kept partner would embed to the mean: drop them from queries later.
        let isolated: Vec<bool> = m
            .rows()
            .into_iter()
            .map(|r| r.iter().all(|v| *v == 0.0))
            .collect();
        let ds = DatasetBase::from(m);
        let pca = Pca::params(dims).fit(&ds)?;
        let explained_variance = pca.explained_variance_ratio().sum();
        let emb: Array2<f64> = pca.predict(ds.records());
        let mut vectors = vec![0f32; n * dims];
        let mut unit = Array2::<f64>::zeros((n, dims));
        for (i, row) in emb.rows().into_iter().enumerate() {
            let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
            for (j, v) in row.iter().enumerate() {
                unit[[i, j]] = v / norm;
                vectors[i * dims + j] = (v / norm) as f32;
            }
        }
        let index = CommonNearestNeighbour::LinearSearch
            .from_batch(&unit, L2Dist)
            .map_err(|e| ModelError::Nn(e.to_string()))?;
        let k = (params.neighbours + 1).min(n);
        let mut similar = Vec::with_capacity(n);
        for i in 0..n {
            if i % 256 == 255 {
                progress.inc(256);
            }
            if isolated[i] {
                similar.push(Vec::new());
                continue;
            }
            let found = index
                .k_nearest(unit.row(i), k)
                .map_err(|e| ModelError::Nn(e.to_string()))?;
            let list: Vec<(u32, f32)> = found
                .into_iter()
                .filter(|(_, j)| *j != i && !isolated[*j])
                .map(|(pt, j)| {
                    let d2: f64 = pt
                        .iter()
                        .zip(unit.row(i))
                        .map(|(a, b)| (a - b) * (a - b))
                        .sum();
                    (j as u32, (1.0 - d2 / 2.0) as f32)
                })
                .take(params.neighbours)
                .collect();
            similar.push(list);
        }
        progress.finish_stage();
        Ok(Some(ProductEmbeddings {
            dimensions: dims,
            items: kept
                .iter()
                .map(|i| names[*i as usize].to_string())
                .collect(),
            vectors,
            similar,
            explained_variance,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;
    use recstream_ingest::{EventType, Timestamp};

    #[test]
    fn items_of_the_same_sessions_are_neighbours() {
        // Two communities: {a0..a4} and {b0..b4}, visited in separate sessions.
        let mut evs = Vec::new();
        let mut t = 1_000_000;
        for s in 0..60 {
            let group = if s % 2 == 0 { "a" } else { "b" };
            for k in 0..4 {
                let item = format!("{group}{}", (s / 2 + k * 2) % 5);
                t += 1000;
                evs.push(
                    Event::new(
                        &format!("e{t}"),
                        Timestamp(t),
                        &format!("u{s}"),
                        EventType::View,
                    )
                    .with_product(&item, None)
                    .with_session(&format!("s{s}")),
                );
            }
        }
        let p = EmbeddingParams {
            dimensions: 4,
            neighbours: 3,
            ..Default::default()
        };
        let e = ProductEmbeddings::fit(&evs, &p, &mut NoProgress)
            .unwrap()
            .unwrap();
        assert_eq!(e.items.len(), 10);
        let sim = e.similar("a0", 3).unwrap();
        assert_eq!(sim.len(), 3);
        assert!(sim.iter().all(|(id, _)| id.starts_with('a')), "{sim:?}");
        assert!(e.similar("zz", 3).is_none());
        assert_eq!(e.vector("b1").unwrap().len(), 4);
    }
}
