//! Candidate generation over the materialised views, the same sources and normalisation as
//! `scoring::Recommender`, so that training, offline evaluation and serving rank the same
//! kind of lists.
//!
//! ```text
//!  user.recent[..seed_items] ─► covisit lists of the seeds ──► covisit  (Σ seed_w · w / max),
//!                                                             covisit_last (seed 0 alone), covisit_raw
//!  user.items ─────────────────────────────────────────────► recent   (w / max)
//!  user.categories[..top_categories] ─► category top lists ──► category (share · w / max)
//!  trending list ────────────────────────────────────────────► trending (w / max)
//!        └─► drop excluded (purchased, in cart, the current item) ─► (id, CandidateSignals)
//! ```

use std::sync::Arc;

use recstream_features::view::top_weight;
use recstream_features::{ProductFeatures, UserFeatures};
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

use crate::features::CandidateSignals;

/// Candidate budgets and filters; the defaults are `ScoringConfig`'s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CandidateParams {
    /// Recent items of the user whose neighbours are candidates (1..=100).
    pub seed_items: usize,
    /// Co-visited (or embedding) neighbours taken per seed item.
    pub neighbours_per_seed: usize,
    /// The user's strongest categories whose top lists are candidates.
    pub top_categories: usize,
    /// Products taken from each of those categories' top lists.
    pub per_category: usize,
    /// Products taken from the trending list.
    pub trending: usize,
    /// The most recent item's strongest neighbours whose own co-visitation lists are
    /// followed (two hops; 0 = off).
    pub two_hop: usize,
    /// Items taken from each of those neighbours' lists.
    pub two_hop_take: usize,
    /// Whether the user's recent items themselves are candidates.
    pub include_recent: bool,
    /// Leave out products the user already bought.
    pub exclude_purchased: bool,
    /// Leave out products in the user's cart.
    pub exclude_in_cart: bool,
}

impl Default for CandidateParams {
    fn default() -> Self {
        CandidateParams {
            seed_items: 10,
            neighbours_per_seed: 50,
            top_categories: 3,
            per_category: 30,
            trending: 30,
            two_hop: 25,
            two_hop_take: 50,
            include_recent: true,
            exclude_purchased: true,
            exclude_in_cart: true,
        }
    }
}

impl CandidateParams {
    /// Checks the budgets' ranges; `Err` names the bad setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.seed_items == 0 || self.seed_items > 100 {
            return Err("candidates.seed_items must be in 1..=100".into());
        }
        if self.neighbours_per_seed > 1000 || self.per_category > 1000 || self.trending > 1000 {
            return Err("candidate budgets must be at most 1000".into());
        }
        if self.two_hop > 100 || self.two_hop_take > 1000 {
            return Err("candidates.two_hop must be at most 100, two_hop_take 1000".into());
        }
        Ok(())
    }
}

/// Candidates with their signals, sorted by product id (deterministic).
pub type Candidates = Vec<(String, CandidateSignals)>;

/// Builds the candidate set of one user.
///
/// `product` looks up a product's view (for the seeds' co-visitation lists),
/// `category_top` a category's best sellers (best first), `trending` the trending list.
/// `exclude` are further products never to return (the page's context).
pub fn generate<'t, S: AsRef<str> + 't>(
    user: &UserFeatures,
    params: &CandidateParams,
    mut product: impl FnMut(&str) -> Option<Arc<ProductFeatures>>,
    mut category_top: impl FnMut(&str) -> Option<&'t [(S, f64)]>,
    trending: &[(S, f64)],
    exclude: &[&str],
) -> Candidates {
    let mut cands: FxHashMap<String, CandidateSignals> = FxHashMap::default();
    let mut excluded: FxHashSet<&str> = exclude.iter().copied().collect();
    if params.exclude_purchased {
        excluded.extend(user.purchased.iter().map(String::as_str));
    }
    if params.exclude_in_cart {
        excluded.extend(user.cart.iter().map(|l| l.product_id.as_str()));
    }

    for (i, r) in user.recent.iter().take(params.seed_items).enumerate() {
        let sw = 1.0 / (1.0 + i as f64);
        let Some(pf) = product(&r.product_id) else {
            continue;
        };
        let max = top_covisit(&pf);
        for (nb, w) in pf.covisit.iter().take(params.neighbours_per_seed) {
            let s = cands.entry(nb.clone()).or_default();
            s.covisit += sw * (*w as f64) / max;
            s.covisit_raw += sw * (*w as f64);
            if i == 0 {
                s.covisit_last = (*w as f64) / max;
            }
        }
    }

    if let Some(last) = user.recent.first().and_then(|r| product(&r.product_id)) {
        let max_l = top_covisit(&last);
        for (j, wj) in last.covisit.iter().take(params.two_hop) {
            let Some(pj) = product(j) else { continue };
            let via = (*wj as f64) / max_l;
            let max_j = top_covisit(&pj);
            for (c, w) in pj.covisit.iter().take(params.two_hop_take) {
                cands.entry(c.clone()).or_default().covisit_2hop += via * (*w as f64) / max_j;
            }
        }
    }

    if params.include_recent && !user.items.is_empty() {
        let max = user.items[0].weight.value.max(f64::MIN_POSITIVE);
        for it in &user.items {
            let s = &mut cands.entry(it.id.clone()).or_default().recent;
            *s = s.max((it.weight.value / max).min(1.0));
        }
    }

    let cat_total: f64 = user
        .categories
        .iter()
        .take(params.top_categories)
        .map(|c| c.weight.value)
        .sum::<f64>()
        .max(f64::MIN_POSITIVE);
    for c in user.categories.iter().take(params.top_categories) {
        if let Some(top) = category_top(&c.id) {
            let max = top_weight(top);
            for (p, w) in top.iter().take(params.per_category) {
                cands.entry(p.as_ref().to_string()).or_default().category +=
                    (c.weight.value / cat_total) * (w / max);
            }
        }
    }

    let max = top_weight(trending);
    for (p, w) in trending.iter().take(params.trending) {
        let s = &mut cands.entry(p.as_ref().to_string()).or_default().trending;
        *s = s.max(w / max);
    }

    let mut out: Candidates = cands
        .into_iter()
        .filter(|(id, _)| !excluded.contains(id.as_str()))
        .collect();
    out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The strongest co-visitation weight of a product's list, at least 1 (the normaliser).
pub fn top_covisit(p: &ProductFeatures) -> f64 {
    p.covisit.first().map(|(_, w)| *w).unwrap_or(1.0).max(1.0) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use recstream_features::Decayed;
    use recstream_features::view::{RecentItem, Weighted};

    #[test]
    fn sources_are_normalised_and_exclusions_apply() {
        let user = UserFeatures {
            recent: vec![RecentItem {
                product_id: "a".into(),
                ts: 0,
                action: "view".into(),
            }],
            items: vec![Weighted {
                id: "a".into(),
                weight: Decayed { value: 2.0, at: 0 },
            }],
            categories: vec![Weighted {
                id: "c".into(),
                weight: Decayed { value: 2.0, at: 0 },
            }],
            purchased: vec!["x".into()],
            ..Default::default()
        };
        let a = Arc::new(ProductFeatures {
            product_id: "a".into(),
            covisit: vec![("b".into(), 4.0), ("x".into(), 2.0)],
            ..Default::default()
        });
        let cat: Vec<(String, f64)> = vec![("b".into(), 10.0), ("d".into(), 5.0)];
        let trending: Vec<(String, f64)> = vec![("e".into(), 1.0)];
        let c = generate(
            &user,
            &CandidateParams::default(),
            |id| (id == "a").then(|| a.clone()),
            |c| (c == "c").then_some(cat.as_slice()),
            &trending,
            &[],
        );
        let ids: Vec<&str> = c.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "d", "e"]);
        assert_eq!(c[1].1.covisit, 1.0);
        assert_eq!(c[1].1.category, 1.0);
        assert_eq!(c[2].1.category, 0.5);
        assert_eq!(c[0].1.recent, 1.0);
        assert_eq!(c[3].1.trending, 1.0);
        assert!(
            c.iter().all(|(_, s)| s.covisit_2hop == 0.0),
            "no view of b: no hop"
        );
    }

    #[test]
    fn the_second_hop_follows_the_last_items_strongest_neighbours() {
        // The user's last item is a; a's list: b (4), x (2); b's list: c (6), a (3); x's: d (1).
        let user = UserFeatures {
            recent: vec![RecentItem {
                product_id: "a".into(),
                ts: 0,
                action: "view".into(),
            }],
            ..Default::default()
        };
        let view = |id: &str, covisit: &[(&str, f32)]| {
            Arc::new(ProductFeatures {
                product_id: id.into(),
                covisit: covisit.iter().map(|(p, w)| (p.to_string(), *w)).collect(),
                ..Default::default()
            })
        };
        let views = [
            view("a", &[("b", 4.0), ("x", 2.0)]),
            view("b", &[("c", 6.0), ("a", 3.0)]),
            view("x", &[("d", 1.0)]),
        ];
        let none: &[(String, f64)] = &[];
        let run = |two_hop, two_hop_take| {
            let params = CandidateParams {
                two_hop,
                two_hop_take,
                ..CandidateParams::default()
            };
            generate(
                &user,
                &params,
                |id| views.iter().find(|v| v.product_id == id).cloned(),
                |_| None,
                none,
                &["a"],
            )
        };
        let c = run(10, 50);
        let hop = |id: &str| c.iter().find(|(p, _)| p == id).map(|(_, s)| s.covisit_2hop);
        // c: via b, (4/4)·(6/6); d: via x, (2/4)·(1/1); b and x are one hop (and none of two).
        assert_eq!(hop("c"), Some(1.0));
        assert_eq!(hop("d"), Some(0.5));
        assert_eq!(hop("b"), Some(0.0));
        assert_eq!(hop("a"), None, "excluded");
        // Only the strongest neighbour followed: d is not reached.
        let c = run(1, 50);
        assert!(c.iter().all(|(p, _)| p != "d"));
        // Off, or nothing taken from the neighbours' lists: only the first hop.
        for (hop, take) in [(0, 50), (10, 0)] {
            let ids: Vec<String> = run(hop, take).into_iter().map(|(p, _)| p).collect();
            assert_eq!(ids, ["b", "x"]);
        }
    }
}
