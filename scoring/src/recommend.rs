//! Candidate generation, blending, filtering and diversification for one request.
//!
//! ```text
//!  user features ─┬─ recent items ─────────────── re-engagement        (w_recent)
//!                 ├─ co-visitation of recent + context items            (w_covisit)
//!                 ├─ best sellers of the user's top categories          (w_category)
//!                 └─ trending                                           (w_trending)
//!                        ▼ blend (each source normalised to [0,1]) ─► filter (bought, in cart,
//!                          context) ─► diversify (≤ k per category) ─► top n
//!  no history ─► cold-start list of the user's segment, else overall, else trending
//! ```
//!
//! Every dependency failure degrades the answer instead of failing it: the response says
//! which dependency was missing in `degraded`, and a metric counts it.

use std::sync::Arc;
use std::time::Instant;

use recstream_features::{FeatureStore, ProductFeatures, UserFeatures};
use rustc_hash::{FxHashMap, FxHashSet};
use serde::Serialize;

use crate::cold_start::{ColdStartCache, OVERALL};
use crate::config::ScoringConfig;
use crate::error::ScoringError;
use crate::metrics as m;

/// Why an item is in the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    RecentlyViewed,
    CoVisited,
    TopCategory,
    Trending,
    ColdStart,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Item {
    pub product_id: String,
    pub score: f64,
    pub reason: Reason,
    /// The product that led here (for `co_visited`), or the category (for `top_category`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub because: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    Personalized,
    ColdStart,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendations {
    pub user_id: String,
    pub strategy: Strategy,
    pub items: Vec<Item>,
    /// Dependencies that failed while answering (empty when healthy).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub degraded: Vec<&'static str>,
}

/// One request.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub user_id: String,
    pub n: Option<usize>,
    /// Products on the page or in the cart: seeds for co-visitation, never recommended.
    pub context: Vec<String>,
}

pub struct Recommender {
    store: Arc<dyn FeatureStore>,
    cold: Arc<dyn ColdStartCache>,
    cfg: ScoringConfig,
}

#[derive(Default)]
struct Cand {
    score: f64,
    best: f64,
    reason: Option<(Reason, Option<String>)>,
}

impl Cand {
    fn add(&mut self, s: f64, reason: Reason, because: Option<&str>) {
        self.score += s;
        if s > self.best {
            self.best = s;
            self.reason = Some((reason, because.map(str::to_string)));
        }
    }
}

impl Recommender {
    pub fn new(
        store: Arc<dyn FeatureStore>,
        cold: Arc<dyn ColdStartCache>,
        cfg: ScoringConfig,
    ) -> Recommender {
        Recommender { store, cold, cfg }
    }

    pub fn config(&self) -> &ScoringConfig {
        &self.cfg
    }

    pub fn store(&self) -> &Arc<dyn FeatureStore> {
        &self.store
    }

    pub fn cold_start(&self) -> &Arc<dyn ColdStartCache> {
        &self.cold
    }

    /// Recommendations for one user.
    pub async fn recommend(&self, req: &Request) -> Result<Recommendations, ScoringError> {
        let started = Instant::now();
        let n = req.n.unwrap_or(self.cfg.default_n);
        if n == 0 || n > self.cfg.max_n {
            return Err(ScoringError::BadRequest(format!(
                "n must be in 1..={}",
                self.cfg.max_n
            )));
        }
        let mut degraded = Vec::new();
        let user = match self.store.user(&req.user_id).await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, "feature store unavailable, answering without history");
                degraded.push("feature_store");
                None
            }
        };
        let history = user
            .as_ref()
            .is_some_and(|u| !u.recent.is_empty() || !u.categories.is_empty());
        let out = if history || !req.context.is_empty() {
            let u = user.clone().unwrap_or_default();
            self.personalized(req, &u, n, &mut degraded).await
        } else {
            let segment = user.as_ref().and_then(|u| u.segment.clone());
            self.cold(req, segment.as_deref(), n, &mut degraded).await
        };
        metrics::histogram!(m::SECONDS).record(started.elapsed().as_secs_f64());
        let strategy = match out.1 {
            Strategy::Personalized => "personalized",
            Strategy::ColdStart => "cold_start",
        };
        metrics::counter!(m::REQUESTS_TOTAL, "strategy" => strategy).increment(1);
        for d in &degraded {
            metrics::counter!(m::DEGRADED_TOTAL, "dependency" => *d).increment(1);
        }
        Ok(Recommendations {
            user_id: req.user_id.clone(),
            strategy: out.1,
            items: out.0,
            degraded,
        })
    }

    async fn personalized(
        &self,
        req: &Request,
        user: &UserFeatures,
        n: usize,
        degraded: &mut Vec<&'static str>,
    ) -> (Vec<Item>, Strategy) {
        let cfg = &self.cfg;
        let mut cands: FxHashMap<String, Cand> = FxHashMap::default();
        let excluded = self.excluded(req, user);

        // Seeds: context first (what is on the page now), then the most recent items.
        let mut seeds: Vec<(String, f64)> = req.context.iter().map(|c| (c.clone(), 1.0)).collect();
        for (i, r) in user.recent.iter().take(cfg.seed_items).enumerate() {
            seeds.push((r.product_id.clone(), 1.0 / (1.0 + i as f64)));
        }
        let seed_ids: Vec<&str> = seeds.iter().map(|(s, _)| s.as_str()).collect();
        let seed_features = match self.store.products(&seed_ids).await {
            Ok(p) => p,
            Err(_) => {
                degraded.push("feature_store");
                vec![None; seed_ids.len()]
            }
        };
        for ((seed, sw), pf) in seeds.iter().zip(&seed_features) {
            let Some(pf) = pf else { continue };
            let max = pf.covisit.first().map(|(_, w)| *w).unwrap_or(1.0).max(1.0) as f64;
            for (nb, w) in pf.covisit.iter().take(cfg.neighbours_per_seed) {
                cands.entry(nb.clone()).or_default().add(
                    cfg.w_covisit * sw * (*w as f64) / max,
                    Reason::CoVisited,
                    Some(seed),
                );
            }
        }

        if cfg.include_recent && !user.items.is_empty() {
            let max = user.items[0].weight.value.max(f64::MIN_POSITIVE);
            for it in &user.items {
                cands.entry(it.id.clone()).or_default().add(
                    cfg.w_recent * (it.weight.value / max).min(1.0),
                    Reason::RecentlyViewed,
                    None,
                );
            }
        }

        let cat_total: f64 = user
            .categories
            .iter()
            .take(cfg.top_categories)
            .map(|c| c.weight.value)
            .sum::<f64>()
            .max(f64::MIN_POSITIVE);
        for c in user.categories.iter().take(cfg.top_categories) {
            match self.store.category_top(&c.id).await {
                Ok(Some(top)) => {
                    let max = top
                        .items
                        .first()
                        .map(|(_, w)| *w)
                        .unwrap_or(1.0)
                        .max(f64::MIN_POSITIVE);
                    for (p, w) in top.items.iter().take(cfg.per_category) {
                        cands.entry(p.clone()).or_default().add(
                            cfg.w_category * (c.weight.value / cat_total) * (w / max),
                            Reason::TopCategory,
                            Some(&c.id),
                        );
                    }
                }
                Ok(None) => {}
                Err(_) => degraded.push("feature_store"),
            }
        }

        match self.store.trending().await {
            Ok(t) => {
                let max = t
                    .items
                    .first()
                    .map(|(_, w)| *w)
                    .unwrap_or(1.0)
                    .max(f64::MIN_POSITIVE);
                for (p, w) in t.items.iter().take(cfg.trending) {
                    cands.entry(p.clone()).or_default().add(
                        cfg.w_trending * w / max,
                        Reason::Trending,
                        None,
                    );
                }
            }
            Err(_) => degraded.push("feature_store"),
        }

        cands.retain(|id, _| !excluded.contains(id.as_str()));
        metrics::histogram!(m::CANDIDATES).record(cands.len() as f64);
        let mut ranked: Vec<(String, Cand)> = cands.into_iter().collect();
        ranked.sort_unstable_by(|a, b| b.1.score.total_cmp(&a.1.score).then_with(|| a.0.cmp(&b.0)));
        let ids: Vec<&str> = ranked
            .iter()
            .take(n * 4)
            .map(|(id, _)| id.as_str())
            .collect();
        let features = self.store.products(&ids).await.unwrap_or_default();
        let items = diversify(
            ranked
                .into_iter()
                .take(n * 4)
                .enumerate()
                .map(|(i, (id, c))| {
                    let (reason, because) = c.reason.unwrap_or((Reason::Trending, None));
                    let category = features
                        .get(i)
                        .and_then(|f| f.as_ref())
                        .and_then(category_of);
                    Item {
                        product_id: id,
                        score: round(c.score),
                        reason,
                        because,
                        category,
                    }
                }),
            n,
            cfg.max_per_category,
        );
        (items, Strategy::Personalized)
    }

    fn excluded<'a>(&self, req: &'a Request, user: &'a UserFeatures) -> FxHashSet<&'a str> {
        let mut ex: FxHashSet<&str> = req.context.iter().map(String::as_str).collect();
        if self.cfg.exclude_purchased {
            ex.extend(user.purchased.iter().map(String::as_str));
        }
        if self.cfg.exclude_in_cart {
            ex.extend(user.cart.iter().map(|l| l.product_id.as_str()));
        }
        ex
    }

    async fn cold(
        &self,
        req: &Request,
        segment: Option<&str>,
        n: usize,
        degraded: &mut Vec<&'static str>,
    ) -> (Vec<Item>, Strategy) {
        let mut list = None;
        for key in segment.into_iter().chain([OVERALL]) {
            match self.cold.top(key).await {
                Ok(Some(l)) if !l.items.is_empty() => {
                    list = Some(l.items.clone());
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, cache = self.cold.name(), "cold-start cache unavailable");
                    degraded.push("cold_start_cache");
                    break;
                }
            }
        }
        let list = match list {
            Some(l) => l,
            None => match self.store.trending().await {
                Ok(t) => t.items.clone(),
                Err(_) => {
                    degraded.push("feature_store");
                    Vec::new()
                }
            },
        };
        let excluded: FxHashSet<&str> = req.context.iter().map(String::as_str).collect();
        let max = list
            .first()
            .map(|(_, w)| *w)
            .unwrap_or(1.0)
            .max(f64::MIN_POSITIVE);
        let items = list
            .iter()
            .filter(|(p, _)| !excluded.contains(p.as_str()))
            .take(n)
            .map(|(p, w)| Item {
                product_id: p.clone(),
                score: round(w / max),
                reason: Reason::ColdStart,
                because: segment.map(str::to_string),
                category: None,
            })
            .collect();
        (items, Strategy::ColdStart)
    }

    /// Products most often visited together with `product_id`.
    pub async fn similar(
        &self,
        product_id: &str,
        n: usize,
    ) -> Result<Option<Vec<Item>>, ScoringError> {
        let Some(p) = self.store.products(&[product_id]).await?.pop().flatten() else {
            return Ok(None);
        };
        let max = p.covisit.first().map(|(_, w)| *w).unwrap_or(1.0).max(1.0) as f64;
        Ok(Some(
            p.covisit
                .iter()
                .take(n)
                .map(|(id, w)| Item {
                    product_id: id.clone(),
                    score: round(*w as f64 / max),
                    reason: Reason::CoVisited,
                    because: Some(product_id.to_string()),
                    category: None,
                })
                .collect(),
        ))
    }
}

fn category_of(p: &Arc<ProductFeatures>) -> Option<String> {
    p.category.clone()
}

fn round(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// Greedy diversification: keep the ranking, but at most `per_category` items of one
/// category, backfilling from the rest when the list would otherwise be short.
fn diversify(ranked: impl Iterator<Item = Item>, n: usize, per_category: usize) -> Vec<Item> {
    let mut out = Vec::with_capacity(n);
    let mut overflow = Vec::new();
    let mut per: FxHashMap<String, usize> = FxHashMap::default();
    for item in ranked {
        if out.len() == n {
            break;
        }
        let full = item.category.as_ref().is_some_and(|c| {
            let k = per.entry(c.clone()).or_default();
            *k += 1;
            *k > per_category
        });
        if full {
            overflow.push(item);
        } else {
            out.push(item);
        }
    }
    let missing = n.saturating_sub(out.len());
    out.extend(overflow.into_iter().take(missing));
    out
}
