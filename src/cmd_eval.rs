//! `recstream eval`: the served recommendation path against the baselines, on both
//! protocols (see the `recstream-eval` crate).
//!
//! ```text
//!  dataset (YooChoose: train_full / test; others: 80 / 20 by time) ─► recstream_eval::evaluate
//!     (blocking pool) ─► table / JSON on stdout, summary + tables as Markdown
//!  scoring configuration: the endpoint's ([scoring] of --config, RECSTREAM__SCORING__*),
//!  overridden by a --params TOML file's `[scoring]`
//! ```

use std::path::Path;

use anyhow::Context;
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use recstream_eval::{EvalParams, Report};
use recstream_ingest::datasets::{CsvMapping, Dataset};
use recstream_scoring::ScoringConfig;

/// The evaluation parameters: the defaults with the endpoint's scoring configuration,
/// overridden by a TOML file's fields.
pub fn params(file: Option<&Path>, scoring: ScoringConfig) -> anyhow::Result<EvalParams> {
    let defaults = EvalParams {
        scoring,
        ..EvalParams::default()
    };
    let params = match file {
        None => defaults,
        Some(f) => {
            if !f.exists() {
                anyhow::bail!("parameters file {} does not exist", f.display());
            }
            Figment::from(Serialized::defaults(defaults))
                .merge(Toml::file(f))
                .extract()
                .with_context(|| format!("reading evaluation parameters from {}", f.display()))?
        }
    };
    params.validate()?;
    Ok(params)
}

/// Both protocols on one dataset.
pub async fn eval(
    d: Dataset,
    path: &Path,
    csv: Option<&CsvMapping>,
    params: &EvalParams,
) -> anyhow::Result<Report> {
    let (train, test) = crate::cmd_model::load_split(d, path, csv, params.train_fraction)?;
    let params = params.clone();
    let name = d.name().to_string();
    let report = tokio::task::spawn_blocking(move || {
        recstream_eval::evaluate(&name, &train, &test, &params)
    })
    .await
    .context("evaluation task failed")??;
    Ok(report)
}

/// `recstream eval --tune`: every point of the grid over `params` on every dataset under
/// `data_dir`, chosen by leave-one-dataset-out (see `recstream_eval::tune`).
pub async fn tune(
    data_dir: &Path,
    params: &EvalParams,
    min_targets: u64,
) -> anyhow::Result<recstream_eval::tune::TuneReport> {
    let mut sets = Vec::new();
    for d in Dataset::ALL {
        let p = data_dir.join(d.dir());
        if !p.exists() {
            eprintln!("skipping {d}: {} does not exist", p.display());
            continue;
        }
        let (train, test) = crate::cmd_model::load_split(d, &p, None, params.train_fraction)?;
        sets.push(recstream_eval::tune::TuneSet {
            name: d.name().to_string(),
            train,
            test,
        });
    }
    let grid = recstream_eval::tune::grid(params);
    eprintln!(
        "tuning: {} points × {} datasets (leave one dataset out)",
        grid.len(),
        sets.len()
    );
    let report = tokio::task::spawn_blocking(move || {
        recstream_eval::tune::tune(&sets, &grid, min_targets, |point, dataset, score| {
            eprintln!(
                "  {point:<32} {dataset:<11} {}",
                score.map_or("—".to_string(), |s| format!("{s:.3}"))
            );
        })
    })
    .await
    .context("tuning task failed")??;
    Ok(report)
}

/// A text rendering: the splits, every method's metrics, then served vs the best baseline
/// at NDCG@20 with its bootstrap interval.
pub fn table(r: &Report) -> String {
    let mut s = format!("dataset {}\n", r.dataset);
    for p in &r.protocols {
        s.push_str(&format!(
            "  {}: {} train / {} test events, {}; {:.1}s\n",
            p.protocol.name(),
            p.train_events,
            p.test_events,
            p.split,
            p.seconds
        ));
    }
    s.push_str(&format!(
        "  {:<12} {:<10} {:<11} {:>4} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
        "protocol", "task", "method", "K", "HR", "recall", "NDCG", "MRR", "coverage", "targets"
    ));
    for x in &r.rows {
        s.push_str(&format!(
            "  {:<12} {:<10} {:<11} {:>4} {:>8.4} {:>8.4} {:>8.4} {:>8.4} {:>8.4} {:>8}\n",
            x.protocol.name(),
            x.task,
            x.method,
            x.k,
            x.hr,
            x.recall,
            x.ndcg,
            x.mrr,
            x.coverage,
            x.targets
        ));
    }
    for l in r.summary(recstream_eval::SUMMARY_K) {
        s.push_str(&format!(
            "  served / best NDCG@{}: {} {}: {} ({}, {} targets) vs {}\n",
            recstream_eval::SUMMARY_K,
            l.protocol.name(),
            l.task,
            l.ratio.map_or("—".to_string(), |x| format!("{x:.3}×")),
            l.ratio_ci95
                .map_or("no interval".to_string(), |(lo, hi)| format!(
                    "95 % interval {lo:.3}–{hi:.3}"
                )),
            l.targets,
            l.best_baseline
        ));
    }
    s
}

/// The Markdown document: the command, the summary table, then every dataset's tables.
pub fn markdown(reports: &[Report], command: &str) -> String {
    let mut s = format!(
        "Produced by `{command}`.\n\n#### Summary: NDCG@20, served vs best baseline\n\n{}\n",
        recstream_eval::summary_markdown(reports, 20)
    );
    for r in reports {
        s.push_str(&r.markdown());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_take_the_endpoint_scoring_and_a_toml_file_over_them() {
        let scoring = ScoringConfig {
            max_per_category: 7,
            ..ScoringConfig::default()
        };
        let p = params(None, scoring.clone()).unwrap();
        assert_eq!(p.scoring, scoring);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("eval.toml");
        std::fs::write(&f, "max_targets = 50\n[scoring]\nmax_per_category = 20\n").unwrap();
        let p = params(Some(&f), scoring.clone()).unwrap();
        assert_eq!((p.max_targets, p.scoring.max_per_category), (50, 20));
        assert_eq!(p.scoring.seed_items, scoring.seed_items);
        std::fs::write(&f, "no_such_field = 1\n").unwrap();
        assert!(params(Some(&f), scoring.clone()).is_err(), "unknown fields");
        std::fs::write(&f, "ks = [0]\n").unwrap();
        assert!(params(Some(&f), scoring.clone()).is_err(), "invalid values");
        assert!(params(Some(&dir.path().join("missing.toml")), scoring).is_err());
    }
}
