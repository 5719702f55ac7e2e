//! Ranking metrics over a set of relevant items (one item for the next-event protocol,
//! every item touched after the cut for the next-period protocol), binary gain.
//!
//! HR@K: a hit in the top K. Recall@K: hits / relevant. NDCG@K: DCG / ideal DCG of
//! min(relevant, K) hits. MRR@K: 1 / rank of the first hit. Coverage@K: distinct items
//! recommended in the top K over the catalog.
//!
//! One implementation for both evaluators: `recstream eval --models` (this crate's
//! [`crate::eval`]) and the served-list evaluator (`recstream-eval`).

use rustc_hash::FxHashSet;

/// Accumulates HR, recall, NDCG, MRR and coverage at one cut-off over many targets.
#[derive(Debug, Clone)]
pub struct SetMetrics {
    /// The cut-off K.
    pub k: usize,
    /// Targets added so far.
    pub n: u64,
    hits: f64,
    recall: f64,
    ndcg: f64,
    rr: f64,
    items: FxHashSet<String>,
}

impl SetMetrics {
    /// Empty, at cut-off `k`.
    pub fn new(k: usize) -> SetMetrics {
        SetMetrics {
            k,
            n: 0,
            hits: 0.0,
            recall: 0.0,
            ndcg: 0.0,
            rr: 0.0,
            items: FxHashSet::default(),
        }
    }

    /// Adds one ranked list (best first) and its relevant items (non-empty, distinct);
    /// returns this list's NDCG@k (0 for an empty `relevant`, which is not counted).
    pub fn add<S: AsRef<str>>(&mut self, ranked: &[S], relevant: &FxHashSet<&str>) -> f64 {
        if relevant.is_empty() {
            return 0.0;
        }
        self.n += 1;
        let top = &ranked[..ranked.len().min(self.k)];
        let mut dcg = 0.0;
        let mut found = 0usize;
        let mut first = None;
        for (pos, r) in top.iter().enumerate() {
            let r = r.as_ref();
            if !self.items.contains(r) {
                self.items.insert(r.to_string());
            }
            if relevant.contains(r) {
                found += 1;
                dcg += 1.0 / ((pos + 2) as f64).log2();
                first.get_or_insert(pos + 1);
            }
        }
        if let Some(rank) = first {
            self.hits += 1.0;
            self.rr += 1.0 / rank as f64;
        }
        let ideal: f64 = (0..relevant.len().min(self.k))
            .map(|p| 1.0 / ((p + 2) as f64).log2())
            .sum();
        self.ndcg += dcg / ideal;
        self.recall += found as f64 / relevant.len() as f64;
        dcg / ideal
    }

    /// Adds one ranked list and its single relevant item (the next-item protocol).
    pub fn add_one<S: AsRef<str>>(&mut self, ranked: &[S], target: &str) {
        let relevant: FxHashSet<&str> = std::iter::once(target).collect();
        self.add(ranked, &relevant);
    }

    /// Share of targets with a hit in the top K.
    pub fn hit_rate(&self) -> f64 {
        self.hits / self.n.max(1) as f64
    }
    /// Mean of found / relevant.
    pub fn recall(&self) -> f64 {
        self.recall / self.n.max(1) as f64
    }
    /// Mean NDCG@K (binary gain).
    pub fn ndcg(&self) -> f64 {
        self.ndcg / self.n.max(1) as f64
    }
    /// Mean reciprocal rank of the first hit (0 without one).
    pub fn mrr(&self) -> f64 {
        self.rr / self.n.max(1) as f64
    }
    /// Distinct items recommended / `catalog`.
    pub fn coverage(&self, catalog: usize) -> f64 {
        self.items.len() as f64 / catalog.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set<'a>(v: &[&'a str]) -> FxHashSet<&'a str> {
        v.iter().copied().collect()
    }

    #[test]
    fn single_relevant_item_equals_the_classic_definitions() {
        let mut m = SetMetrics::new(3);
        m.add(&["a", "b", "c"], &set(&["a"]));
        m.add(&["b", "d", "a"], &set(&["a"]));
        m.add(&["b", "c", "d", "a"], &set(&["a"]));
        m.add::<&str>(&[], &set(&["a"]));
        assert_eq!(m.n, 4);
        assert!((m.hit_rate() - 0.5).abs() < 1e-12);
        assert!((m.recall() - 0.5).abs() < 1e-12);
        assert!((m.ndcg() - (1.0 + 0.5) / 4.0).abs() < 1e-12);
        assert!((m.mrr() - (1.0 + 1.0 / 3.0) / 4.0).abs() < 1e-12);
        assert!((m.coverage(8) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn several_relevant_items_use_the_ideal_dcg_of_min_relevant_k() {
        let mut m = SetMetrics::new(2);
        // Relevant {a, b, c}; list hits b at rank 2 only: DCG = 1/log2(3), IDCG = 1 + 1/log2(3).
        m.add(&["x", "b", "a"], &set(&["a", "b", "c"]));
        let g = 1.0 / 3f64.log2();
        assert!((m.ndcg() - g / (1.0 + g)).abs() < 1e-12);
        assert!((m.recall() - 1.0 / 3.0).abs() < 1e-12);
        assert!((m.mrr() - 0.5).abs() < 1e-12);
        // A perfect list scores 1.
        let mut p = SetMetrics::new(2);
        p.add(&["a", "c"], &set(&["a", "b", "c"]));
        assert!((p.ndcg() - 1.0).abs() < 1e-12);
        // Empty truth is not a target.
        p.add(&["a"], &FxHashSet::default());
        assert_eq!(p.n, 1);
    }
}
