//! Candidate generation, blending, filtering and diversification for one request.
//!
//! ```text
//!  user features ─┬─ recent items ─────────────── re-engagement        (w_recent)
//!                 ├─ co-visitation of recent + context items            (w_covisit)
//!                 ├─ best sellers of the user's top categories          (w_category)
//!                 └─ trending                                           (w_trending)
//!                        ▼ blend (each source normalised to [0,1]) ─► filter (bought, in cart,
//!                          context) ─► best `rerank_depth` by the blend that the shop's catalog
//!                          can sell ─► Ranker (the affinity model when one is loaded)
//!                          ─► diversify (≤ k per category) ─► top n
//!  no history ─► cold-start list of the user's segment, else overall, else trending
//! ```
//!
//! The catalog is asked about candidates in blend order, a chunk at a time, until enough
//! sellable ones are found (not about the whole pool): the list is the same as filtering
//! the whole pool first, with fewer lookups.
//!
//! Every dependency failure degrades the answer instead of failing it: the response says
//! which dependency was missing in `degraded`, and a metric counts it.

use std::sync::Arc;
use std::time::Instant;

use recstream_features::view::top_weight;
use recstream_features::{FeatureStore, ProductFeatures, UserFeatures};
use rustc_hash::{FxHashMap, FxHashSet};
use serde::Serialize;

use crate::cold_start::{ColdStartCache, OVERALL};
use crate::config::ScoringConfig;
use crate::error::ScoringError;
use crate::feedback::OnlineLearner;
use crate::metrics as m;
use crate::rank::{CandidateSignals, HeuristicRanker, HotRanker, Ranker};
use recstream_model::candidates::top_covisit;
use recstream_model::{ModelHandle, PairFeatures};

/// Why an item is in the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The user touched it recently (viewed, carted, …): re-engagement.
    RecentlyViewed,
    /// Often visited in the same session as one of the user's recent items or the
    /// request's context items.
    CoVisited,
    /// A best seller of one of the user's strongest categories.
    TopCategory,
    /// Trending overall.
    Trending,
    /// From the cold-start list of the user's segment (or the overall list).
    ColdStart,
    /// Close in the product embedding of the current model.
    Similar,
}

/// One recommended product.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Item {
    /// The product recommended.
    pub product_id: String,
    /// Higher is better; comparable only within one response.
    pub score: f64,
    /// The strongest source that brought it in.
    pub reason: Reason,
    /// The product that led here (for `co_visited`), or the category (for `top_category`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub because: Option<String>,
    /// Category path of the product, where known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

/// How a list was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// From the user's history (recent items, co-visitation, categories, trending).
    Personalized,
    /// For a user without history: the cold-start list of the user's segment.
    ColdStart,
}

/// A response to a recommendation request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendations {
    /// The user asked about.
    pub user_id: String,
    /// How the list was built.
    pub strategy: Strategy,
    /// Best first, at most the `n` asked for.
    pub items: Vec<Item>,
    /// Dependencies that failed while answering (empty when healthy).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub degraded: Vec<&'static str>,
    /// The model version that ranked the list (none: the blend or cold start). Not part
    /// of the response body: it goes into the served list's `recommendation` event.
    #[serde(skip)]
    pub model_version: Option<String>,
    /// The feature rows the model ranked the first `features.len()` items with (asked for
    /// with [`Recommender::recommend_for`]; empty when no model ranked). Not part of the
    /// response body: the served list's event carries them to the online learners.
    #[serde(skip)]
    pub features: Vec<PairFeatures>,
}

/// One request.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// The user to recommend for; unknown users get the cold-start list.
    pub user_id: String,
    /// List length; `None` = [`crate::ScoringConfig::default_n`]; at most `max_n`.
    pub n: Option<usize>,
    /// Products on the page or in the cart: seeds for co-visitation, never recommended.
    pub context: Vec<String>,
}

/// Builds recommendation lists: candidates from the user's features, ranked (by the
/// model when one is loaded), filtered and diversified; the cold-start list for users
/// without history.
pub struct Recommender {
    store: Arc<dyn FeatureStore>,
    cold: Arc<dyn ColdStartCache>,
    cfg: ScoringConfig,
    ranker: Arc<dyn Ranker>,
    model: Option<Arc<ModelHandle>>,
    learner: Option<Arc<OnlineLearner>>,
    /// The shop's catalog: only sellable products are served (unset = no filter). Set
    /// once, after start-up opened the shop ([`Recommender::set_availability`]).
    availability: std::sync::OnceLock<Arc<dyn crate::availability::Availability>>,
}

/// One candidate: its blend score, the strongest source (the reason, borrowing the seed or
/// category it came from) and the raw signals the ranker sees (computed exactly as
/// `recstream_model::candidates` does for training).
#[derive(Default)]
struct Cand<'a> {
    score: f64,
    best: f64,
    reason: Option<(Reason, Option<&'a str>)>,
    sig: CandidateSignals,
}

/// The candidate sources of one request, fetched before blending.
struct Sources<'u> {
    seed_ids: Vec<&'u str>,
    seed_weights: Vec<f64>,
    last_seed: Option<usize>,
    seed_features: Vec<Option<Arc<ProductFeatures>>>,
    /// The views of the most recent item's strongest neighbours (two hops).
    hop_features: Vec<Option<Arc<ProductFeatures>>>,
    top_categories: &'u [recstream_features::view::Weighted],
    category_tops: Vec<(
        &'u recstream_features::view::Weighted,
        Arc<recstream_features::TopList>,
    )>,
    trending: Option<Arc<recstream_features::TopList>>,
}

impl<'a> Cand<'a> {
    fn add(&mut self, s: f64, reason: Reason, because: Option<&'a str>) {
        self.score += s;
        if s > self.best {
            self.best = s;
            self.reason = Some((reason, because));
        }
    }
}

impl Recommender {
    /// A recommender over `store` and `cold`, ranking with the heuristic blend of `cfg`'s
    /// weights until a model is attached.
    pub fn new(
        store: Arc<dyn FeatureStore>,
        cold: Arc<dyn ColdStartCache>,
        cfg: ScoringConfig,
    ) -> Recommender {
        let ranker = Arc::new(HeuristicRanker {
            w_recent: cfg.w_recent,
            w_covisit: cfg.w_covisit,
            w_category: cfg.w_category,
            w_trending: cfg.w_trending,
        });
        Recommender {
            store,
            cold,
            cfg,
            ranker,
            model: None,
            learner: None,
            availability: std::sync::OnceLock::new(),
        }
    }

    /// From now on, serves only products `availability` says the shop can sell (active,
    /// in stock). Once per recommender: `false` when a filter was already set.
    pub fn set_availability(
        &self,
        availability: Arc<dyn crate::availability::Availability>,
    ) -> bool {
        self.availability.set(availability).is_ok()
    }

    /// The catalog filter, when one is set.
    pub fn availability(&self) -> Option<&Arc<dyn crate::availability::Availability>> {
        self.availability.get()
    }

    /// The catalog the lists are filtered by: the one set, unless `scoring.catalog_filter`
    /// is off.
    fn filter(&self) -> Option<&Arc<dyn crate::availability::Availability>> {
        self.availability.get().filter(|_| self.cfg.catalog_filter)
    }

    /// Ranks with whatever model `handle` holds (hot reload; the blend until one is
    /// loaded) and answers `similar` from its product embedding.
    pub fn with_model(self, handle: Arc<ModelHandle>) -> Recommender {
        let fallback = HeuristicRanker {
            w_recent: self.cfg.w_recent,
            w_covisit: self.cfg.w_covisit,
            w_category: self.cfg.w_category,
            w_trending: self.cfg.w_trending,
        };
        let mut hot = HotRanker::new(handle.clone(), fallback);
        let learner = self
            .cfg
            .online_learning
            .then(|| Arc::new(OnlineLearner::new()));
        if let Some(l) = &learner {
            hot = hot.with_online(l.clone());
        }
        let mut r = self.with_ranker(Arc::new(hot));
        r.model = Some(handle);
        r.learner = learner;
        r
    }

    /// The online learner (with a model and `scoring.online_learning`).
    pub fn learner(&self) -> Option<&Arc<OnlineLearner>> {
        self.learner.as_ref()
    }

    /// Points the online learner at the model the handle holds now (call after a reload).
    pub fn sync_model(&self) {
        if let (Some(l), Some(m)) = (&self.learner, self.model.as_ref().and_then(|h| h.get())) {
            l.sync(&m);
        }
    }

    /// Ranks the blended candidates with `ranker` (e.g. a `HotRanker` over the current
    /// model) instead of the fixed-weight blend.
    pub fn with_ranker(mut self, ranker: Arc<dyn Ranker>) -> Recommender {
        self.ranker = ranker;
        self
    }

    /// The ranker's name (`model`, `heuristic`, …).
    pub fn ranker_name(&self) -> &'static str {
        self.ranker.name()
    }

    /// The scoring settings.
    pub fn config(&self) -> &ScoringConfig {
        &self.cfg
    }

    /// The feature store it reads.
    pub fn store(&self) -> &Arc<dyn FeatureStore> {
        &self.store
    }

    /// The cold-start cache it reads.
    pub fn cold_start(&self) -> &Arc<dyn ColdStartCache> {
        &self.cold
    }

    /// Recommendations for one user.
    pub async fn recommend(&self, req: &Request) -> Result<Recommendations, ScoringError> {
        self.recommend_for(req, None).await
    }

    /// [`Recommender::recommend`] for a list that is logged under `recommendation_id`:
    /// the response also holds the model version and the feature rows the model ranked
    /// the items with ([`Recommendations::features`]), for the served list's event.
    pub async fn recommend_for(
        &self,
        req: &Request,
        recommendation_id: Option<&str>,
    ) -> Result<Recommendations, ScoringError> {
        let started = Instant::now();
        let n = req.n.unwrap_or(self.cfg.default_n);
        if n == 0 || n > self.cfg.max_n {
            return Err(ScoringError::BadRequest(format!(
                "n must be in 1..={}",
                self.cfg.max_n
            )));
        }
        let mut degraded = Vec::new();
        let mut features = Vec::new();
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
            self.personalized(
                req,
                &u,
                n,
                recommendation_id.is_some().then_some(&mut features),
                &mut degraded,
            )
            .await
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
        let model_version = (!features.is_empty())
            .then(|| self.model.as_ref().and_then(|h| h.get()))
            .flatten()
            .map(|m| m.version().to_string());
        Ok(Recommendations {
            user_id: req.user_id.clone(),
            strategy: out.1,
            items: out.0,
            degraded,
            model_version,
            features,
        })
    }

    /// The candidate pool of a personalised answer (every source, after the serving
    /// filters and the catalog, before the ranker's `rerank_depth` cut), best by the blend
    /// first; empty for a user the endpoint answers from the cold-start list. For offline
    /// evaluation (recall of the candidate set): the endpoint never calls it.
    pub async fn candidates(&self, req: &Request) -> Result<Vec<String>, ScoringError> {
        let mut degraded = Vec::new();
        let user = self.store.user(&req.user_id).await?;
        let history = user
            .as_ref()
            .is_some_and(|u| !u.recent.is_empty() || !u.categories.is_empty());
        if !history && req.context.is_empty() {
            return Ok(Vec::new());
        }
        let u = user.unwrap_or_default();
        let excluded = self.excluded(req, &u);
        let src = self.sources(req, &u, &mut degraded).await;
        let cands = self.pool(&u, &src, &excluded, &mut degraded).await;
        let mut ranked: Vec<(&str, Cand<'_>)> = cands.into_iter().collect();
        ranked.sort_unstable_by(by_blend);
        Ok(ranked.into_iter().map(|(id, _)| id.to_string()).collect())
    }

    /// Fetches every candidate source of one request (shared views, `Arc`s), so that the
    /// candidate map can borrow its keys from them: no id is copied until the answer is built.
    async fn sources<'u>(
        &self,
        req: &'u Request,
        user: &'u UserFeatures,
        degraded: &mut Vec<&'static str>,
    ) -> Sources<'u> {
        let cfg = &self.cfg;
        // Seeds: context first (what is on the page now, weight 1), then the most recent
        // items (weight 1 / (1 + i) by recency rank i, as training weighs them), each seed
        // once: the product on the page is usually the most recent item too.
        let mut seed_ids: Vec<&str> = req.context.iter().map(String::as_str).collect();
        let mut seed_weights = vec![1.0; seed_ids.len()];
        for (i, r) in user.recent.iter().take(cfg.seed_items).enumerate() {
            if !seed_ids.contains(&r.product_id.as_str()) {
                seed_ids.push(r.product_id.as_str());
                seed_weights.push(1.0 / (1.0 + i as f64));
            }
        }
        // The user's most recent item: its list alone gives `covisit_last`.
        let last_seed = user
            .recent
            .first()
            .and_then(|r| seed_ids.iter().position(|s| *s == r.product_id));
        let seed_features = match self.store.products(&seed_ids).await {
            Ok(p) => p,
            Err(_) => {
                degraded.push("feature_store");
                vec![None; seed_ids.len()]
            }
        };
        // Two hops: the lists of the most recent item's strongest neighbours.
        let hop_ids: Vec<&str> = last_seed
            .and_then(|i| seed_features[i].as_ref())
            .map(|l| {
                l.covisit
                    .iter()
                    .take(cfg.two_hop)
                    .map(|(j, _)| j.as_str())
                    .collect()
            })
            .unwrap_or_default();
        let hop_features = if hop_ids.is_empty() {
            Vec::new()
        } else {
            match self.store.products(&hop_ids).await {
                Ok(p) => p,
                Err(_) => {
                    degraded.push("feature_store");
                    Vec::new()
                }
            }
        };
        let top_categories = &user.categories[..user.categories.len().min(cfg.top_categories)];
        let mut category_tops = Vec::with_capacity(top_categories.len());
        for c in top_categories {
            match self.store.category_top(&c.id).await {
                Ok(Some(top)) => category_tops.push((c, top)),
                Ok(None) => {}
                Err(_) => degraded.push("feature_store"),
            }
        }
        let trending = match self.store.trending().await {
            Ok(t) => Some(t),
            Err(_) => {
                degraded.push("feature_store");
                None
            }
        };
        Sources {
            seed_ids,
            seed_weights,
            last_seed,
            seed_features,
            hop_features,
            top_categories,
            category_tops,
            trending,
        }
    }

    /// Blends the sources into the candidate pool and drops what may not be served
    /// (bought, in cart, the context, not sellable).
    async fn pool<'s>(
        &self,
        user: &'s UserFeatures,
        src: &'s Sources<'s>,
        excluded: &FxHashSet<&str>,
        degraded: &mut Vec<&'static str>,
    ) -> FxHashMap<&'s str, Cand<'s>> {
        let mut cands = self.blend(user, src, excluded);
        if let Some(av) = self.filter() {
            let ids: Vec<&str> = cands.keys().copied().collect();
            let ok = crate::availability::sellable(av.as_ref(), &ids, degraded).await;
            for (id, ok) in ids.iter().zip(ok) {
                if !ok {
                    cands.remove(id);
                }
            }
        }
        cands
    }

    /// Blends the sources into the candidate pool, without what may never be served to
    /// this user (bought, in cart, the context); the catalog is not asked yet.
    fn blend<'s>(
        &self,
        user: &'s UserFeatures,
        src: &'s Sources<'s>,
        excluded: &FxHashSet<&str>,
    ) -> FxHashMap<&'s str, Cand<'s>> {
        let cfg = &self.cfg;
        let mut cands: FxHashMap<&str, Cand<'_>> =
            FxHashMap::with_capacity_and_hasher(256, Default::default());
        for (si, (seed, pf)) in src.seed_ids.iter().zip(&src.seed_features).enumerate() {
            let Some(pf) = pf else { continue };
            let sw = src.seed_weights[si];
            let max = top_covisit(pf);
            for (nb, w) in pf.covisit.iter().take(cfg.neighbours_per_seed) {
                let w = *w as f64;
                let c = cands.entry(nb.as_str()).or_default();
                c.add(cfg.w_covisit * sw * w / max, Reason::CoVisited, Some(*seed));
                c.sig.covisit += sw * w / max;
                c.sig.covisit_raw += sw * w;
                if Some(si) == src.last_seed {
                    c.sig.covisit_last = w / max;
                }
            }
        }

        if let Some(last) = src.last_seed.and_then(|i| src.seed_features[i].as_ref()) {
            let max_l = top_covisit(last);
            let seed = src.last_seed.map(|i| src.seed_ids[i]);
            for ((_, wj), pj) in last.covisit.iter().zip(&src.hop_features) {
                let Some(pj) = pj else { continue };
                let via = *wj as f64 / max_l;
                let max_j = top_covisit(pj);
                for (nb, w) in pj.covisit.iter().take(cfg.two_hop_take) {
                    let v = via * *w as f64 / max_j;
                    let c = cands.entry(nb.as_str()).or_default();
                    c.add(cfg.w_covisit * v, Reason::CoVisited, seed);
                    c.sig.covisit_2hop += v;
                }
            }
        }

        if cfg.include_recent && !user.items.is_empty() {
            let max = user.items[0].weight.value.max(f64::MIN_POSITIVE);
            for it in &user.items {
                let r = (it.weight.value / max).min(1.0);
                let c = cands.entry(it.id.as_str()).or_default();
                c.add(cfg.w_recent * r, Reason::RecentlyViewed, None);
                c.sig.recent = c.sig.recent.max(r);
            }
        }

        let cat_total: f64 = src
            .top_categories
            .iter()
            .map(|c| c.weight.value)
            .sum::<f64>()
            .max(f64::MIN_POSITIVE);
        for (c, top) in &src.category_tops {
            let max = top_weight(&top.items);
            for (p, w) in top.items.iter().take(cfg.per_category) {
                let v = (c.weight.value / cat_total) * (w / max);
                let cand = cands.entry(p.as_str()).or_default();
                cand.add(cfg.w_category * v, Reason::TopCategory, Some(c.id.as_str()));
                cand.sig.category += v;
            }
        }

        if let Some(t) = &src.trending {
            let max = top_weight(&t.items);
            for (p, w) in t.items.iter().take(cfg.trending) {
                let c = cands.entry(p.as_str()).or_default();
                c.add(cfg.w_trending * w / max, Reason::Trending, None);
                c.sig.trending = c.sig.trending.max(w / max);
            }
        }

        cands.retain(|id, _| !excluded.contains(id));
        cands
    }

    /// Keeps in `ranked` the best `depth` candidates by the blend that the catalog can
    /// sell, best first: the list that filtering the whole pool and then cutting it at
    /// `depth` gives, but the catalog is asked about candidates in blend order, a chunk at
    /// a time, only until `depth` sellable ones are found.
    async fn best_sellable<'s>(
        &self,
        ranked: &mut Vec<(&'s str, Cand<'s>)>,
        depth: usize,
        degraded: &mut Vec<&'static str>,
    ) {
        let Some(av) = self.filter() else {
            if ranked.len() > depth {
                ranked.select_nth_unstable_by(depth - 1, by_blend);
                ranked.truncate(depth);
            }
            ranked.sort_unstable_by(by_blend);
            return;
        };
        // ranked[..kept]: sellable, best first; ranked[kept..next]: asked about, dropped;
        // ranked[next..]: not asked about yet, each worse than everything before it.
        let (mut kept, mut next) = (0, 0);
        let mut ids: Vec<&'s str> = Vec::new();
        while kept < depth && next < ranked.len() {
            let need = depth - kept;
            let take = (need + need / 4 + 8).min(ranked.len() - next);
            let rest = &mut ranked[next..];
            if take < rest.len() {
                rest.select_nth_unstable_by(take - 1, by_blend);
            }
            rest[..take].sort_unstable_by(by_blend);
            ids.clear();
            ids.extend(rest[..take].iter().map(|(id, _)| *id));
            let ok = crate::availability::sellable(av.as_ref(), &ids, degraded).await;
            for (j, ok) in (next..next + take).zip(ok) {
                if ok {
                    ranked.swap(kept, j);
                    kept += 1;
                }
            }
            next += take;
        }
        ranked.truncate(kept.min(depth));
    }

    async fn personalized(
        &self,
        req: &Request,
        user: &UserFeatures,
        n: usize,
        served_rows: Option<&mut Vec<PairFeatures>>,
        degraded: &mut Vec<&'static str>,
    ) -> (Vec<Item>, Strategy) {
        let cfg = &self.cfg;
        let excluded = self.excluded(req, user);
        let src = self.sources(req, user, degraded).await;
        let cands = self.blend(user, &src, &excluded);
        metrics::histogram!(m::CANDIDATES).record(cands.len() as f64);
        let mut ranked: Vec<(&str, Cand<'_>)> = cands.into_iter().collect();
        let depth = cfg.rerank_depth.max(n);
        self.best_sellable(&mut ranked, depth, degraded).await;
        let ids: Vec<&str> = ranked.iter().map(|(id, _)| *id).collect();
        let features = match self.store.products(&ids).await {
            Ok(f) => f,
            Err(_) => {
                degraded.push("feature_store");
                vec![None; ids.len()]
            }
        };
        // The ranker sees every candidate's product view; unknown products get an empty one.
        let empty = ProductFeatures::default();
        let pairs: Vec<(&ProductFeatures, CandidateSignals)> = ranked
            .iter()
            .zip(&features)
            .map(|((_, c), f)| (f.as_deref().unwrap_or(&empty), c.sig))
            .collect();
        let mut scores = Vec::with_capacity(pairs.len());
        // The feature rows are kept when the list is logged (its event carries them).
        let mut rows = Vec::new();
        let logged = served_rows.is_some();
        self.ranker
            .score_with_rows(user, &pairs, &mut scores, logged.then_some(&mut rows));
        let mut order: Vec<usize> = (0..ranked.len()).collect();
        order.sort_unstable_by(|&a, &b| {
            scores[b]
                .total_cmp(&scores[a])
                .then_with(|| ranked[a].0.cmp(ranked[b].0))
        });
        let chosen = diversify(
            &order,
            |i| pairs[i].0.category.as_deref(),
            n,
            cfg.max_per_category,
        );
        let mut items: Vec<Item> = chosen
            .iter()
            .map(|&i| {
                let (id, c) = &ranked[i];
                let (reason, because) = c.reason.unwrap_or((Reason::Trending, None));
                Item {
                    product_id: id.to_string(),
                    score: round(scores[i]),
                    reason,
                    because: because.map(str::to_string),
                    category: pairs[i].0.category.clone(),
                }
            })
            .collect();
        // Without rows no model ranked (the blend): there is nothing to learn from.
        if let Some(out) = served_rows
            && !rows.is_empty()
        {
            out.extend(chosen.iter().map(|&i| rows[i]));
        }
        if items.len() < n {
            self.backfill(req, user, &excluded, n, &mut items, degraded)
                .await;
        }
        (items, Strategy::Personalized)
    }

    /// Fills a list the candidate sources left short from the cold-start list (the user's
    /// segment, else overall, else trending), never repeating or returning an excluded item.
    async fn backfill(
        &self,
        req: &Request,
        user: &UserFeatures,
        excluded: &FxHashSet<&str>,
        n: usize,
        items: &mut Vec<Item>,
        degraded: &mut Vec<&'static str>,
    ) {
        let want = n + items.len() + excluded.len();
        let (extra, _) = self
            .cold(req, user.segment.as_deref(), want, degraded)
            .await;
        let have: FxHashSet<String> = items.iter().map(|i| i.product_id.clone()).collect();
        let missing = n.saturating_sub(items.len());
        items.extend(
            extra
                .into_iter()
                .filter(|i| {
                    !excluded.contains(i.product_id.as_str()) && !have.contains(&i.product_id)
                })
                .take(missing),
        );
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
        // The shared lists are borrowed, never copied: only the answer's items are.
        let mut cold = None;
        for key in segment.into_iter().chain([OVERALL]) {
            match self.cold.top(key).await {
                Ok(Some(l)) if !l.items.is_empty() => {
                    cold = Some(l);
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
        let trending = match cold {
            Some(_) => None,
            None => match self.store.trending().await {
                Ok(t) => Some(t),
                Err(_) => {
                    degraded.push("feature_store");
                    None
                }
            },
        };
        let list: &[(String, f64)] = match (&cold, &trending) {
            (Some(c), _) => &c.items,
            (None, Some(t)) => &t.items,
            (None, None) => &[],
        };
        let excluded: FxHashSet<&str> = req.context.iter().map(String::as_str).collect();
        let max = top_weight(list);
        // The first `n` of the list that are sellable and not excluded; the catalog is asked
        // about the list in order, a chunk at a time, only until `n` are found.
        let av = self.filter();
        let mut items = Vec::with_capacity(n.min(list.len()));
        let mut chunk: Vec<&(String, f64)> = Vec::new();
        let mut ids: Vec<&str> = Vec::new();
        let mut start = 0;
        while items.len() < n && start < list.len() {
            let need = n - items.len();
            let end = match av {
                Some(_) => (start + need + need / 4 + 8).min(list.len()),
                None => list.len(),
            };
            chunk.clear();
            chunk.extend(
                list[start..end]
                    .iter()
                    .filter(|(p, _)| !excluded.contains(p.as_str())),
            );
            let ok = match av {
                Some(av) => {
                    ids.clear();
                    ids.extend(chunk.iter().map(|(p, _)| p.as_str()));
                    crate::availability::sellable(av.as_ref(), &ids, degraded).await
                }
                None => vec![true; chunk.len()],
            };
            for ((p, w), _) in chunk.iter().zip(ok).filter(|(_, ok)| *ok).take(need) {
                items.push(Item {
                    product_id: p.clone(),
                    score: round(w / max),
                    reason: Reason::ColdStart,
                    because: segment.map(str::to_string),
                    category: None,
                });
            }
            start = end;
        }
        (items, Strategy::ColdStart)
    }

    /// Products similar to `product_id`: its neighbours in the current model's embedding
    /// of the co-visitation graph, else (no model, or a product newer than it) the
    /// products most often visited together with it.
    pub async fn similar(
        &self,
        product_id: &str,
        n: usize,
    ) -> Result<Option<Vec<Item>>, ScoringError> {
        let Some(av) = self.filter() else {
            return self.similar_unfiltered(product_id, n).await;
        };
        // Over-fetch, then keep the sellable ones.
        let Some(mut items) = self.similar_unfiltered(product_id, n * 3 + 10).await? else {
            return Ok(None);
        };
        let ids: Vec<&str> = items.iter().map(|i| i.product_id.as_str()).collect();
        let ok = crate::availability::sellable(av.as_ref(), &ids, &mut Vec::new()).await;
        let mut ok = ok.into_iter();
        items.retain(|_| ok.next().unwrap_or(false));
        items.truncate(n);
        Ok(Some(items))
    }

    async fn similar_unfiltered(
        &self,
        product_id: &str,
        n: usize,
    ) -> Result<Option<Vec<Item>>, ScoringError> {
        let model = self.model.as_ref().and_then(|h| h.get());
        if let Some(found) = model
            .as_ref()
            .and_then(|m| m.embeddings.as_ref())
            .and_then(|e| e.similar(product_id, n))
            && !found.is_empty()
        {
            return Ok(Some(
                found
                    .into_iter()
                    .map(|(id, s)| Item {
                        product_id: id.to_string(),
                        score: round(s as f64),
                        reason: Reason::Similar,
                        because: Some(product_id.to_string()),
                        category: None,
                    })
                    .collect(),
            ));
        }
        let Some(p) = self.store.products(&[product_id]).await?.pop().flatten() else {
            return Ok(None);
        };
        let max = top_covisit(&p);
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

/// Best by the blend first; ties by product id.
fn by_blend(a: &(&str, Cand<'_>), b: &(&str, Cand<'_>)) -> std::cmp::Ordering {
    b.1.score.total_cmp(&a.1.score).then_with(|| a.0.cmp(b.0))
}

fn round(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// Greedy diversification: keep the ranking (`order`, best first), but at most
/// `per_category` items of one category, backfilling from the rest when the list would
/// otherwise be short. Returns the chosen indices.
fn diversify<'c>(
    order: &[usize],
    category: impl Fn(usize) -> Option<&'c str>,
    n: usize,
    per_category: usize,
) -> Vec<usize> {
    let mut out = Vec::with_capacity(n);
    let mut overflow = Vec::new();
    let mut per: FxHashMap<&str, usize> = FxHashMap::default();
    for &i in order {
        if out.len() == n {
            break;
        }
        let full = category(i).is_some_and(|c| {
            let k = per.entry(c).or_default();
            *k += 1;
            *k > per_category
        });
        if full {
            overflow.push(i);
        } else {
            out.push(i);
        }
    }
    let missing = n.saturating_sub(out.len());
    out.extend(overflow.into_iter().take(missing));
    out
}
