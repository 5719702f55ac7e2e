//! EASE (Steck 2019, "Embarrassingly Shallow Autoencoders for Sparse Data"): closed-form
//! item-item regression with a zero diagonal.
//!
//! ```text
//!  X (users × items, binary) ─► G = XᵀX + λI ─► P = G⁻¹ (Cholesky, G is SPD)
//!  B = I − P · diagMat(1 / diag(P))      i.e. B_ij = −P_ij / P_jj, B_jj = 0
//!  score(user, j) = Σ_{i ∈ history} B_ij
//! ```
//!
//! Restricted to the `max_items` most interacted items of the training log so that the
//! cubic inverse runs in seconds; items outside it are never recommended by EASE.

use ndarray::Array2;
use rustc_hash::FxHashMap;

use crate::error::{EvalError, Result};

/// Inverse of a symmetric positive definite matrix by Cholesky (G = L Lᵀ, G⁻¹ = L⁻ᵀ L⁻¹).
pub fn spd_inverse(g: &Array2<f64>) -> Result<Array2<f64>> {
    let n = g.nrows();
    if g.ncols() != n {
        return Err(EvalError::InvalidParams("matrix must be square".into()));
    }
    // Cholesky, lower triangle, row-major friendly loops.
    let mut l = Array2::<f64>::zeros((n, n));
    for i in 0..n {
        for j in 0..=i {
            let mut s = g[[i, j]];
            let (li, lj) = (l.row(i), l.row(j));
            for k in 0..j {
                s -= li[k] * lj[k];
            }
            if i == j {
                if !(s > 0.0 && s.is_finite()) {
                    return Err(EvalError::NotPositiveDefinite(i));
                }
                l[[i, i]] = s.sqrt();
            } else {
                l[[i, j]] = s / l[[j, j]];
            }
        }
    }
    // M = L⁻¹ (lower triangular), by forward substitution, column by column of the identity.
    let mut m = Array2::<f64>::zeros((n, n));
    for i in 0..n {
        m[[i, i]] = 1.0 / l[[i, i]];
        for j in 0..i {
            let mut s = 0.0;
            for k in j..i {
                s += l[[i, k]] * m[[k, j]];
            }
            m[[i, j]] = -s / l[[i, i]];
        }
    }
    // G⁻¹ = Mᵀ M; symmetric, entries (i, j) = Σ_{k ≥ max(i, j)} M_ki M_kj.
    let mt = m.t().to_owned();
    let mut inv = Array2::<f64>::zeros((n, n));
    for i in 0..n {
        for j in 0..=i {
            let (ri, rj) = (mt.row(i), mt.row(j));
            let mut s = 0.0;
            for k in i..n {
                s += ri[k] * rj[k];
            }
            inv[[i, j]] = s;
            inv[[j, i]] = s;
        }
    }
    Ok(inv)
}

/// EASE (Steck 2019): the closed-form item-item weights `B` over the most interacted items, scoring a user's history row `x` as `x·B`.
pub struct Ease {
    index: FxHashMap<String, usize>,
    items: Vec<String>,
    b: Array2<f64>,
}

impl Ease {
    /// Fits on users' item sets (each a list of distinct items). `max_items` bounds the
    /// item vocabulary (most frequent first), `lambda` is the L2 weight.
    pub fn fit<'a>(
        users: impl IntoIterator<Item = &'a [String]> + Clone,
        max_items: usize,
        lambda: f64,
    ) -> Result<Ease> {
        if max_items == 0 || max_items > 5000 {
            return Err(EvalError::InvalidParams(
                "ease max_items must be in 1..=5000".into(),
            ));
        }
        if !(lambda.is_finite() && lambda > 0.0) {
            return Err(EvalError::InvalidParams(
                "ease lambda must be positive".into(),
            ));
        }
        let mut freq: FxHashMap<&str, u64> = FxHashMap::default();
        for u in users.clone() {
            for i in u {
                *freq.entry(i.as_str()).or_default() += 1;
            }
        }
        let mut by_freq: Vec<(&str, u64)> = freq.into_iter().collect();
        by_freq.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        by_freq.truncate(max_items);
        let items: Vec<String> = by_freq.iter().map(|(i, _)| i.to_string()).collect();
        let index: FxHashMap<String, usize> = items
            .iter()
            .enumerate()
            .map(|(n, i)| (i.clone(), n))
            .collect();
        let n = items.len();
        let mut g = Array2::<f64>::zeros((n, n));
        let mut idx = Vec::new();
        for u in users {
            idx.clear();
            idx.extend(u.iter().filter_map(|i| index.get(i).copied()));
            for &a in &idx {
                for &b in &idx {
                    g[[a, b]] += 1.0;
                }
            }
        }
        for i in 0..n {
            g[[i, i]] += lambda;
        }
        let p = spd_inverse(&g)?;
        let mut b = Array2::<f64>::zeros((n, n));
        for i in 0..n {
            for j in 0..n {
                if i != j {
                    b[[i, j]] = -p[[i, j]] / p[[j, j]];
                }
            }
        }
        Ok(Ease { index, items, b })
    }

    /// Items the model covers (the most interacted `ease_items`).
    pub fn items(&self) -> usize {
        self.items.len()
    }

    /// Items ranked for a user with these history items (best first, history excluded),
    /// at most `n`.
    pub fn recommend<'s>(
        &'s self,
        history: impl Iterator<Item = &'s str>,
        n: usize,
    ) -> Vec<&'s str> {
        let rows: Vec<usize> = history.filter_map(|i| self.index.get(i).copied()).collect();
        if rows.is_empty() {
            return Vec::new();
        }
        let mut scores = vec![0.0f64; self.items.len()];
        for &r in &rows {
            for (s, b) in scores.iter_mut().zip(self.b.row(r)) {
                *s += b;
            }
        }
        for &r in &rows {
            scores[r] = f64::NEG_INFINITY;
        }
        let mut order: Vec<usize> = (0..scores.len()).filter(|&j| scores[j] > 0.0).collect();
        order.sort_unstable_by(|&a, &b| {
            scores[b]
                .total_cmp(&scores[a])
                .then_with(|| self.items[a].cmp(&self.items[b]))
        });
        order.truncate(n);
        order.into_iter().map(|j| self.items[j].as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_xoshiro::Xoshiro256Plus;

    #[test]
    fn inverse_times_matrix_is_identity() {
        let mut rng = Xoshiro256Plus::seed_from_u64(7);
        let n = 40;
        let a = Array2::from_shape_fn((n, n), |_| rng.gen_range(-1.0..1.0));
        let g = a.t().dot(&a) + Array2::<f64>::eye(n) * 0.5;
        let inv = spd_inverse(&g).unwrap();
        let id = g.dot(&inv);
        for i in 0..n {
            for j in 0..n {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!(
                    (id[[i, j]] - want).abs() < 1e-9,
                    "({i},{j}) = {}",
                    id[[i, j]]
                );
            }
        }
    }

    #[test]
    fn a_matrix_that_is_not_positive_definite_is_an_error() {
        let g = Array2::from_shape_vec((2, 2), vec![1.0, 2.0, 2.0, 1.0]).unwrap();
        assert!(matches!(
            spd_inverse(&g),
            Err(EvalError::NotPositiveDefinite(1))
        ));
    }

    #[test]
    fn ease_recommends_what_co_occurs_and_never_the_history() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        // a and b always together; c with d.
        let users = [
            s(&["a", "b"]),
            s(&["a", "b"]),
            s(&["a", "b", "e"]),
            s(&["c", "d"]),
            s(&["c", "d"]),
        ];
        let ease = Ease::fit(users.iter().map(Vec::as_slice), 10, 0.5).unwrap();
        let rec = ease.recommend(["a"].into_iter(), 3);
        assert_eq!(rec.first(), Some(&"b"));
        assert!(!rec.contains(&"a"));
        assert!(!rec.contains(&"c") && !rec.contains(&"d"));
        let rec = ease.recommend(["c"].into_iter(), 3);
        assert_eq!(rec, vec!["d"]);
        assert!(Ease::fit(users.iter().map(Vec::as_slice), 0, 0.5).is_err());
        assert!(Ease::fit(users.iter().map(Vec::as_slice), 10, 0.0).is_err());
    }
}
