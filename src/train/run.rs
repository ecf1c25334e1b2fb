//! A training run's output directory:
//!
//! ```text
//! OUT/metrics.jsonl        one line per optimizer update (TRL's metric names)
//! OUT/pairs.jsonl          dpo: the pairs with their reference log-probs
//! OUT/checkpoint-STEP/     every --save-steps updates, and the last good weights on a stop
//! OUT/model/               the trained model (a LoRA run: OUT/adapter/, PEFT's format)
//! OUT/report.html          dpo and sft: the curves so far (every 10 s of updates, and at the end)
//! ```
//! Every checkpoint is a Hugging Face directory (a LoRA run's: a PEFT adapter directory)
//! written atomically; metrics lines are appended and flushed one whole line at a time.

use super::trainer::{RunSink, Trained};
use crate::checkpoint::save_checkpoint;
use crate::io::run_lock::{RunLock, LOCK_FILE};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Least time between two writes of a run's report while it trains.
const REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

pub struct RunDir {
    pub out: PathBuf,
    /// The checkpoint directory training started from (tokenizer and config come from it).
    source: PathBuf,
    /// Save a checkpoint every this many updates (0: only the final model).
    save_steps: usize,
    metrics: std::fs::File,
    bar: ProgressBar,
    saved: Vec<usize>,
    /// The report page's title and whether it shows DPO's rewards (None: no report).
    report: Option<(String, bool)>,
    lines: Vec<Map<String, Value>>,
    reported: Option<std::time::Instant>,
    /// Held from creation to the end of the run.
    _lock: RunLock,
    /// Whether OUT did not exist before this run.
    created: bool,
    /// A LoRA run: the base model's name in the adapters' config (None: full training).
    adapter_base: Option<String>,
}

impl RunDir {
    /// Fails unless OUT is free for a new run: absent, or an empty directory. Checked
    /// before any work, so a run never starts that could not write its results.
    pub fn check_free(out: &Path) -> Result<()> {
        if out.exists() {
            // Empty, or what a run killed before its first update leaves: its (free) lock
            // and an empty metrics file.
            let empty = out.is_dir()
                && std::fs::read_dir(out)
                    .with_context(|| format!("cannot read {}", out.display()))?
                    .filter_map(|e| e.ok())
                    .all(|e| {
                        let name = e.file_name();
                        name == LOCK_FILE
                            || (name == "metrics.jsonl" && e.metadata().is_ok_and(|m| m.len() == 0))
                    });
            if !empty {
                bail!(
                    "{}: already exists and is not empty; choose a new output directory",
                    out.display()
                );
            }
        }
        Ok(())
    }

    /// Creates OUT (see `check_free`) with an empty metrics file.
    pub fn create(
        out: &Path,
        source: &Path,
        save_steps: usize,
        total_steps: usize,
    ) -> Result<RunDir> {
        Self::check_free(out)?;
        RunLock::check_not_inside_a_running(out)?;
        let created = !out.exists();
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        let lock = RunLock::acquire(out)?;
        // Another run may have claimed OUT between the check and the lock.
        Self::check_free(out).map_err(|_| {
            anyhow::anyhow!(
                "{}: another run wrote into it as this one started; choose a new output directory",
                out.display()
            )
        })?;
        let path = out.join("metrics.jsonl");
        let metrics = std::fs::File::create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let bar = ProgressBar::new(total_steps as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps {msg} [{elapsed_precise}<{eta_precise}]",
            )
            .expect("the template is valid"),
        );
        Ok(RunDir {
            out: out.to_path_buf(),
            source: source.to_path_buf(),
            save_steps,
            metrics,
            bar,
            saved: vec![],
            report: None,
            lines: vec![],
            reported: None,
            _lock: lock,
            created,
            adapter_base: None,
        })
    }

    /// Gives OUT back as it was before `create` (absent, or empty), for a run that failed
    /// before it wrote anything worth keeping.
    pub fn discard(self) {
        // Removed while the lock is still held, so no one else can be writing there.
        if self.created {
            let _ = std::fs::remove_dir_all(&self.out);
        } else {
            let _ = std::fs::remove_file(self.out.join("metrics.jsonl"));
            let _ = std::fs::remove_file(self.out.join(LOCK_FILE));
        }
    }

    /// Keeps OUT/report.html: the curves of the updates so far, titled `title` (`dpo`: with
    /// DPO's reward accuracy and margin).
    pub fn with_report(mut self, title: &str, dpo: bool) -> RunDir {
        self.report = Some((title.to_string(), dpo));
        self
    }

    /// Writes the report now, or when `REPORT_EVERY` has passed since the last one. A report
    /// that cannot be written is a warning, never the end of a run.
    fn write_report(&mut self, now: bool) -> Result<()> {
        if let Err(e) = self.try_write_report(now) {
            eprintln!("warning: no report this time: {e:#}");
            self.reported = Some(std::time::Instant::now());
        }
        Ok(())
    }

    fn try_write_report(&mut self, now: bool) -> Result<()> {
        let Some((title, dpo)) = &self.report else {
            return Ok(());
        };
        if !now && self.reported.is_some_and(|t| t.elapsed() < REPORT_EVERY) {
            return Ok(());
        }
        crate::report::updates::train_page(title, &self.lines, *dpo)
            .write(&self.out.join("report.html"))?;
        self.reported = Some(std::time::Instant::now());
        Ok(())
    }

    /// A LoRA run: it writes adapters, naming `base` (the `--model` given) as their base
    /// model.
    pub fn with_adapters(mut self, base: &str) -> RunDir {
        self.adapter_base = Some(base.to_string());
        self
    }

    pub fn checkpoint_dir(&self, step: usize) -> PathBuf {
        self.out.join(format!("checkpoint-{step}"))
    }

    /// Where the trained weights go: OUT/model, or a LoRA run's OUT/adapter.
    pub fn model_dir(&self) -> PathBuf {
        match self.adapter_base {
            Some(_) => self.out.join("adapter"),
            None => self.out.join("model"),
        }
    }

    /// Writes the trained weights as `dir`: a checkpoint, or an adapter in PEFT's format.
    fn save(&self, dir: &Path, trained: Trained) -> Result<()> {
        match (trained, &self.adapter_base) {
            (Trained::Model(model), None) => save_checkpoint(dir, &self.source, model),
            (Trained::Adapter(adapter), Some(base)) => crate::model::peft::save(dir, adapter, base),
            _ => bail!(
                "{}: the run and what it trains disagree (a model or an adapter)",
                self.out.display()
            ),
        }
    }

    pub fn finish_progress(&self) {
        self.bar.finish_and_clear();
    }
}

impl RunSink for RunDir {
    fn metrics(&mut self, line: &Map<String, Value>) -> Result<()> {
        let mut text = serde_json::to_string(line)?;
        text.push('\n');
        self.metrics
            .write_all(text.as_bytes())
            .and_then(|()| self.metrics.flush())
            .with_context(|| {
                format!("cannot write {}", self.out.join("metrics.jsonl").display())
            })?;
        if self.report.is_some() {
            self.lines.push(line.clone());
            self.write_report(false)?;
        }
        Ok(())
    }

    fn wants_model(&self, step: usize, last: bool) -> bool {
        last || (self.save_steps > 0 && step.is_multiple_of(self.save_steps))
    }

    fn after_step(&mut self, trained: Trained, step: usize, last: bool) -> Result<()> {
        if self.save_steps > 0 && step.is_multiple_of(self.save_steps) {
            self.save(&self.checkpoint_dir(step), trained)?;
            self.saved.push(step);
        }
        if last {
            self.bar.set_message("saving the model");
            self.save(&self.model_dir(), trained)?;
            self.write_report(true)?;
        }
        Ok(())
    }

    fn keep_last_good(&mut self, trained: Trained, good_steps: usize) -> Result<String> {
        self.bar.abandon();
        self.write_report(true)?;
        // A checkpoint saved after the next update holds the weights that gave the bad value.
        let bad = if self.saved.contains(&(good_steps + 1)) {
            format!(
                " ({} holds the weights that gave it)",
                self.checkpoint_dir(good_steps + 1).display()
            )
        } else {
            String::new()
        };
        if good_steps == 0 {
            let start = match self.adapter_base {
                Some(_) => {
                    "the starting adapter's (a new adapter leaves the model as it is)".to_string()
                }
                None => format!("the starting model's, in {}", self.source.display()),
            };
            return Ok(format!("the last good weights are {start}{bad}"));
        }
        let dir = self.checkpoint_dir(good_steps);
        if !self.saved.contains(&good_steps) {
            self.save(&dir, trained)?;
        }
        Ok(format!(
            "the last good weights (after update {good_steps}, the last with a finite loss and gradient) are in {}{bad}",
            dir.display()
        ))
    }

    fn progress(&mut self, step: usize, loss: f64, tokens_per_s: f64) {
        self.bar.set_position(step as u64);
        self.bar
            .set_message(format!("loss {loss:.4} | {tokens_per_s:.0} tokens/s"));
    }
}
