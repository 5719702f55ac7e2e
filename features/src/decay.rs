//! Exponentially time-decayed values, in *event* time.
//!
//! A [`Decayed`] holds `Σ wᵢ · 2^(−(t_ref − tᵢ)/half_life)` with `t_ref` the latest event
//! time folded in. Folding is commutative, so the value depends only on the set of events,
//! not their arrival order, and never on the wall clock: a replay after a crash computes
//! exactly what the first run computed.

use serde::{Deserialize, Serialize};

/// A sum of weights decayed with one half-life to a reference event time (see the
/// module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Decayed {
    /// The value as of `at`.
    pub value: f64,
    /// Reference time, epoch ms.
    pub at: i64,
}

#[inline]
fn factor(dt_ms: i64, half_life_ms: f64) -> f64 {
    (-(dt_ms as f64) / half_life_ms).exp2()
}

impl Decayed {
    /// Folds in weight `w` observed at `t`.
    #[inline]
    pub fn add(&mut self, w: f64, t: i64, half_life_ms: f64) {
        if self.value == 0.0 && self.at == 0 {
            *self = Decayed { value: w, at: t };
        } else if t >= self.at {
            self.value = self.value * factor(t.saturating_sub(self.at), half_life_ms) + w;
            self.at = t;
        } else {
            self.value += w * factor(self.at.saturating_sub(t), half_life_ms);
        }
    }

    /// The value decayed to time `t` (never grows: before `at` it is the value at `at`).
    #[inline]
    pub fn value_at(&self, t: i64, half_life_ms: f64) -> f64 {
        if t <= self.at {
            self.value
        } else {
            self.value * factor(t.saturating_sub(self.at), half_life_ms)
        }
    }

    /// The sum of two decayed values (used to merge per-shard partials).
    pub fn merged(self, other: Decayed, half_life_ms: f64) -> Decayed {
        let mut out = self;
        if other.value != 0.0 || other.at != 0 {
            out.add(other.value, other.at, half_life_ms);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const H: f64 = 3_600_000.0;

    /// Timestamps from a restored snapshot are not trusted to be near each other: a value
    /// stamped at `i64::MIN` read at `i64::MAX` (found by cargo-fuzz, `snapshot_restore`)
    /// decays to zero instead of overflowing.
    #[test]
    fn timestamps_at_the_ends_of_i64_do_not_overflow() {
        let old = Decayed {
            value: 5.0,
            at: i64::MIN,
        };
        assert_eq!(old.value_at(i64::MAX, H), 0.0);
        let mut d = old;
        d.add(1.0, i64::MAX, H);
        assert_eq!((d.value, d.at), (1.0, i64::MAX));
        let mut late = Decayed {
            value: 5.0,
            at: i64::MAX,
        };
        late.add(1.0, i64::MIN, H);
        assert_eq!(late.value, 5.0);
    }

    #[test]
    fn halves_after_one_half_life() {
        let mut d = Decayed::default();
        d.add(8.0, 0, H);
        assert!((d.value_at(3_600_000, H) - 4.0).abs() < 1e-12);
    }

    proptest! {
        /// The value never increases as time passes.
        #[test]
        fn decay_is_monotone(w in 0.0f64..1e6, t in 0i64..1_000_000_000, a in 0i64..1_000_000_000, b in 0i64..1_000_000_000) {
            let mut d = Decayed::default();
            d.add(w, t, H);
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(d.value_at(hi, H) <= d.value_at(lo, H) + 1e-9);
        }

        /// Folding order does not matter (up to float rounding).
        #[test]
        fn order_independent(mut evs in proptest::collection::vec((0.1f64..10.0, 0i64..100_000_000), 1..40), seed in any::<u64>()) {
            let mut a = Decayed::default();
            for (w, t) in &evs { a.add(*w, *t, H); }
            // A deterministic shuffle.
            let n = evs.len();
            for i in 0..n { let j = ((seed.wrapping_mul(i as u64 + 1)) % n as u64) as usize; evs.swap(i, j); }
            let mut b = Decayed::default();
            for (w, t) in &evs { b.add(*w, *t, H); }
            prop_assert_eq!(a.at, b.at);
            prop_assert!((a.value - b.value).abs() <= 1e-9 * a.value.abs().max(1.0));
        }
    }
}
