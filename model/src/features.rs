//! Feature construction for (user, candidate product) pairs.
//!
//! ```text
//!  UserFeatures ──► UserContext::new (once per request: lookups, price reference, demographics)
//!                        │
//!  (ProductFeatures, CandidateSignals) ──► UserContext::pair ──► PairFeatures ([f64; N], on the stack)
//! ```
//!
//! The same code builds the rows the model is trained on (from the materialised views of a
//! replayed event log) and the rows it scores at serving time (from the feature store), so
//! there is no train/serve skew by construction. Every feature depends only on the views —
//! times are relative to the user's last event, never to the wall clock.

use recstream_features::{ProductFeatures, UserFeatures};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

/// What the candidate sources said about one candidate, each normalised to `[0, 1]`
/// exactly as `scoring::Recommender` blends them (before the blend weights).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CandidateSignals {
    /// `Σ_seeds seed_weight · covisit(seed, c) / max covisit(seed, ·)`, seed weights `1/(1+i)`.
    pub covisit: f64,
    /// The user's affinity to the item relative to their strongest item (re-engagement).
    pub recent: f64,
    /// `category share · (popularity in category / best in category)`.
    pub category: f64,
    /// Trending popularity relative to the top trending item.
    pub trending: f64,
    /// Co-visitation with the user's most recent item alone: `w / max` of that seed's list.
    #[serde(default)]
    pub covisit_last: f64,
    /// Raw co-visitation counts, `Σ_seeds seed_weight · covisit(seed, c)` (not normalised).
    #[serde(default)]
    pub covisit_raw: f64,
    /// Two hops from the user's most recent item `l`: `Σ_j (w(l, j) / max_l) · (w(j, c) /
    /// max_j)` over `l`'s strongest neighbours `j`.
    #[serde(default)]
    pub covisit_2hop: f64,
}

impl CandidateSignals {
    /// The fixed-weight blend of the heuristic recommender (its default weights; the
    /// second hop counts as co-visitation).
    pub fn heuristic(&self) -> f64 {
        0.6 * self.recent
            + 1.0 * (self.covisit + self.covisit_2hop)
            + 0.4 * self.category
            + 0.15 * self.trending
    }
}

/// Number of features of one pair.
pub const NUM_FEATURES: usize = 46;

/// One pair's raw (unstandardised) feature row.
pub type PairFeatures = [f64; NUM_FEATURES];

/// Version of the feature definitions; bumped whenever a feature changes meaning.
pub const FEATURE_VERSION: u32 = 3;

/// Names, in column order.
pub const FEATURE_NAMES: [&str; NUM_FEATURES] = [
    // candidate sources
    "sig_covisit",
    "sig_recent",
    "sig_category",
    "sig_trending",
    "sig_covisit_last",
    "covisit_raw_log",
    // user × item
    "item_affinity_log",
    "item_affinity_share",
    "seen",
    "recent_rank_inv",
    "recency_10m",
    "recency_1d",
    "last_action_view",
    "last_action_cart",
    "last_action_purchase",
    "in_cart",
    "purchased",
    // user × category
    "category_share",
    "category_is_top",
    "category_unknown",
    // product
    "popularity_log",
    "trending_log",
    "buyers_log",
    "cart_rate",
    "freshness_1h",
    // price band vs the user's usual
    "price_known",
    "price_log_ratio",
    "price_abs_log_ratio",
    // crosses
    "new_x_covisit",
    "new_x_category_share",
    "new_x_trending_log",
    "seen_x_covisit",
    // demographics (one-hot × popularity_log; zero when no profile)
    "age_18_24_x_pop",
    "age_25_34_x_pop",
    "age_35_44_x_pop",
    "age_45_54_x_pop",
    "age_55p_x_pop",
    "gender_f_x_pop",
    "gender_m_x_pop",
    // the candidate sources again, on a log scale: a linear model over both scales fits how
    // a signal's first few co-visits matter more than its next hundred (added in version 2)
    "sig_covisit_log",
    "sig_recent_log",
    "sig_category_log",
    "sig_trending_log",
    "sig_covisit_last_log",
    // two hops of co-visitation from the most recent item (added in version 3)
    "sig_covisit_2hop",
    "sig_covisit_2hop_log",
];

const AGE_BANDS: [&str; 5] = ["18-24", "25-34", "35-44", "45-54", "55+"];
const DEMO_START: usize = 32;
/// Demographic columns: five age bands, two genders.
const DEMO_LEN: usize = AGE_BANDS.len() + 2;
const LOG_START: usize = DEMO_START + DEMO_LEN;
/// The version-3 two-hop columns, after the five log-scale source columns.
const HOP_START: usize = LOG_START + 5;
/// Added to a source signal (each in `[0, 1]`, `covisit` a sum of such) before its log.
const LOG_FLOOR: f64 = 1e-3;
/// `ln(LOG_FLOOR)`, the log feature of a source that did not bring the candidate.
const LN_FLOOR: f64 = -6.907_755_278_982_137;

/// A source signal on the log scale. Most candidates come from one or two sources: the
/// others are 0, whose feature is `ln` of the floor.
#[inline]
fn log_signal(v: f64) -> f64 {
    if v > 0.0 {
        (LOG_FLOOR + v).ln()
    } else {
        LN_FLOOR
    }
}

const TEN_MINUTES_MS: f64 = 600_000.0;
const DAY_MS: f64 = 86_400_000.0;
const HOUR_MS: f64 = 3_600_000.0;

/// The feature schema stored in every artifact: names, the half-lives the views were built
/// with, and the standardisation learnt on the training rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureSchema {
    /// Feature definitions version ([`FEATURE_VERSION`]); an artifact of another version
    /// is refused on load ([`crate::ModelError::Incompatible`]).
    pub version: u32,
    /// Feature names, in column order.
    pub names: Vec<String>,
    /// Half-life of user affinities the features assume (the feature pipeline's setting).
    pub user_half_life_ms: f64,
    /// Half-life of product popularity (trending).
    pub trending_half_life_ms: f64,
    /// Per-feature mean and scale: the model sees `(x - mean) / scale`.
    pub mean: Vec<f64>,
    /// Per-feature scale: the standard deviation on the training rows (1 where it is
    /// near 0); always positive.
    pub scale: Vec<f64>,
}

impl FeatureSchema {
    /// The current definitions with identity standardisation.
    pub fn new(user_half_life_ms: f64, trending_half_life_ms: f64) -> FeatureSchema {
        FeatureSchema {
            version: FEATURE_VERSION,
            names: FEATURE_NAMES.iter().map(|s| s.to_string()).collect(),
            user_half_life_ms,
            trending_half_life_ms,
            mean: vec![0.0; NUM_FEATURES],
            scale: vec![1.0; NUM_FEATURES],
        }
    }

    /// Fits the standardisation on training rows (flat, row-major). Two passes (mean, then
    /// squared deviations): a constant column, such as the log of a source no candidate
    /// came from, gets exactly zero variance and scale 1, where `E[x²] − E[x]²` would leave
    /// cancellation noise and a scale of ~1e-7 that blows up the first different value.
    pub fn fit_scaling(&mut self, rows: &[f64]) {
        let n = (rows.len() / NUM_FEATURES).max(1) as f64;
        let mut mean = [0.0; NUM_FEATURES];
        for row in rows.chunks_exact(NUM_FEATURES) {
            for j in 0..NUM_FEATURES {
                mean[j] += row[j];
            }
        }
        for m in &mut mean {
            *m /= n;
        }
        let mut sq = [0.0; NUM_FEATURES];
        for row in rows.chunks_exact(NUM_FEATURES) {
            for j in 0..NUM_FEATURES {
                let d = row[j] - mean[j];
                sq[j] += d * d;
            }
        }
        for j in 0..NUM_FEATURES {
            let sd = (sq[j] / n).sqrt();
            self.mean[j] = mean[j];
            self.scale[j] = if sd > 1e-9 { sd } else { 1.0 };
        }
    }

    /// Standardises one row in place.
    #[inline]
    pub fn standardise(&self, row: &mut [f64]) {
        for ((x, m), s) in row.iter_mut().zip(&self.mean).zip(&self.scale) {
            *x = (*x - m) / s;
        }
    }

    /// Checks that an artifact's schema matches the code's feature definitions.
    pub fn check_compatible(&self) -> Result<(), String> {
        if self.version != FEATURE_VERSION {
            return Err(format!(
                "feature version {} (this build computes version {FEATURE_VERSION})",
                self.version
            ));
        }
        if self.names.len() != NUM_FEATURES
            || self.names.iter().zip(FEATURE_NAMES).any(|(a, b)| a != b)
        {
            return Err("feature names differ from this build's".into());
        }
        if self.mean.len() != NUM_FEATURES || self.scale.len() != NUM_FEATURES {
            return Err("standardisation has the wrong length".into());
        }
        if self.scale.iter().any(|s| !(s.is_finite() && *s > 0.0))
            || self.mean.iter().any(|m| !m.is_finite())
        {
            return Err("standardisation is not finite".into());
        }
        Ok(())
    }
}

/// Per-request view of one user: built once, then [`pair`](UserContext::pair) per candidate
/// with no allocation.
pub struct UserContext<'a> {
    user: &'a UserFeatures,
    reference_ts: i64,
    user_h: f64,
    trend_h: f64,
    item_total: f64,
    cat_total: f64,
    items: FxHashMap<&'a str, f64>,
    recent: FxHashMap<&'a str, usize>,
    cart: FxHashMap<&'a str, ()>,
    purchased: FxHashMap<&'a str, ()>,
    price_ref: Option<f64>,
    demo: [f64; DEMO_LEN],
}

fn ln_price(p: &ProductFeatures) -> Option<f64> {
    p.price_minor.filter(|p| *p > 0).map(|p| (p as f64).ln())
}

impl<'a> UserContext<'a> {
    /// `candidates` are the products about to be scored; those the user engaged with set
    /// the user's usual price band (their affinity-weighted mean log price).
    pub fn new<'p>(
        user: &'a UserFeatures,
        candidates: impl IntoIterator<Item = &'p ProductFeatures>,
        schema: &FeatureSchema,
    ) -> UserContext<'a> {
        let reference_ts = user.last_ts;
        let user_h = schema.user_half_life_ms;
        let mut items = FxHashMap::with_capacity_and_hasher(user.items.len(), Default::default());
        let mut item_total = 0.0;
        for it in &user.items {
            let v = it.weight.value_at(reference_ts, user_h);
            item_total += v;
            items.insert(it.id.as_str(), v);
        }
        let cat_total = user
            .categories
            .iter()
            .map(|c| c.weight.value_at(reference_ts, user_h))
            .sum::<f64>();
        let recent = user
            .recent
            .iter()
            .enumerate()
            .map(|(i, r)| (r.product_id.as_str(), i))
            .collect();
        let cart = user
            .cart
            .iter()
            .map(|l| (l.product_id.as_str(), ()))
            .collect();
        let purchased = user.purchased.iter().map(|p| (p.as_str(), ())).collect();
        let (mut wsum, mut psum) = (0.0, 0.0);
        for p in candidates {
            if let (Some(w), Some(lp)) = (items.get(p.product_id.as_str()), ln_price(p)) {
                wsum += w;
                psum += w * lp;
            }
        }
        let price_ref = (wsum > 0.0).then(|| psum / wsum);
        let mut demo = [0.0; DEMO_LEN];
        if let Some(seg) = &user.segment {
            let mut parts = seg.split('|');
            let age = parts.next().unwrap_or("*");
            let gender = parts.next().unwrap_or("*");
            if let Some(i) = AGE_BANDS.iter().position(|a| a.eq_ignore_ascii_case(age)) {
                demo[i] = 1.0;
            }
            match gender.chars().next().map(|c| c.to_ascii_lowercase()) {
                Some('f') => demo[5] = 1.0,
                Some('m') => demo[6] = 1.0,
                _ => {}
            }
        }
        UserContext {
            user,
            reference_ts,
            user_h,
            trend_h: schema.trending_half_life_ms,
            item_total,
            cat_total,
            items,
            recent,
            cart,
            purchased,
            price_ref,
            demo,
        }
    }

    /// Whether the user has touched this product (it is in their recent items or affinities).
    pub fn knows(&self, product_id: &str) -> bool {
        self.recent.contains_key(product_id) || self.items.contains_key(product_id)
    }

    /// Fills `out` with the raw features of (user, product).
    pub fn pair(&self, p: &ProductFeatures, s: &CandidateSignals, out: &mut PairFeatures) {
        let id = p.product_id.as_str();
        let t = self.reference_ts;
        out[0] = s.covisit;
        out[1] = s.recent;
        out[2] = s.category;
        out[3] = s.trending;
        out[4] = s.covisit_last;
        out[5] = s.covisit_raw.max(0.0).ln_1p();

        let aff = self.items.get(id).copied().unwrap_or(0.0);
        out[6] = aff.ln_1p();
        out[7] = if self.item_total > 0.0 {
            aff / self.item_total
        } else {
            0.0
        };
        let (seen, rank_inv, r10m, r1d, av, ac, ap) = match self.recent.get(id) {
            Some(&i) => {
                let r = &self.user.recent[i];
                let dt = (t - r.ts).max(0) as f64;
                let (av, ac, ap) = match r.action.as_str() {
                    "add_to_cart" => (0.0, 1.0, 0.0),
                    "purchase" => (0.0, 0.0, 1.0),
                    _ => (1.0, 0.0, 0.0),
                };
                (
                    1.0,
                    1.0 / (1.0 + i as f64),
                    (-dt / TEN_MINUTES_MS).exp2(),
                    (-dt / DAY_MS).exp2(),
                    av,
                    ac,
                    ap,
                )
            }
            None if aff > 0.0 => (1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
            None => (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
        };
        out[8] = seen;
        out[9] = rank_inv;
        out[10] = r10m;
        out[11] = r1d;
        out[12] = av;
        out[13] = ac;
        out[14] = ap;
        out[15] = if self.cart.contains_key(id) { 1.0 } else { 0.0 };
        out[16] = if self.purchased.contains_key(id) {
            1.0
        } else {
            0.0
        };

        let (share, top, unknown) = match p.category.as_deref() {
            Some(c) => match self.user.categories.iter().position(|w| w.id == c) {
                Some(i) if self.cat_total > 0.0 => (
                    self.user.categories[i].weight.value_at(t, self.user_h) / self.cat_total,
                    if i == 0 { 1.0 } else { 0.0 },
                    0.0,
                ),
                _ => (0.0, 0.0, 0.0),
            },
            None => (0.0, 0.0, 1.0),
        };
        out[17] = share;
        out[18] = top;
        out[19] = unknown;

        let total = p.counts.total() as f64;
        let pop = total.ln_1p();
        out[20] = pop;
        let trend = p.popularity.value_at(t, self.trend_h).max(0.0).ln_1p();
        out[21] = trend;
        out[22] = (p.buyers as f64).ln_1p();
        out[23] = (p.counts.add_to_cart + p.counts.purchase) as f64 / (total + 5.0);
        out[24] = if p.last_ts > 0 {
            (-((t - p.last_ts).max(0) as f64) / HOUR_MS).exp2()
        } else {
            0.0
        };

        match (self.price_ref, ln_price(p)) {
            (Some(r), Some(lp)) => {
                let d = (lp - r).clamp(-3.0, 3.0);
                out[25] = 1.0;
                out[26] = d;
                out[27] = d.abs();
            }
            _ => {
                out[25] = 0.0;
                out[26] = 0.0;
                out[27] = 0.0;
            }
        }

        let new = 1.0 - seen;
        out[28] = new * s.covisit;
        out[29] = new * share;
        out[30] = new * trend;
        out[31] = seen * s.covisit;
        for (k, d) in self.demo.iter().enumerate() {
            out[DEMO_START + k] = d * pop;
        }
        for (k, v) in [s.covisit, s.recent, s.category, s.trending, s.covisit_last]
            .into_iter()
            .enumerate()
        {
            out[LOG_START + k] = log_signal(v);
        }
        out[HOP_START] = s.covisit_2hop;
        out[HOP_START + 1] = log_signal(s.covisit_2hop);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use recstream_features::Decayed;
    use recstream_features::view::{RecentItem, Weighted};

    #[test]
    fn names_match_count_and_are_unique() {
        let mut n: Vec<&str> = FEATURE_NAMES.to_vec();
        n.sort_unstable();
        n.dedup();
        assert_eq!(n.len(), NUM_FEATURES);
        assert!(FeatureSchema::new(1.0, 1.0).check_compatible().is_ok());
    }

    #[test]
    fn pair_features_reflect_history() {
        let user = UserFeatures {
            user_id: "u".into(),
            recent: vec![RecentItem {
                product_id: "a".into(),
                ts: 1_000,
                action: "add_to_cart".into(),
            }],
            items: vec![Weighted {
                id: "a".into(),
                weight: Decayed {
                    value: 3.0,
                    at: 1_000,
                },
            }],
            categories: vec![Weighted {
                id: "c".into(),
                weight: Decayed {
                    value: 3.0,
                    at: 1_000,
                },
            }],
            segment: Some("25-34|f|eu".into()),
            last_ts: 1_000,
            ..Default::default()
        };
        let a = ProductFeatures {
            product_id: "a".into(),
            category: Some("c".into()),
            price_minor: Some(1000),
            ..Default::default()
        };
        let b = ProductFeatures {
            product_id: "b".into(),
            category: Some("d".into()),
            price_minor: Some(4000),
            ..Default::default()
        };
        let schema = FeatureSchema::new(3.6e6, 3.6e6);
        let ctx = UserContext::new(&user, [&a, &b], &schema);
        let mut fa = [0.0; NUM_FEATURES];
        let mut fb = [0.0; NUM_FEATURES];
        ctx.pair(&a, &CandidateSignals::default(), &mut fa);
        ctx.pair(&b, &CandidateSignals::default(), &mut fb);
        assert_eq!((fa[8], fa[13], fa[17], fa[18]), (1.0, 1.0, 1.0, 1.0));
        assert_eq!((fb[8], fb[17]), (0.0, 0.0));
        assert_eq!(fa[26], 0.0, "a is the price reference");
        assert!((fb[26] - 4f64.ln()).abs() < 1e-12);
        assert_eq!(fa[DEMO_START + 1], fa[20]);
        assert_eq!(fa[DEMO_START + 5], fa[20]);
    }

    #[test]
    fn source_signals_are_also_on_a_log_scale() {
        let user = UserFeatures {
            user_id: "u".into(),
            ..Default::default()
        };
        let p = ProductFeatures {
            product_id: "p".into(),
            ..Default::default()
        };
        let schema = FeatureSchema::new(3.6e6, 3.6e6);
        let ctx = UserContext::new(&user, [&p], &schema);
        let s = CandidateSignals {
            covisit: 1.5,
            covisit_last: 0.25,
            trending: 1.0,
            ..Default::default()
        };
        let mut f = [0.0; NUM_FEATURES];
        ctx.pair(&p, &s, &mut f);
        let names = &FEATURE_NAMES[LOG_START..HOP_START];
        assert_eq!(
            names,
            [
                "sig_covisit_log",
                "sig_recent_log",
                "sig_category_log",
                "sig_trending_log",
                "sig_covisit_last_log"
            ]
        );
        let want = [1.5, 0.0, 0.0, 1.0, 0.25].map(|v: f64| (LOG_FLOOR + v).ln());
        for (got, want) in f[LOG_START..HOP_START].iter().zip(want) {
            assert!((got - want).abs() < 1e-12, "{got} != {want}");
        }
        assert!((LN_FLOOR - LOG_FLOOR.ln()).abs() < 1e-15);
        assert_eq!(
            &FEATURE_NAMES[HOP_START..],
            ["sig_covisit_2hop", "sig_covisit_2hop_log"]
        );
        assert_eq!((f[HOP_START], f[HOP_START + 1]), (0.0, LN_FLOOR));
        let hop = CandidateSignals {
            covisit_2hop: 0.5,
            ..s
        };
        ctx.pair(&p, &hop, &mut f);
        assert_eq!(
            (f[HOP_START], f[HOP_START + 1]),
            (0.5, (LOG_FLOOR + 0.5).ln())
        );
    }

    #[test]
    fn a_constant_column_standardises_to_scale_one() {
        // 1,000 rows whose every column is ln(0.001) except column 0 (0 and 1 alternating).
        let mut rows = vec![LN_FLOOR; 1000 * NUM_FEATURES];
        for (i, row) in rows.chunks_exact_mut(NUM_FEATURES).enumerate() {
            row[0] = (i % 2) as f64;
        }
        let mut schema = FeatureSchema::new(1.0, 1.0);
        schema.fit_scaling(&rows);
        assert!((schema.scale[0] - 0.5).abs() < 1e-12);
        assert!(
            schema.scale[1..].iter().all(|s| *s == 1.0),
            "{:?}",
            schema.scale
        );
        assert!(schema.check_compatible().is_ok());
    }
}
