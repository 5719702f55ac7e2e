//! Versioned model artifacts in an object store, and hot reload.
//!
//! ```text
//!  models/<version>/model.json            meta (+ params, metrics), feature schema, rankers, cold start
//!  models/<version>/embeddings.json       product vectors and neighbour lists (optional)
//!  models/<version>/segments.json         segmentation model and members (optional)
//!  models/<version>/segments/…            segments.{csv,parquet}, segment_members.{csv,parquet}
//!  models/CURRENT                         "<version>\n", written last (the commit point)
//! ```
//!
//! `version` = UTC training time + a short hash of `model.json`, e.g. `20191001T025000Z-3f2a9c1b`,
//! so versions sort by time and two different models never share a name.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use recstream_ingest::ObjectStore;
use serde::{Deserialize, Serialize};

use crate::affinity::{AffinityModel, OnlineRanker};
use crate::cold_start::ColdStartLists;
use crate::embed::ProductEmbeddings;
use crate::error::{ModelError, Result};
use crate::params::TrainParams;
use crate::segments::Segments;

/// Key prefix of every model version in the object store.
pub const MODELS_PREFIX: &str = "models";
/// Key of the pointer to the current version (written last: the commit point).
pub const CURRENT_KEY: &str = "models/CURRENT";
/// Format of `model.json`; bumped on incompatible changes.
pub const FORMAT: u32 = 1;

/// What a training run did, kept with the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingMeta {
    /// `<UTC training time>-<hash of model.json>`, e.g. `20191001T025000Z-3f2a9c1b`.
    pub version: String,
    /// Name of the dataset (or input) trained on.
    pub dataset: String,
    /// Events replayed.
    pub events: u64,
    /// Distinct users in the events.
    pub users: u64,
    /// Distinct products in the events.
    pub products: u64,
    /// Positives in the log: a user's next, different product.
    pub eligible_positives: u64,
    /// Positives sampled for training.
    pub positives: u64,
    /// Training rows (positives and sampled negatives).
    pub rows: u64,
    /// Event time of the first event, epoch ms.
    pub first_event_ts: i64,
    /// Event time of the last event, epoch ms.
    pub last_event_ts: i64,
    /// Wall-clock time of training, RFC 3339.
    pub trained_at: String,
    /// Wall-clock duration of training, seconds.
    pub train_seconds: f64,
    /// Training metrics (AUC, candidate recall, timings) and any offline evaluation added.
    pub metrics: BTreeMap<String, f64>,
    /// The parameters of the run.
    pub params: TrainParams,
}

/// Everything one training run produces.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelArtifact {
    /// What the training run did.
    pub meta: TrainingMeta,
    /// The batch ranker (logistic regression).
    pub affinity: AffinityModel,
    /// The online ranker (FTRL), pre-trained on the same rows.
    pub online: OnlineRanker,
    /// Popularity lists for users without history.
    pub cold_start: ColdStartLists,
    /// Product vectors and neighbours; `None` when skipped. Stored in `embeddings.json`.
    #[serde(skip)]
    pub embeddings: Option<ProductEmbeddings>,
    /// User segmentation; `None` when skipped. Stored in `segments.json`.
    #[serde(skip)]
    pub segments: Option<Arc<Segments>>,
}

#[derive(Serialize)]
struct ModelFileOut<'a> {
    format: u32,
    #[serde(flatten)]
    artifact: &'a ModelArtifact,
}

#[derive(Deserialize)]
struct ModelFileIn {
    format: u32,
    #[serde(flatten)]
    artifact: ModelArtifact,
}

fn key(version: &str, name: &str) -> String {
    format!("{MODELS_PREFIX}/{version}/{name}")
}

/// FNV-1a, 32 bits: a short content hash for version names.
fn short_hash(bytes: &[u8]) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= *b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

fn valid_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl ModelArtifact {
    /// The model version ([`TrainingMeta::version`]).
    pub fn version(&self) -> &str {
        &self.meta.version
    }

    /// Writes the artifact under a new version and points `models/CURRENT` at it.
    /// Returns the version.
    pub async fn save(&mut self, store: &dyn ObjectStore) -> Result<String> {
        self.meta.version.clear();
        let unversioned = serde_json::to_vec(&ModelFileOut {
            format: FORMAT,
            artifact: self,
        })?;
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
        let version = format!("{stamp}-{}", short_hash(&unversioned));
        self.meta.version = version.clone();
        if let Some(s) = &mut self.segments {
            Arc::make_mut(s).version = version.clone();
        }
        let body = serde_json::to_vec_pretty(&ModelFileOut {
            format: FORMAT,
            artifact: self,
        })?;
        store
            .put(&key(&version, "model.json"), Bytes::from(body))
            .await?;
        if let Some(e) = &self.embeddings {
            store
                .put(
                    &key(&version, "embeddings.json"),
                    Bytes::from(serde_json::to_vec(e)?),
                )
                .await?;
        }
        if let Some(s) = &self.segments {
            store
                .put(
                    &key(&version, "segments.json"),
                    Bytes::from(serde_json::to_vec(&**s)?),
                )
                .await?;
            s.export(store, &key(&version, "segments")).await?;
        }
        store
            .put(CURRENT_KEY, Bytes::from(format!("{version}\n")))
            .await?;
        tracing::info!(%version, store = %store.describe(), "model saved");
        Ok(version)
    }

    /// Loads one version. The objects are fetched on the async runtime; decoding and
    /// preparing the model (JSON of several MB, weight folding) runs on the blocking pool,
    /// so a hot reload never stalls the serving threads.
    pub async fn load(store: &dyn ObjectStore, version: &str) -> Result<ModelArtifact> {
        if !valid_version(version) {
            return Err(ModelError::InvalidParams(format!(
                "bad model version `{version}`"
            )));
        }
        let k = key(version, "model.json");
        let body = store
            .get(&k)
            .await?
            .ok_or_else(|| ModelError::Missing { key: k.clone() })?;
        let ek = key(version, "embeddings.json");
        let embeddings = store.get(&ek).await?;
        let sk = key(version, "segments.json");
        let segments = store.get(&sk).await?;
        tokio::task::spawn_blocking(move || {
            ModelArtifact::decode(k, body, (ek, embeddings), (sk, segments))
        })
        .await
        .map_err(|e| ModelError::Task(e.to_string()))?
    }

    /// Decodes and prepares the objects of one version (CPU-bound).
    fn decode(
        k: String,
        body: Bytes,
        (ek, embeddings): (String, Option<Bytes>),
        (sk, segments): (String, Option<Bytes>),
    ) -> Result<ModelArtifact> {
        let file: ModelFileIn = serde_json::from_slice(&body).map_err(|e| ModelError::Corrupt {
            key: k.clone(),
            message: e.to_string(),
        })?;
        if file.format != FORMAT {
            return Err(ModelError::Incompatible(format!(
                "{k} has format {} (this build reads {FORMAT})",
                file.format
            )));
        }
        let mut a = file.artifact;
        a.affinity = a.affinity.prepare()?;
        a.online = a.online.prepare()?;
        if let Some(b) = embeddings {
            a.embeddings = Some(serde_json::from_slice(&b).map_err(|e| ModelError::Corrupt {
                key: ek,
                message: e.to_string(),
            })?);
        }
        if let Some(b) = segments {
            a.segments = Some(Arc::new(serde_json::from_slice(&b).map_err(|e| {
                ModelError::Corrupt {
                    key: sk,
                    message: e.to_string(),
                }
            })?));
        }
        Ok(a)
    }
}

/// The version `models/CURRENT` points at.
pub async fn current_version(store: &dyn ObjectStore) -> Result<Option<String>> {
    let Some(b) = store.get(CURRENT_KEY).await? else {
        return Ok(None);
    };
    let v = std::str::from_utf8(&b)
        .map_err(|e| ModelError::Corrupt {
            key: CURRENT_KEY.into(),
            message: e.to_string(),
        })?
        .trim()
        .to_string();
    if !valid_version(&v) {
        return Err(ModelError::Corrupt {
            key: CURRENT_KEY.into(),
            message: format!("`{v}` is not a version"),
        });
    }
    Ok(Some(v))
}

/// Loads the current model, if any was saved.
pub async fn load_current(store: &dyn ObjectStore) -> Result<Option<ModelArtifact>> {
    match current_version(store).await? {
        Some(v) => Ok(Some(ModelArtifact::load(store, &v).await?)),
        None => Ok(None),
    }
}

/// Every saved version, oldest first.
pub async fn list_versions(store: &dyn ObjectStore) -> Result<Vec<String>> {
    let mut v: Vec<String> = store
        .list(&format!("{MODELS_PREFIX}/"))
        .await?
        .into_iter()
        .filter_map(|k| {
            let rest = k.strip_prefix("models/")?;
            let (ver, file) = rest.split_once('/')?;
            (file == "model.json").then(|| ver.to_string())
        })
        .collect();
    v.sort();
    v.dedup();
    Ok(v)
}

/// The model in use, swapped atomically when a new version appears (hot reload).
#[derive(Default)]
pub struct ModelHandle {
    current: RwLock<Option<Arc<ModelArtifact>>>,
}

impl ModelHandle {
    /// A handle without a model (until the first load).
    pub fn new() -> ModelHandle {
        ModelHandle::default()
    }

    /// The model in use, if one was loaded.
    pub fn get(&self) -> Option<Arc<ModelArtifact>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Makes `model` the one in use; readers holding the previous one keep it.
    pub fn set(&self, model: Arc<ModelArtifact>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(model);
    }

    /// Version of the model in use.
    pub fn version(&self) -> Option<String> {
        self.get().map(|m| m.meta.version.clone())
    }

    /// Loads `models/CURRENT` if it names another version than the one held. Returns the
    /// new model when it changed. A failed load keeps the old model.
    pub async fn refresh(&self, store: &dyn ObjectStore) -> Result<Option<Arc<ModelArtifact>>> {
        let Some(v) = current_version(store).await? else {
            return Ok(None);
        };
        if self.version().as_deref() == Some(v.as_str()) {
            return Ok(None);
        }
        let m = Arc::new(ModelArtifact::load(store, &v).await?);
        self.set(m.clone());
        tracing::info!(version = %v, "model reloaded");
        Ok(Some(m))
    }
}
