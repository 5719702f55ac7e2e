//! Both protocols end to end on the bundled OTTO sample (20 sessions): the served path,
//! every baseline, every task; seconds to run.

mod common;

use common::otto;
use recstream_eval::{EvalParams, METHODS, Protocol, evaluate, period_cut};

#[test]
fn both_protocols_score_the_served_list_and_every_baseline() {
    let mut events = otto();
    let cut = (events.len() as f64 * 0.8) as usize;
    let test = events.split_off(cut);
    let params = EvalParams::default();
    let r = evaluate("otto", &events, &test, &params).unwrap();
    assert_eq!(r.protocols.len(), 2);
    // 2 protocols × 2 tasks × 6 methods × 2 cut-offs.
    assert_eq!(r.rows.len(), 2 * 2 * METHODS.len() * 2);
    for row in &r.rows {
        for v in [row.hr, row.recall, row.ndcg, row.mrr, row.coverage] {
            assert!((0.0..=1.0).contains(&v), "{row:?}");
        }
        assert!(row.ndcg <= row.hr + 1e-9, "{row:?}");
    }
    // Every method is scored on the same targets.
    for p in [Protocol::NextEvent, Protocol::NextPeriod] {
        for task in ["any", "discovery"] {
            let n: Vec<u64> = METHODS
                .iter()
                .map(|m| r.get(p, task, m, 20).unwrap().targets)
                .collect();
            assert!(n.iter().all(|x| *x == n[0]), "{p:?} {task}: {n:?}");
        }
    }
    let ne = r.get(Protocol::NextEvent, "any", "served", 20).unwrap();
    assert!(ne.targets > 50, "next-event targets: {}", ne.targets);
    assert!(ne.hr > 0.0, "the served list hits something: {ne:?}");
    for s in &r.served {
        assert_eq!(s.targets, s.personalized + s.cold_start);
        // The first 100 candidates are part of the pool.
        assert!(
            (0.0..=1.0).contains(&s.candidate_recall_100)
                && s.candidate_recall_100 <= s.candidate_recall_all
                && s.candidate_recall_all <= 1.0,
            "{s:?}"
        );
    }
    for p in &r.protocols {
        assert!(
            p.recommend_us_mean > 0.0 && p.recommend_us_p99 >= p.recommend_us_mean * 0.5,
            "{p:?}"
        );
    }
    let s = r
        .served
        .iter()
        .find(|s| s.protocol == Protocol::NextEvent && s.task == "any")
        .unwrap();
    assert!(s.personalized > 0);
    assert_eq!(s.targets, ne.targets);
    // The served list's hits in its top 20 come from the pool or the cold-start backfill:
    // on this sample the pool holds at least as many next items as the list's top 20.
    assert!(s.mean_candidates > 20.0, "{s:?}");
    assert!(s.candidate_recall_all >= ne.recall, "{s:?} vs {ne:?}");
    // The summary names the best baseline per protocol × task.
    let sum = r.summary(20);
    assert_eq!(sum.len(), 4);
    assert!(sum.iter().all(|l| l.best_baseline != "served"));
    // Every row with a ratio has its bootstrap interval, around the ratio.
    for l in &sum {
        let (Some(ratio), Some((lo, hi))) = (l.ratio, l.ratio_ci95) else {
            continue;
        };
        assert!(lo <= ratio + 1e-3 && ratio <= hi + 1e-3, "{l:?}");
    }
    let ne_any = &sum[0];
    assert!(ne_any.ratio_ci95.is_some(), "{ne_any:?}");
    // The per-target scores average to the rows' NDCG@20.
    let t = &r.per_target[0];
    let mean = t.ndcg.iter().map(|s| f64::from(s[0])).sum::<f64>() / t.ndcg.len() as f64;
    assert!((mean - ne.ndcg).abs() < 1e-3, "{mean} vs {}", ne.ndcg);
    // Deterministic: the same run gives the same numbers.
    let again = evaluate("otto", &events, &test, &params).unwrap();
    assert_eq!(r.rows, again.rows);
    assert_eq!(r.summary(20), again.summary(20));
}

#[test]
fn the_period_cut_falls_back_to_the_event_count_when_too_few_users_span_it() {
    let events = otto();
    let mut p = EvalParams {
        min_period_users: 1,
        ..EvalParams::default()
    };
    let (t, why) = period_cut(&events, &p);
    assert!(why.starts_with("time cut"), "{why}");
    assert!(t > 0 && t < events.len());
    p.min_period_users = 1_000_000;
    let (c, why) = period_cut(&events, &p);
    assert!(why.starts_with("event-count cut"), "{why}");
    assert_eq!(c, (events.len() as f64 * 0.8) as usize);
}

#[test]
fn invalid_parameters_are_refused_before_training() {
    let events = otto();
    for p in [
        EvalParams {
            ks: vec![],
            ..EvalParams::default()
        },
        EvalParams {
            ks: vec![500],
            ..EvalParams::default()
        },
        EvalParams {
            period_fraction: 1.0,
            ..EvalParams::default()
        },
        EvalParams {
            ease_items: 0,
            ..EvalParams::default()
        },
    ] {
        assert!(evaluate("otto", &events[..10], &events[10..], &p).is_err());
    }
}
