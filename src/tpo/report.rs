//! The page of a TPO run, or of several on the same axes (the demonstration's TPO and
//! direct-response runs): RUN_DIR/report.html.

use super::json_files::read_jsonl;
use super::summary::{table, IterationSummary};
use crate::report::chart::{Chart, Series};
use crate::report::updates::by_update;
use crate::report::{now_utc, Page, Section};
use anyhow::Result;
use serde_json::{Map, Value};
use std::path::Path;

/// One TPO run as its report shows it.
#[derive(Clone)]
pub struct TpoSeries {
    /// Its name in legends ("tpo", "direct").
    pub label: String,
    /// Whether it prompts for thoughts.
    pub thoughts: bool,
    /// Its summary rows so far, iteration 0 first.
    pub rows: Vec<IterationSummary>,
    /// The DPO updates so far, iteration after iteration, as in each
    /// `iter-T/train/metrics.jsonl` (the last one may be an iteration still training).
    pub updates: Vec<Map<String, Value>>,
    /// How many of `updates` the iterations up to each one hold (one per iteration that
    /// trained).
    pub iteration_ends: Vec<usize>,
}

impl TpoSeries {
    /// The run in `dir` with the rows so far; its updates read from the iterations' metrics.
    pub fn read(
        dir: &Path,
        label: &str,
        thoughts: bool,
        rows: &[IterationSummary],
    ) -> Result<TpoSeries> {
        let mut updates = vec![];
        let mut iteration_ends = vec![];
        for t in 1.. {
            let iteration = dir.join(format!("iter-{t}"));
            if !iteration.is_dir() {
                break;
            }
            let path = iteration.join("train").join("metrics.jsonl");
            if path.exists() {
                updates.extend(read_jsonl::<Map<String, Value>>(&path)?);
                iteration_ends.push(updates.len());
            }
        }
        Ok(TpoSeries {
            label: label.to_string(),
            thoughts,
            rows: rows.to_vec(),
            updates,
            iteration_ends,
        })
    }
}

/// A value read off a summary row, where it has one.
type RowValue = fn(&IterationSummary) -> Option<f64>;

/// A chart of one value per iteration for each run.
fn by_iteration(
    id: &str,
    title: &str,
    y_label: &str,
    y_range: Option<(f64, f64)>,
    runs: &[TpoSeries],
    lines: &[(&str, RowValue)],
) -> Chart {
    let mut series = vec![];
    for run in runs {
        for (suffix, value) in lines {
            let name = match (runs.len(), suffix.is_empty()) {
                (1, false) => suffix.to_string(),
                (_, false) => format!("{} {suffix}", run.label),
                (_, true) => run.label.clone(),
            };
            let points = run
                .rows
                .iter()
                .filter_map(|r| value(r).map(|y| (r.iteration as f64, y)));
            series.push(Series::new(&name, points));
        }
    }
    Chart {
        id: id.into(),
        title: title.into(),
        x_label: "iteration".into(),
        y_label: y_label.into(),
        y_range,
        series: series
            .into_iter()
            .filter(|s| !s.points.is_empty())
            .collect(),
        marks: vec![],
    }
}

/// The page of one or more TPO runs on the same axes.
pub fn tpo_page(title: &str, runs: &[TpoSeries]) -> Page {
    let rate = Some((0.0, 1.0));
    let iterations = vec![
        by_iteration(
            "heldout-score",
            "Held-out judge score",
            "mean score",
            None,
            runs,
            &[("", |r| r.heldout_score)],
        ),
        by_iteration(
            "win-rate",
            "Win rate against the seed",
            "win rate (ties half)",
            rate,
            runs,
            &[("", |r| r.win_rate)],
        ),
        by_iteration(
            "tokens",
            "Mean held-out tokens",
            "tokens",
            None,
            runs,
            &[
                ("thought", |r| r.thought_tokens.filter(|t| *t > 0.0)),
                ("response", |r| r.response_tokens),
            ],
        ),
        by_iteration(
            "malformed",
            "Malformed rate",
            "share",
            rate,
            runs,
            &[
                ("training candidates", |r| r.malformed),
                ("held-out", |r| r.heldout_malformed),
            ],
        ),
        by_iteration(
            "pairs",
            "Preference pairs made",
            "pairs",
            None,
            runs,
            &[("", |r| r.pairs.map(|p| p.pairs as f64))],
        ),
    ];
    let updates: Vec<(String, &[Map<String, Value>])> = runs
        .iter()
        .map(|r| (r.label.clone(), r.updates.as_slice()))
        .collect();
    // One run's iterations are marked where their updates end (several runs' would not
    // line up).
    let marks: Vec<f64> = match runs {
        [one] => one
            .iteration_ends
            .iter()
            .filter(|&&e| e < one.updates.len())
            .map(|&e| e as f64 + 0.5)
            .collect(),
        _ => vec![],
    };
    let dpo = vec![
        by_update("dpo-loss", "DPO loss", "loss", None, &updates),
        by_update(
            "reward-accuracy",
            "Reward accuracy",
            "rewards/accuracies",
            rate,
            &updates,
        ),
        by_update(
            "reward-margin",
            "Reward margin",
            "rewards/margins",
            None,
            &updates,
        ),
    ]
    .into_iter()
    .map(|c| Chart {
        marks: marks.clone(),
        ..c
    })
    .collect();
    let tables = runs
        .iter()
        .map(|r| format!("{}\n{}", r.label, table(&r.rows, r.thoughts)))
        .collect::<Vec<_>>()
        .join("\n");
    let done: Vec<String> = runs
        .iter()
        .map(|r| match r.rows.last() {
            Some(last) => format!("{}: iterations 0 to {} done", r.label, last.iteration),
            None => format!("{}: nothing done yet", r.label),
        })
        .collect();
    Page {
        title: title.into(),
        subtitle: format!(
            "Written {} ({}; iteration 0 is the seed).",
            now_utc(),
            done.join(", ")
        ),
        sections: vec![
            Section {
                heading: "By iteration".into(),
                charts: iterations,
                table: None,
            },
            Section {
                heading: "DPO updates".into(),
                charts: dpo,
                table: None,
            },
            Section {
                heading: "Summary".into(),
                charts: vec![],
                table: Some(tables),
            },
        ],
    }
}
