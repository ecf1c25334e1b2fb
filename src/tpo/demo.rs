//! The built-in demonstration: `tpo-engine train` with no arguments.
//!
//! The seed checkpoint is embedded in the binary (made by `scripts/make-seed.sh` with the
//! engine's own `init-model` and `sft`), the prompts are the built-in task's
//! (`task::make_prompts`), and the judge is its programmatic one. Two runs share the seed,
//! the prompts and the judge: TPO (the generic thought prompt) and the direct-response
//! baseline (no thought prompt). The run directory holds both, a table of held-out scores
//! by iteration, and examples of how the thoughts changed:
//!
//! ```text
//! OUT/seed/         the seed checkpoint
//! OUT/tpo/          the TPO run (see run.rs for its layout)
//! OUT/direct/       the direct-response baseline
//! OUT/summary.md    iteration x {direct, TPO}: held-out judge score and win rate
//! OUT/thoughts.md   held-out thoughts and answers of the seed and of the last TPO model
//! ```
//! A demonstration that was stopped continues where it stopped when run again with the same
//! --out; one that finished prints its table again.

use super::config::{Reference, Sampling, TpoConfig};
use super::format::FormatControl;
use super::json_files::{read_json, read_jsonl};
use super::judge::builtin::JUDGE_NAME;
use super::report::{tpo_page, TpoSeries};
use super::run::TpoRun;
use super::stages::EvalLine;
use super::summary::IterationSummary;
use super::task;
use super::thought::ThoughtPrompt;
use crate::backend::device::{Device, Placement};
use crate::train::{DpoConfig, DpoLossType, LrSchedule, OptimizerConfig};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// The sizes of a demonstration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DemoPlan {
    pub iterations: usize,
    pub prompts_per_iteration: usize,
    pub heldout: usize,
    pub samples: usize,
}

impl DemoPlan {
    pub fn new(quick: bool) -> DemoPlan {
        DemoPlan {
            iterations: if quick { 2 } else { 3 },
            prompts_per_iteration: 128,
            heldout: if quick { 100 } else { 500 },
            samples: 8,
        }
    }
}

/// Seeds of the task's prompt sets: training and held-out prompts are drawn apart.
const TRAIN_PROMPTS_SEED: u64 = 1;
const HELDOUT_PROMPTS_SEED: u64 = 2;

pub(crate) fn config(seed_dir: &Path, plan: &DemoPlan, thoughts: bool) -> Result<TpoConfig> {
    Ok(TpoConfig {
        // `train`'s defaults: the thought prefilled, the response marker forced.
        format: FormatControl {
            prefill_thought: thoughts,
            force_response: thoughts,
            max_thought_tokens: None,
        },
        model: seed_dir.canonicalize()?,
        lora: None,
        judge: format!("builtin:{}", JUDGE_NAME),
        judge_timeout_secs: 60.0,
        judge_retries: 0,
        judge_batch_size: 256,
        judge_llm: Default::default(),
        thought_prompt: if thoughts {
            Some(ThoughtPrompt::resolve("generic")?)
        } else {
            None
        },
        iterations: plan.iterations,
        prompts_per_iteration: plan.prompts_per_iteration,
        sampling: Sampling {
            samples: plan.samples,
            max_new_tokens: 96,
            temperature: 0.8,
            top_p: 0.95,
            top_k: 0,
            batch_size: 64,
        },
        eval_temperature: 0.0,
        rho: 0.0,
        malformed_as_rejected: true,
        reference: Reference::Previous,
        dpo: DpoConfig {
            loss_type: DpoLossType::Sigmoid,
            beta: 0.3,
            label_smoothing: 0.0,
            nll_alpha: 0.0,
        },
        optimizer: OptimizerConfig {
            lr: 5e-5,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            schedule: LrSchedule::Constant,
            warmup_steps: 0,
        },
        epochs: 1,
        batch_size: 16,
        micro_batch_tokens: 4096,
        save_steps: 0,
        seed: 0,
        chat_template: true,
    })
}

/// Continues the demonstration in `out` at the size it was started with.
pub fn resume_demo(out: &Path, device: Placement) -> Result<()> {
    let saved: DemoPlan = read_json(&out.join("demo.json"))?;
    run_demo(out, saved == DemoPlan::new(true), device)
}

pub fn run_demo(out: &Path, quick: bool, device: Placement) -> Result<()> {
    let (device, line) = Device::select(device)?;
    eprintln!("{line}");
    let started = Instant::now();
    let plan = DemoPlan::new(quick);
    let marker = out.join("demo.json");
    let resumed = marker.exists();
    if resumed {
        let saved: DemoPlan = read_json(&marker)?;
        if saved != plan {
            bail!(
                "{} holds a demonstration of another size ({}); choose another --out",
                out.display(),
                if quick {
                    "it was not run with --quick"
                } else {
                    "it was run with --quick"
                }
            );
        }
        eprintln!("continuing the demonstration in {}", out.display());
    } else {
        crate::train::run::RunDir::check_free(out)?;
        super::run::replace_empty_dir(out, |tmp| {
            task::write_seed(&tmp.join("seed"))?;
            crate::io::write_atomic(
                &tmp.join("demo.json"),
                serde_json::to_string_pretty(&plan)?.as_bytes(),
            )
        })?;
        eprintln!(
            "the built-in demonstration: TPO against the direct-response baseline on the task \"{}\", {} iterations, in {}",
            JUDGE_NAME,
            plan.iterations,
            out.display()
        );
    }
    let mut rows = vec![];
    // Both runs on the same axes in OUT/report.html, rewritten after each iteration.
    let mut finished: Vec<TpoSeries> = vec![];
    let title = format!(
        "The built-in demonstration: TPO and the direct-response baseline, {}",
        out.display()
    );
    for (label, thoughts) in [("tpo", true), ("direct", false)] {
        let dir = out.join(label);
        let mut run = if dir.join("config.json").exists() {
            TpoRun::resume(&dir, label, &Default::default())?
        } else {
            let cfg = config(&out.join("seed"), &plan, thoughts)?;
            let pool = task::make_prompts(
                plan.iterations * plan.prompts_per_iteration,
                TRAIN_PROMPTS_SEED,
            );
            let heldout = task::make_prompts(plan.heldout, HELDOUT_PROMPTS_SEED);
            TpoRun::create(&dir, cfg, pool, heldout, label, &device)?
        };
        run.set_device(device.clone())?;
        let done = run.run(&mut |so_far| {
            let mut all = finished.clone();
            all.push(TpoSeries::read(&dir, label, thoughts, so_far)?);
            // A report that cannot be written is a warning, never the end of the run.
            if let Err(e) = tpo_page(&title, &all).write(&out.join("report.html")) {
                eprintln!("warning: no report this time: {e:#}");
            }
            Ok(())
        })?;
        finished.push(TpoSeries::read(&dir, label, thoughts, &done)?);
        rows.push(done);
    }
    let working = (0..=plan.iterations)
        .map(|t| working_share(out, t))
        .collect::<Result<Vec<_>>>()?;
    let table = comparison(&rows[0], &rows[1], &working);
    crate::io::write_atomic(&out.join("summary.md"), table.as_bytes())?;
    crate::io::write_atomic(
        &out.join("thoughts.md"),
        thought_examples(out, plan.iterations)?.as_bytes(),
    )?;
    println!("{table}");
    eprintln!(
        "{} in {:.0}s: per-run tables in {}/tpo/summary.md and {}/direct/summary.md, thoughts in {}/thoughts.md",
        if resumed { "finished" } else { "done" },
        started.elapsed().as_secs_f64(),
        out.display(),
        out.display(),
        out.display()
    );
    Ok(())
}

fn score(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{:.1}%", 100.0 * v))
}

/// Iteration x {direct, TPO}: held-out judge score (the share answered right) and win rate
/// against the seed's direct answers; then the verdict in words.
pub fn comparison(
    tpo: &[IterationSummary],
    direct: &[IterationSummary],
    working: &[f64],
) -> String {
    let mut out = String::from(
        "| iteration | direct: held-out score | direct: win vs seed | TPO: held-out score | TPO: win vs seed | TPO: thought tokens | TPO: thoughts that write out the working | TPO: malformed | TPO: forced (held-out / train) |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for ((t, d), w) in tpo.iter().zip(direct).zip(working) {
        out.push_str(&format!(
            "| {}{} | {} | {} | {} | {} | {} | {} | {} | {} / {} |\n",
            t.iteration,
            if t.iteration == 0 { " (seed)" } else { "" },
            score(d.heldout_score),
            score(d.win_rate),
            score(t.heldout_score),
            score(t.win_rate),
            t.thought_tokens.map_or("-".into(), |v| format!("{v:.1}")),
            score(Some(*w)),
            score(t.heldout_malformed),
            score(t.heldout_forced),
            score(t.forced),
        ));
    }
    let (t0, tn) = (&tpo[0], &tpo[tpo.len() - 1]);
    let (d0, dn) = (&direct[0], &direct[direct.len() - 1]);
    let pts = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:+.1} points", 100.0 * (a - b)),
        _ => "-".into(),
    };
    out.push_str(&format!(
        "\nThe judge scores the response only (1 for the right final digit). After {} iterations, TPO scores {} on held-out prompts: {} over the seed answering directly ({}), {} over the seed prompted to think ({}), and {} over the direct-response baseline trained the same way ({}).\n",
        tpo.len() - 1,
        score(tn.heldout_score),
        pts(tn.heldout_score, d0.heldout_score),
        score(d0.heldout_score),
        pts(tn.heldout_score, t0.heldout_score),
        score(t0.heldout_score),
        pts(tn.heldout_score, dn.heldout_score),
        score(dn.heldout_score),
    ));
    out
}

/// The share of TPO's held-out answers at iteration t whose thought writes out the working.
fn working_share(out: &Path, t: usize) -> Result<f64> {
    let lines: Vec<EvalLine> = read_jsonl(&out.join(format!("tpo/iter-{t}/eval.jsonl")))?;
    let n = lines
        .iter()
        .filter(|l| l.thought.as_deref().is_some_and(task::writes_working))
        .count();
    Ok(n as f64 / lines.len().max(1) as f64)
}

/// The first held-out prompts' thoughts and answers: the seed prompted to think, then the
/// last TPO model.
fn thought_examples(out: &Path, iterations: usize) -> Result<String> {
    let first: Vec<EvalLine> = read_jsonl(&out.join("tpo/iter-0/eval.jsonl"))?;
    let last: Vec<EvalLine> = read_jsonl(&out.join(format!("tpo/iter-{iterations}/eval.jsonl")))?;
    let mut text = String::from("# Held-out thoughts: the seed, then the last TPO model\n");
    for (a, b) in first.iter().zip(&last).take(8) {
        text.push_str(&format!("\n## {}\n", a.instruction));
        for (who, l) in [
            ("seed".to_string(), a),
            (format!("iteration {iterations}"), b),
        ] {
            text.push_str(&format!(
                "- {who} (score {}): thought: {} | response: {}\n",
                l.score.map_or("none".into(), |s| s.to_string()),
                l.thought.as_deref().unwrap_or("(malformed)"),
                l.response
            ));
        }
    }
    Ok(text)
}
