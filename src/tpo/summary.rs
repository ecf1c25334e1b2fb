//! The per-iteration summary: held-out judge score and win rate against the seed, thought
//! and response lengths, pairs made, malformed rate, DPO metrics and the time of each stage.

use super::json_files::{read_json, read_jsonl};
use super::stages::{EvalLine, PairCounts, PromptCandidates};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::Path;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IterationSummary {
    pub iteration: usize,
    /// Mean judge score of the held-out answers.
    pub heldout_score: Option<f64>,
    /// Share of held-out prompts where the judge preferred this answer to the seed's direct
    /// one (ties count half).
    pub win_rate: Option<f64>,
    /// Means over the held-out answers (thoughts: over the parsed ones).
    pub thought_tokens: Option<f64>,
    pub response_tokens: Option<f64>,
    pub heldout_malformed: Option<f64>,
    /// Shares of held-out answers and training candidates whose response marker was forced.
    #[serde(default)]
    pub heldout_forced: Option<f64>,
    #[serde(default)]
    pub forced: Option<f64>,
    /// Candidates sampled for training, and the share that could not be parsed.
    pub candidates: Option<usize>,
    pub malformed: Option<f64>,
    /// Mean judge score of the parsed training candidates.
    pub candidate_score: Option<f64>,
    /// Training candidates and held-out prompts the judge left unscored (its answers could
    /// not be read): out of the pairs and the means.
    #[serde(default)]
    pub unjudged: Option<usize>,
    #[serde(default)]
    pub heldout_unjudged: Option<usize>,
    pub pairs: Option<PairCounts>,
    /// Mean response tokens of the chosen and rejected sides.
    pub chosen_response_tokens: Option<f64>,
    pub rejected_response_tokens: Option<f64>,
    /// Means over the iteration's DPO updates.
    pub loss: Option<f64>,
    pub reward_accuracy: Option<f64>,
    pub reward_margin: Option<f64>,
    pub updates: Option<usize>,
    /// Seconds per stage (as first run; a resumed stage keeps its first time).
    pub secs: Map<String, Value>,
}

fn mean(xs: impl Iterator<Item = f64>) -> Option<f64> {
    let (mut sum, mut n) = (0.0, 0usize);
    for x in xs {
        sum += x;
        n += 1;
    }
    (n > 0).then(|| sum / n as f64)
}

pub fn summarize(run_dir: &Path, t: usize, secs: &Map<String, Value>) -> Result<IterationSummary> {
    let dir = run_dir.join(format!("iter-{t}"));
    let mut row = IterationSummary {
        iteration: t,
        secs: secs.clone(),
        ..Default::default()
    };
    let eval = dir.join("eval.jsonl");
    if eval.exists() {
        let lines: Vec<EvalLine> = read_jsonl(&eval)?;
        row.heldout_score = mean(lines.iter().filter_map(|l| l.score));
        row.win_rate = mean(lines.iter().filter_map(|l| l.outcome));
        row.heldout_unjudged = Some(lines.iter().filter(|l| l.outcome.is_none()).count());
        row.thought_tokens = mean(
            lines
                .iter()
                .filter(|l| l.thought.is_some())
                .map(|l| l.thought_tokens as f64),
        );
        row.response_tokens = mean(lines.iter().map(|l| l.response_tokens as f64));
        row.heldout_malformed = mean(lines.iter().map(|l| l.malformed.is_some() as u8 as f64));
        row.heldout_forced = mean(lines.iter().map(|l| l.forced.is_some() as u8 as f64));
    }
    if t == 0 {
        return Ok(row);
    }
    let prompts: Vec<PromptCandidates> = read_jsonl(&dir.join("candidates.jsonl"))?;
    let all = || prompts.iter().flat_map(|p| &p.candidates);
    row.candidates = Some(all().count());
    row.malformed = mean(all().map(|c| c.malformed.is_some() as u8 as f64));
    row.forced = mean(all().map(|c| c.forced.is_some() as u8 as f64));
    row.candidate_score = mean(all().filter_map(|c| c.score));
    row.unjudged = Some(all().filter(|c| c.unjudged).count());
    row.pairs = Some(read_json(&dir.join("pair-counts.json"))?);
    let pairs: Vec<Map<String, Value>> = read_jsonl(&dir.join("pairs.jsonl"))?;
    let side = |key: &str| {
        mean(pairs.iter().filter_map(|p| {
            let i = p.get("prompt_index")?.as_u64()? as usize;
            let c = p.get(key)?.as_u64()? as usize;
            let pc = prompts.iter().find(|x| x.index == i)?;
            Some(pc.candidates.get(c)?.response_tokens as f64)
        }))
    };
    row.chosen_response_tokens = side("chosen_candidate");
    row.rejected_response_tokens = side("rejected_candidate");
    let metrics_path = dir.join("train").join("metrics.jsonl");
    if metrics_path.exists() {
        let metrics: Vec<Map<String, Value>> = read_jsonl(&metrics_path)?;
        let m = |k: &str| mean(metrics.iter().filter_map(|l| l.get(k)?.as_f64()));
        row.loss = m("loss");
        row.reward_accuracy = m("rewards/accuracies");
        row.reward_margin = m("rewards/margins");
        row.updates = Some(metrics.len());
    }
    Ok(row)
}

fn f(x: Option<f64>, digits: usize) -> String {
    x.map_or("-".to_string(), |v| format!("{v:.digits$}"))
}

fn pct(x: Option<f64>) -> String {
    x.map_or("-".to_string(), |v| format!("{:.1}%", 100.0 * v))
}

fn secs(row: &IterationSummary) -> String {
    let stages = ["generate", "judge", "reference", "train", "eval"];
    let parts: Vec<String> = stages
        .iter()
        .map(|s| {
            row.secs
                .get(*s)
                .and_then(Value::as_f64)
                .map_or("-".into(), |v| format!("{v:.1}"))
        })
        .collect();
    parts.join(" / ")
}

/// The summary table in Markdown.
pub fn table(rows: &[IterationSummary], thoughts: bool) -> String {
    let mut out = String::new();
    out.push_str("| iter | held-out score | win vs seed | thought tok | response tok | malformed (held-out / train) | forced (held-out / train) | pairs (tied, all malformed) | chosen / rejected resp tok | DPO loss | reward acc | reward margin | secs: generate / judge / reference / train / eval |\n");
    out.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for r in rows {
        let pairs = r.pairs.map_or("-".into(), |p| {
            format!("{} ({}, {})", p.pairs, p.all_tie, p.no_parsed)
        });
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} / {} | {} / {} | {} | {} / {} | {} | {} | {} | {} |\n",
            r.iteration,
            f(r.heldout_score, 3),
            pct(r.win_rate),
            if thoughts {
                f(r.thought_tokens, 1)
            } else {
                "-".into()
            },
            f(r.response_tokens, 1),
            pct(r.heldout_malformed),
            pct(r.malformed),
            pct(r.heldout_forced.filter(|_| thoughts)),
            pct(r.forced.filter(|_| thoughts)),
            pairs,
            f(r.chosen_response_tokens, 1),
            f(r.rejected_response_tokens, 1),
            f(r.loss, 4),
            f(r.reward_accuracy, 2),
            f(r.reward_margin, 3),
            secs(r)
        ));
    }
    out
}

pub fn write_table(path: &Path, rows: &[IterationSummary], thoughts: bool) -> Result<()> {
    crate::io::write_atomic(path, table(rows, thoughts).as_bytes())
}
