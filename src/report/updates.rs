//! Curves over optimizer updates: the page of a `dpo` or `sft` run, and the DPO charts of a
//! TPO run's page.

use super::chart::{Chart, Series};
use super::{now_utc, Page, Section};
use serde_json::{Map, Value};

/// A chart of one metric over the updates, for each run (x: the update's number across the
/// run's iterations).
pub fn by_update(
    id: &str,
    title: &str,
    key: &str,
    y_range: Option<(f64, f64)>,
    runs: &[(String, &[Map<String, Value>])],
) -> Chart {
    Chart {
        id: id.into(),
        title: title.into(),
        x_label: "update".into(),
        y_label: key.into(),
        y_range,
        series: runs
            .iter()
            .map(|(label, updates)| {
                Series::new(
                    label,
                    updates
                        .iter()
                        .enumerate()
                        .filter_map(|(i, m)| Some(((i + 1) as f64, m.get(key)?.as_f64()?))),
                )
            })
            .filter(|s| !s.points.is_empty())
            .collect(),
        marks: vec![],
    }
}

/// The page of a `dpo` or `sft` run from its metrics lines so far.
pub fn train_page(title: &str, metrics: &[Map<String, Value>], dpo: bool) -> Page {
    let one = [(String::from("train"), metrics)];
    let mut charts = vec![by_update("loss", "Loss", "loss", None, &one)];
    if dpo {
        charts.push(by_update(
            "reward-accuracy",
            "Reward accuracy",
            "rewards/accuracies",
            Some((0.0, 1.0)),
            &one,
        ));
        charts.push(by_update(
            "reward-margin",
            "Reward margin",
            "rewards/margins",
            None,
            &one,
        ));
    }
    charts.push(by_update(
        "grad-norm",
        "Gradient norm",
        "grad_norm",
        None,
        &one,
    ));
    charts.push(by_update(
        "learning-rate",
        "Learning rate",
        "learning_rate",
        None,
        &one,
    ));
    Page {
        title: title.into(),
        subtitle: format!("Written {} after {} updates.", now_utc(), metrics.len()),
        sections: vec![Section {
            heading: "Over updates".into(),
            charts,
            table: None,
        }],
    }
}
