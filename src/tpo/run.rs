//! The TPO loop and its run directory:
//!
//! ```text
//! RUN_DIR/config.json              the resolved configuration (`--resume` reads it)
//! RUN_DIR/prompts.jsonl            the training prompts, consumed in order, never reused
//! RUN_DIR/heldout.jsonl            the held-out evaluation prompts
//! RUN_DIR/eval-seed.jsonl          the seed's direct answers to them (the win-rate baseline)
//! RUN_DIR/iter-T/samples.jsonl     K sampled completions per prompt (token ids)
//! RUN_DIR/iter-T/candidates.jsonl  parsed and judged: thought, response, score, lengths
//! RUN_DIR/iter-T/pairs.jsonl       the pairs, with reference log-probs
//! RUN_DIR/iter-T/train/            DPO: metrics.jsonl and model/ (the iteration's checkpoint)
//! RUN_DIR/iter-T/eval.jsonl        held-out answers, judged against the seed's
//! RUN_DIR/iter-T/summary.json      the iteration's row of the summary table
//! RUN_DIR/summary.md               the table, rewritten after every iteration
//! ```
//! Iteration 0 is the seed, evaluated only. Every file is written whole (temporary file,
//! then rename) but train/metrics.jsonl, appended an update at a time; a stage runs only
//! when its output is missing (an unfinished DPO stage starts over), so a killed run
//! resumes where it stopped; each stage's randomness comes from (seed, iteration, stage), so
//! a resumed run gives the same files as one that was never stopped.

use super::config::TpoConfig;
use super::json_files::{read_json, read_jsonl, write_jsonl};
use super::judge::{open_judge, Judge, JudgeGroup, JudgeOptions, LlmJudgeOptions};
use super::malformed::{MalformedCount, Verdict};
use super::prompts::{prompt_line_limit, read_prompt_file};
use super::stages::*;
use super::summary::{self, IterationSummary};
use crate::backend::device::Device;
use crate::backend::rng::splitmix64;
use crate::backend::settings::SamplingParams;
use crate::engine::train;
use crate::generate::{end_token, eos_ids, PromptMode};
use crate::io::run_lock::RunLock;
use crate::model::lora::Adapter;
use crate::model::{Model, ModelConfig};
use crate::tokenizer::Tokenizer;
use crate::train::run::RunDir;
use crate::train::Example;
use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub struct TpoRun {
    pub dir: PathBuf,
    pub cfg: TpoConfig,
    /// A label for messages ("tpo", "direct").
    pub label: String,
    rt: Runtime,
    judge: Box<dyn Judge>,
    pool: Vec<Map<String, Value>>,
    heldout: Vec<Map<String, Value>>,
    /// This process's hold on `dir` (from creation or resumption on).
    lock: Option<RunLock>,
    /// The id in `dir/run-id`, recorded in each training stage it writes (None for a run
    /// made before ids were kept).
    run_id: Option<String>,
}

/// The file of a run's id, and the file in a training stage's directory naming the run
/// that wrote it.
const RUN_ID: &str = "run-id";
const STAGE_OWNER: &str = "tpo-run";

/// What `--resume` may change of a run's saved configuration: the judge and how it is
/// called. Scores already written stay; the stages still to run use the new judge.
#[derive(Clone, Debug, Default)]
pub struct JudgeChanges {
    pub judge: Option<String>,
    pub timeout_secs: Option<f64>,
    pub retries: Option<usize>,
    /// How an `openai:` judge is asked (None: as before, unless the new judge is not an
    /// `openai:` one, which has none).
    pub llm: Option<LlmJudgeOptions>,
}

impl JudgeChanges {
    /// Applies the changes to `cfg`; whether any was given.
    fn apply(&self, cfg: &mut TpoConfig) -> bool {
        if let Some(judge) = &self.judge {
            cfg.judge = judge.clone();
        }
        if let Some(t) = self.timeout_secs {
            cfg.judge_timeout_secs = t;
        }
        if let Some(r) = self.retries {
            cfg.judge_retries = r;
        }
        match &self.llm {
            Some(llm) => cfg.judge_llm = llm.clone(),
            None if !cfg.judge.starts_with("openai:") => cfg.judge_llm = LlmJudgeOptions::default(),
            None => {}
        }
        self.judge.is_some()
            || self.timeout_secs.is_some()
            || self.retries.is_some()
            || self.llm.is_some()
    }
}

/// Stage seeds: one stream per (run seed, iteration, stage).
fn stage_seed(seed: u64, iteration: usize, stage: u64) -> u64 {
    splitmix64(splitmix64(seed ^ splitmix64(iteration as u64)) ^ stage)
}

impl TpoRun {
    /// Starts a new run in `dir` (absent or empty): checks everything that can be checked
    /// before any work, then writes the config and the prompts.
    pub fn create(
        dir: &Path,
        cfg: TpoConfig,
        pool: Vec<Map<String, Value>>,
        heldout: Vec<Map<String, Value>>,
        label: &str,
        device: &Device,
    ) -> Result<TpoRun> {
        RunDir::check_free(dir)?;
        RunLock::check_not_inside_a_running(dir)?;
        let mut run = Self::open(dir, cfg, pool, heldout, label)?;
        // Every prompt must fit the model before anything is written.
        let all: Vec<&Map<String, Value>> = run.pool.iter().chain(&run.heldout).collect();
        let mut longest = 0;
        for (i, p) in all.iter().enumerate() {
            let what = if i < run.pool.len() {
                format!("training prompt {}", i + 1)
            } else {
                format!("held-out prompt {}", i + 1 - run.pool.len())
            };
            let ids = run
                .rt
                .render_all(&run.cfg, &[p], run.thoughts())
                .with_context(|| what.clone())?;
            longest = longest.max(ids.iter().map(Vec::len).max().unwrap_or(0));
        }
        // On the CPU, the larger of its two big stages must fit: sampling and DPO.
        if let Device::Cpu(cpu) = device {
            let model = Model::load_config(&run.cfg.model)?;
            let s = &run.cfg.sampling;
            let seqs = s
                .batch_size
                .min(run.cfg.prompts_per_iteration.saturating_mul(s.samples));
            let positions = longest
                .saturating_add(s.max_new_tokens)
                .min(model.max_context);
            let sampling = crate::memory::generation(&model, seqs, positions, cpu.kept_bytes())
                .lowered_by("--gen-batch-size (or --max-new-tokens)");
            let tokens = run.cfg.micro_batch_tokens;
            let training = match &run.cfg.lora {
                Some(lora) => {
                    let layout = crate::model::lora::LoraLayout::new(&model, &lora.config()?);
                    crate::memory::lora_training(&model, layout.len as u64, tokens)
                }
                None => crate::memory::training(&model, tokens),
            };
            if sampling.total() > training.total() {
                sampling.check("train (its sampling stage)")?;
            } else {
                training.check("train (its DPO stage)")?;
            }
        }
        // The directory appears whole, or not at all: a kill here leaves nothing to resume.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let run_id = format!("{nanos:x}-{}", std::process::id());
        replace_empty_dir(dir, |tmp| {
            write_jsonl(&tmp.join("prompts.jsonl"), &run.pool)?;
            write_jsonl(&tmp.join("heldout.jsonl"), &run.heldout)?;
            crate::io::write_atomic(&tmp.join(RUN_ID), run_id.as_bytes())?;
            run.cfg.save(&tmp.join("config.json"))
        })?;
        run.lock = Some(RunLock::acquire(dir)?);
        run.run_id = Some(run_id);
        Ok(run)
    }

    /// Reopens a run made by `create`, to resume it.
    pub fn resume(dir: &Path, label: &str, changes: &JudgeChanges) -> Result<TpoRun> {
        if !dir.join("config.json").is_file() {
            bail!("{}: no run to resume here (no config.json)", dir.display());
        }
        // Held before anything is read or removed: a running run's files are its own.
        let lock = RunLock::acquire(dir)?;
        let mut cfg = TpoConfig::load(&dir.join("config.json"))?;
        let changed = changes.apply(&mut cfg);
        let max_line = prompt_line_limit(&cfg.model)?;
        let pool = read_prompt_file(&dir.join("prompts.jsonl"), max_line)?;
        let heldout = if dir
            .join("heldout.jsonl")
            .metadata()
            .is_ok_and(|m| m.len() > 0)
        {
            read_prompt_file(&dir.join("heldout.jsonl"), max_line)?
        } else {
            vec![]
        };
        remove_temporaries(dir)?;
        let mut run = Self::open(dir, cfg, pool, heldout, label)?;
        if changed {
            // Checked and opened: the judge of the rest of the run, recorded.
            run.cfg.save(&dir.join("config.json"))?;
            eprintln!(
                "[{label}] --resume: judging from here on with {}",
                run.cfg.judge
            );
        }
        run.lock = Some(lock);
        run.run_id = match std::fs::read_to_string(dir.join(RUN_ID)) {
            Ok(id) => Some(id.trim().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => bail!("cannot read {}: {e}", dir.join(RUN_ID).display()),
        };
        Ok(run)
    }

    /// An error when iteration t's training stage exists but another run wrote it: a run
    /// never adopts, nor removes, what it did not write.
    fn check_stage_owner(&self, t: usize) -> Result<()> {
        let stage = &self.iter_dir(t).join("train");
        // A stage another live process holds is never ours to adopt or remove.
        RunLock::check_not_held(stage)?;
        let Some(id) = &self.run_id else {
            return Ok(());
        };
        if !stage.exists() {
            return Ok(());
        }
        // A stage killed before it recorded its owner has no model yet and is redone.
        let owner = match std::fs::read_to_string(stage.join(STAGE_OWNER)) {
            Ok(owner) => owner,
            Err(_) if !self.trained_dir(t).exists() => return Ok(()),
            Err(_) => String::new(),
        };
        if owner.trim() != id {
            bail!(
                "{}: this run did not write it (another command's output?); move it away to let the run train iteration {t} itself",
                stage.display()
            );
        }
        Ok(())
    }

    fn open(
        dir: &Path,
        cfg: TpoConfig,
        pool: Vec<Map<String, Value>>,
        heldout: Vec<Map<String, Value>>,
        label: &str,
    ) -> Result<TpoRun> {
        cfg.check()?;
        let needed = cfg.iterations.checked_mul(cfg.prompts_per_iteration);
        if needed.is_none_or(|n| pool.len() < n) {
            bail!(
                "{} training prompts, and {} iterations of {} fresh prompts need {} (lower --prompts-per-iteration or --iterations, or give more prompts)",
                pool.len(),
                cfg.iterations,
                cfg.prompts_per_iteration,
                needed.map_or("more".to_string(), |n| n.to_string())
            );
        }
        // The seed's config and tokenizer serve every iteration (checkpoints copy them).
        let config = ModelConfig::load(&cfg.model.join("config.json"))?;
        if config.head != crate::model::config::Head::CausalLm {
            bail!(
                "--model {}: a {}, not a causal language model to train",
                cfg.model.display(),
                config.class_name()
            );
        }
        let tokenizer = Tokenizer::load(&cfg.model)?;
        let rt = Runtime {
            end_token: end_token(&cfg.model, &config, &tokenizer)?,
            eos_ids: eos_ids(&cfg.model, &config, &tokenizer)?,
            tokenizer,
            mode: if cfg.chat_template {
                PromptMode::Chat
            } else {
                PromptMode::Raw
            },
            vocab_size: config.vocab_size,
            max_context: config.max_context,
            device: Device::CPU,
        };
        let judge = open_judge(
            &cfg.judge,
            &JudgeOptions {
                timeout_secs: cfg.judge_timeout_secs,
                retries: cfg.judge_retries,
                batch_size: cfg.judge_batch_size,
                micro_batch_tokens: cfg.micro_batch_tokens,
                llm: cfg.judge_llm.clone(),
            },
        )?;
        Ok(TpoRun {
            dir: dir.to_path_buf(),
            cfg,
            label: label.to_string(),
            rt,
            judge,
            pool,
            heldout,
            lock: None,
            run_id: None,
        })
    }

    /// Where the policy samples, is scored and trains, and where a reward-model judge runs
    /// (the CPU until set).
    pub fn set_device(&mut self, device: Device) -> Result<()> {
        self.judge.set_device(&device)?;
        self.rt.device = device;
        Ok(())
    }

    fn thoughts(&self) -> bool {
        self.cfg.thought_prompt.is_some()
    }

    pub fn iter_dir(&self, t: usize) -> PathBuf {
        self.dir.join(format!("iter-{t}"))
    }

    /// Where iteration t's training writes what it trains: train/model, or a LoRA run's
    /// train/adapter.
    fn trained_dir(&self, t: usize) -> PathBuf {
        let train = self.iter_dir(t).join("train");
        match self.cfg.lora {
            Some(_) => train.join("adapter"),
            None => train.join("model"),
        }
    }

    /// The checkpoint of iteration t: the seed for 0; a trained model, or the previous
    /// iteration's when t made no pairs. A LoRA run's is its adapter (`adapter_dir`), or
    /// the seed while there is none.
    pub fn model_dir(&self, t: usize) -> PathBuf {
        if self.cfg.lora.is_some() {
            return self
                .adapter_dir(t)
                .unwrap_or_else(|| self.cfg.model.clone());
        }
        if t == 0 {
            return self.cfg.model.clone();
        }
        let trained = self.trained_dir(t);
        if trained.exists() {
            trained
        } else {
            self.model_dir(t - 1)
        }
    }

    /// A LoRA run's adapter of iteration t: the starting one (if any) for 0; a trained one,
    /// or the previous iteration's when t made no pairs.
    fn adapter_dir(&self, t: usize) -> Option<PathBuf> {
        let lora = self.cfg.lora.as_ref()?;
        if t == 0 {
            return lora.start.clone();
        }
        let trained = self.trained_dir(t);
        if trained.exists() {
            Some(trained)
        } else {
            self.adapter_dir(t - 1)
        }
    }

    /// The policy of iteration t: its checkpoint, or a LoRA run's seed with the adapter of
    /// iteration t merged in.
    fn policy(&self, t: usize) -> Result<Model> {
        let Some(dir) = self.adapter_dir(t) else {
            return Model::load(&self.model_dir(t));
        };
        let mut model = Model::load(&self.cfg.model)?;
        let adapter = crate::model::peft::load(&dir, &model.config)?;
        adapter.merge_into(&model.layout, &mut model.params)?;
        Ok(model)
    }

    /// Runs every unfinished stage of every iteration; returns the summary rows.
    /// `on_row` is told the rows after each iteration, once `summary.md` and `report.html`
    /// hold it.
    pub fn run(
        &mut self,
        on_row: &mut dyn FnMut(&[IterationSummary]) -> Result<()>,
    ) -> Result<Vec<IterationSummary>> {
        let mut rows = vec![];
        for t in 0..=self.cfg.iterations {
            let row = self.iteration(t)?;
            rows.push(row);
            summary::write_table(&self.dir.join("summary.md"), &rows, self.thoughts())?;
            self.write_report(&rows)?;
            on_row(&rows)?;
        }
        Ok(rows)
    }

    /// RUN_DIR/report.html with `rows` and every DPO update written so far. A report that
    /// cannot be written is a warning, never the end of a run.
    fn write_report(&self, rows: &[IterationSummary]) -> Result<()> {
        if let Err(e) = self.try_write_report(rows) {
            eprintln!("[{}] warning: no report this time: {e:#}", self.label);
        }
        Ok(())
    }

    fn try_write_report(&self, rows: &[IterationSummary]) -> Result<()> {
        super::report::tpo_page(
            &format!("TPO run {}", self.dir.display()),
            &[self.series(rows)?],
        )
        .write(&self.dir.join("report.html"))
    }

    /// The rows of the iterations before t (all finished).
    fn done_rows(&self, t: usize) -> Result<Vec<IterationSummary>> {
        (0..t)
            .map(|i| read_json(&self.iter_dir(i).join("summary.json")))
            .collect()
    }

    /// The run as its report shows it, with `rows` so far.
    pub fn series(&self, rows: &[IterationSummary]) -> Result<super::report::TpoSeries> {
        super::report::TpoSeries::read(&self.dir, &self.label, self.thoughts(), rows)
    }

    fn iteration(&mut self, t: usize) -> Result<IterationSummary> {
        let dir = self.iter_dir(t);
        let done = dir.join("summary.json");
        if done.exists() {
            return read_json(&done);
        }
        // This iteration starts from the policy of the one before: this run's own.
        if t > 1 {
            self.check_stage_owner(t - 1)?;
        }
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        if t > 0 {
            self.timed(&dir, "generate", |r| r.sample_stage(t))?;
            self.timed(&dir, "judge", |r| r.judge_stage(t))?;
            self.timed(&dir, "reference", |r| r.pairs_stage(t))?;
            self.timed(&dir, "train", |r| r.train_stage(t))?;
            // The iteration's updates in the report before its evaluation.
            self.write_report(&self.done_rows(t)?)?;
        }
        if !self.heldout.is_empty() {
            self.timed(&self.dir.clone(), "seed_eval", |r| r.seed_eval_stage())?;
            self.timed(&dir, "eval", |r| r.eval_stage(t))?;
        }
        let row = summary::summarize(&self.dir, t, &read_times(&dir))?;
        crate::io::write_atomic(
            &done,
            (serde_json::to_string_pretty(&row)? + "\n").as_bytes(),
        )?;
        Ok(row)
    }

    /// Runs a stage (which returns false when its output was already there) and records
    /// its time in `dir/stages.json`.
    fn timed(
        &mut self,
        dir: &Path,
        name: &str,
        stage: impl FnOnce(&mut Self) -> Result<bool>,
    ) -> Result<()> {
        let started = Instant::now();
        if stage(self)? {
            let mut all = read_times(dir);
            all.insert(name.into(), json!(started.elapsed().as_secs_f64()));
            crate::io::write_atomic(
                &dir.join("stages.json"),
                (serde_json::to_string_pretty(&all)? + "\n").as_bytes(),
            )?;
        }
        Ok(())
    }

    fn note(&self, t: usize, what: &str) {
        eprintln!(
            "[{}] iteration {t}/{}: {what}",
            self.label, self.cfg.iterations
        );
    }

    fn prompts_of(&self, t: usize) -> (usize, &[Map<String, Value>]) {
        let n = self.cfg.prompts_per_iteration;
        ((t - 1) * n, &self.pool[(t - 1) * n..t * n])
    }

    /// K candidates per fresh prompt from the policy of iteration t-1.
    fn sample_stage(&mut self, t: usize) -> Result<bool> {
        let out = self.iter_dir(t).join("samples.jsonl");
        if out.exists() {
            return Ok(false);
        }
        let (first, prompts) = self.prompts_of(t);
        let s = &self.cfg.sampling;
        self.note(
            t,
            &format!(
                "sampling {} candidates for {} prompts",
                s.samples,
                prompts.len()
            ),
        );
        let model = self.policy(t - 1)?;
        let refs: Vec<&Map<String, Value>> = prompts.iter().collect();
        let ids = self.rt.render_all(&self.cfg, &refs, self.thoughts())?;
        let samples = self.rt.sample(
            &model,
            &ids,
            (s.samples, s.max_new_tokens, s.batch_size),
            s.params(),
            self.rt.steering(&self.cfg, self.thoughts())?,
            stage_seed(self.cfg.seed, t, 1),
            "tokens sampled",
        )?;
        let lines: Vec<PromptSamples> = samples
            .into_iter()
            .enumerate()
            .map(|(i, samples)| PromptSamples {
                index: first + i,
                samples,
            })
            .collect();
        write_jsonl(&out, &lines)?;
        Ok(true)
    }

    /// Parses every candidate and has the judge score the parsed responses.
    fn judge_stage(&mut self, t: usize) -> Result<bool> {
        let out = self.iter_dir(t).join("candidates.jsonl");
        if out.exists() {
            return Ok(false);
        }
        let lines: Vec<PromptSamples> = read_jsonl(&self.iter_dir(t).join("samples.jsonl"))?;
        let mut prompts = vec![];
        for line in &lines {
            let source = self.pool.get(line.index).with_context(|| {
                format!(
                    "samples.jsonl names prompt {} of {}",
                    line.index,
                    self.pool.len()
                )
            })?;
            let candidates = line
                .samples
                .iter()
                .map(|s| self.rt.parse(&self.cfg, s, self.thoughts()))
                .collect::<Result<Vec<_>>>()?;
            prompts.push(PromptCandidates {
                index: line.index,
                instruction: super::prompts::instruction(source)?,
                prompt: source.clone(),
                candidates,
            });
        }
        let malformed: usize = prompts
            .iter()
            .map(|p| {
                p.candidates
                    .iter()
                    .filter(|c| c.malformed.is_some())
                    .count()
            })
            .sum();
        let total: usize = prompts.iter().map(|p| p.candidates.len()).sum();
        self.note(
            t,
            &format!(
                "judging {} responses with {} ({malformed} of {total} malformed, not judged)",
                total - malformed,
                self.judge.describe()
            ),
        );
        judge_candidates(self.judge.as_mut(), &mut prompts)?;
        write_jsonl(&out, &prompts)?;
        Ok(true)
    }

    /// Length-controlled pairs, with the reference model's log-probs.
    fn pairs_stage(&mut self, t: usize) -> Result<bool> {
        let out = self.iter_dir(t).join("pairs.jsonl");
        if out.exists() {
            return Ok(false);
        }
        let candidates = self.iter_dir(t).join("candidates.jsonl");
        let prompts: Vec<PromptCandidates> = read_jsonl(&candidates)?;
        self.check_format(t, &prompts, &candidates)?;
        let (pairs, counts) = make_pairs(&self.cfg, &prompts);
        self.note(
            t,
            &format!(
                "{} pairs from {} prompts ({} skipped: all candidates tied; {} skipped: all malformed)",
                counts.pairs,
                prompts.len(),
                counts.all_tie,
                counts.no_parsed
            ),
        );
        let mut examples = pair_examples(&self.rt, &self.cfg, &prompts, &pairs, self.thoughts())?;
        if !examples.is_empty() {
            let model = match self.cfg.reference {
                super::config::Reference::Previous => self.policy(t - 1)?,
                super::config::Reference::Seed => self.policy(0)?,
            };
            reference_logps(
                &model,
                &mut examples,
                self.cfg.micro_batch_tokens,
                &self.rt.device,
            )?;
        }
        let thought = self.cfg.thought_prompt.as_ref();
        let mut lines = vec![];
        for (p, e) in pairs.iter().zip(&examples) {
            let pc = &prompts[p.prompt];
            let (c, r) = (&pc.candidates[p.chosen], &pc.candidates[p.rejected]);
            let mut line = super::prompts::wrap(&pc.prompt, thought);
            if let Some(t) = thought.filter(|_| self.cfg.format.prefill_thought) {
                // The assistant turn opened with it: part of the prompt, not of the sides.
                line.insert("prefill".into(), json!(t.prefill()));
            }
            line.insert("chosen".into(), json!(c.text));
            line.insert("rejected".into(), json!(r.text));
            line.insert("ref_chosen_logps".into(), json!(e.reference[0]));
            line.insert("ref_rejected_logps".into(), json!(e.reference[1]));
            line.insert("prompt_index".into(), json!(pc.index));
            line.insert("chosen_candidate".into(), json!(p.chosen));
            line.insert("rejected_candidate".into(), json!(p.rejected));
            line.insert("chosen_score".into(), json!(c.score));
            line.insert("rejected_score".into(), json!(r.score));
            lines.push(Value::Object(line));
        }
        // pairs.jsonl last: its presence marks the stage done.
        crate::io::write_atomic(
            &self.iter_dir(t).join("pair-counts.json"),
            serde_json::to_string(&counts)?.as_bytes(),
        )?;
        write_jsonl(&out, &lines)?;
        Ok(true)
    }

    /// Stops the run, or warns, by the iteration's malformed candidates
    /// (`MalformedCount::verdict`).
    fn check_format(&self, t: usize, prompts: &[PromptCandidates], file: &Path) -> Result<()> {
        let count = MalformedCount::of(prompts);
        let advice = || {
            count.advice(&self.cfg.format, self.cfg.sampling.max_new_tokens)
                + &format!(" (the candidates: {})", file.display())
        };
        match count.verdict(t) {
            Verdict::Stop => bail!(
                "iteration {t}: no pair can be made, so the model would stay as it was: {}. Start a new run with other options.",
                advice()
            ),
            Verdict::Warn => eprintln!("[{}] warning: iteration {t}: {}", self.label, advice()),
            Verdict::Fine => {}
        }
        Ok(())
    }

    /// DPO on the pairs, from the policy of iteration t-1; the checkpoint is train/model
    /// (a LoRA run: the adapter, train/adapter, continuing that of iteration t-1).
    fn train_stage(&mut self, t: usize) -> Result<bool> {
        self.check_stage_owner(t)?;
        let train_dir = self.iter_dir(t).join("train");
        if self.trained_dir(t).exists() || self.iter_dir(t).join("no-pairs").exists() {
            return Ok(false);
        }
        let prompts: Vec<PromptCandidates> =
            read_jsonl(&self.iter_dir(t).join("candidates.jsonl"))?;
        let pairs_path = self.iter_dir(t).join("pairs.jsonl");
        let pair_lines: Vec<Map<String, Value>> = read_jsonl(&pairs_path)?;
        // The pairs as the pairing stage stored them, checked against the candidates.
        let mut pairs = vec![];
        let mut references = vec![];
        for (i, line) in pair_lines.iter().enumerate() {
            let at = || format!("{}:{}", pairs_path.display(), i + 1);
            let uint = |k: &str| line.get(k).and_then(Value::as_u64).map(|v| v as usize);
            let float = |k: &str| line.get(k).and_then(Value::as_f64);
            let (Some(index), Some(chosen), Some(rejected)) = (
                uint("prompt_index"),
                uint("chosen_candidate"),
                uint("rejected_candidate"),
            ) else {
                bail!(
                    "{}: needs prompt_index, chosen_candidate and rejected_candidate",
                    at()
                );
            };
            let prompt = prompts.iter().position(|p| p.index == index);
            let Some(prompt) = prompt.filter(|&p| {
                let n = prompts[p].candidates.len();
                chosen < n && rejected < n && chosen != rejected
            }) else {
                bail!(
                    "{}: no such pair among the candidates of candidates.jsonl",
                    at()
                );
            };
            let (Some(c), Some(r)) = (float("ref_chosen_logps"), float("ref_rejected_logps"))
            else {
                bail!("{}: reference log-probs missing", at());
            };
            pairs.push(ChosenPair {
                prompt,
                chosen,
                rejected,
            });
            references.push(vec![c, r]);
        }
        if pairs.is_empty() {
            self.note(t, "no pairs: the model stays as it was");
            crate::io::write_atomic(&self.iter_dir(t).join("no-pairs"), b"")?;
            return Ok(true);
        }
        let mut examples: Vec<Example> =
            pair_examples(&self.rt, &self.cfg, &prompts, &pairs, self.thoughts())?;
        for (e, reference) in examples.iter_mut().zip(references) {
            e.reference = reference;
        }
        // A run killed while training left a partial directory: start the stage over.
        if train_dir.exists() {
            std::fs::remove_dir_all(&train_dir)
                .with_context(|| format!("cannot remove the unfinished {}", train_dir.display()))?;
        }
        let cfg = self.cfg.train_config(t);
        let total = crate::train::trainer::total_steps(examples.len(), &cfg);
        self.note(
            t,
            &format!("DPO on {} pairs: {total} updates", examples.len()),
        );
        let (source, mut model, mut adapter) = match &self.cfg.lora {
            None => {
                let source = self.model_dir(t - 1);
                let model = Model::load(&source)?;
                (source, model, None)
            }
            Some(lora) => {
                let model = Model::load(&self.cfg.model)?;
                let adapter = match self.adapter_dir(t - 1) {
                    Some(dir) => crate::model::peft::load(&dir, &model.config)?,
                    None => Adapter::init(&model.config, lora.config()?, self.cfg.seed),
                };
                (self.cfg.model.clone(), model, Some(adapter))
            }
        };
        let mut sink = RunDir::create(&train_dir, &source, self.cfg.save_steps, total)?
            .with_report(&format!("[{}] DPO of iteration {t}", self.label), true);
        if let Some(lora) = &self.cfg.lora {
            sink = sink.with_adapters(&lora.base_name);
        }
        if let Some(id) = &self.run_id {
            crate::io::write_atomic(&train_dir.join(STAGE_OWNER), id.as_bytes())?;
        }
        let result = train(
            &mut model,
            adapter.as_mut(),
            &examples,
            &cfg,
            &mut sink,
            &self.rt.device,
        );
        sink.finish_progress();
        result.with_context(|| format!("iteration {t}: training"))?;
        Ok(true)
    }

    /// The seed's direct answers to the held-out prompts: the baseline of the win rate.
    fn seed_eval_stage(&mut self) -> Result<bool> {
        let out = self.dir.join("eval-seed.jsonl");
        if out.exists() {
            return Ok(false);
        }
        let cands = self.answer_heldout(0, false)?;
        write_jsonl(&out, &cands)?;
        Ok(true)
    }

    /// One answer per held-out prompt from the policy of iteration t, parsed.
    fn answer_heldout(&self, t: usize, thoughts: bool) -> Result<Vec<Candidate>> {
        let model = self.policy(t)?;
        let refs: Vec<&Map<String, Value>> = self.heldout.iter().collect();
        let ids = self.rt.render_all(&self.cfg, &refs, thoughts)?;
        self.eval_samples(&model, &ids, thoughts, t)?
            .iter()
            .map(|s| self.rt.parse(&self.cfg, s, thoughts))
            .collect()
    }

    fn eval_samples(
        &self,
        model: &Model,
        ids: &[Vec<u32>],
        thoughts: bool,
        t: usize,
    ) -> Result<Vec<Sample>> {
        let params = if self.cfg.eval_temperature == 0.0 {
            SamplingParams::GREEDY
        } else {
            SamplingParams {
                temperature: self.cfg.eval_temperature,
                ..self.cfg.sampling.params()
            }
        };
        let s = self.rt.sample(
            model,
            ids,
            (
                1,
                self.cfg.sampling.max_new_tokens,
                self.cfg.sampling.batch_size,
            ),
            params,
            self.rt.steering(&self.cfg, thoughts)?,
            stage_seed(self.cfg.seed, t, 2),
            "held-out tokens",
        )?;
        Ok(s.into_iter().map(|mut v| v.remove(0)).collect())
    }

    /// Held-out answers of iteration t's model, judged beside the seed's.
    fn eval_stage(&mut self, t: usize) -> Result<bool> {
        let out = self.iter_dir(t).join("eval.jsonl");
        if out.exists() {
            return Ok(false);
        }
        self.note(
            t,
            &format!("evaluating on {} held-out prompts", self.heldout.len()),
        );
        let seed: Vec<Candidate> = read_jsonl(&self.dir.join("eval-seed.jsonl"))?;
        let cands = self.answer_heldout(t, self.thoughts())?;
        let refs: Vec<&Map<String, Value>> = self.heldout.iter().collect();
        let instructions = instructions(&refs);
        let shown = |c: &Candidate| {
            c.response
                .clone()
                .unwrap_or_else(|| c.text.trim().to_string())
        };
        let responses: Vec<(String, String)> = cands
            .iter()
            .zip(&seed)
            .map(|(c, s)| (shown(c), shown(s)))
            .collect();
        let groups: Vec<JudgeGroup> = refs
            .iter()
            .zip(&instructions)
            .zip(&responses)
            .map(|((p, i), (a, b))| JudgeGroup {
                source: p,
                instruction: i,
                responses: vec![a, b],
            })
            .collect();
        let scores = judge_groups(self.judge.as_mut(), &groups, "held-out answers judged")?;
        let lines: Vec<EvalLine> = cands
            .into_iter()
            .zip(responses)
            .zip(scores)
            .zip(instructions)
            .enumerate()
            .map(
                |(index, (((c, (response, seed_response)), s), instruction))| EvalLine {
                    index,
                    instruction,
                    outcome: match (s[0], s[1]) {
                        (Some(a), Some(b)) if a > b => Some(1.0),
                        (Some(a), Some(b)) if a == b => Some(0.5),
                        (Some(_), Some(_)) => Some(0.0),
                        _ => None,
                    },
                    score: s[0],
                    seed_score: s[1],
                    response_tokens: if c.response.is_some() {
                        c.response_tokens
                    } else {
                        c.tokens
                    },
                    thought_tokens: c.thought_tokens,
                    forced: c.forced,
                    thought: c.thought,
                    malformed: c.malformed,
                    text: c.text,
                    response,
                    seed_response,
                },
            )
            .collect();
        // AlpacaEval's file of the same answers, before eval.jsonl marks the stage done.
        let generator = self.generator(t);
        let entries = self
            .heldout
            .iter()
            .zip(&lines)
            .map(|(p, l)| super::alpaca::entry(p, &l.response, &generator))
            .collect::<Result<Vec<_>>>()?;
        super::alpaca::write(&self.iter_dir(t).join("alpaca-eval.json"), entries)?;
        write_jsonl(&out, &lines)?;
        Ok(true)
    }

    /// The model of iteration t in reports: the seed's directory name, the loop, the
    /// iteration ("seed-tpo-iter-2"); the same for every copy of the run.
    fn generator(&self, t: usize) -> String {
        let seed = self
            .cfg
            .model
            .file_name()
            .map_or("model".into(), |n| n.to_string_lossy());
        let how = if self.thoughts() { "tpo" } else { "direct" };
        format!("{seed}-{how}-iter-{t}")
    }
}

/// Creates `dir` (absent, or an empty directory, which is replaced) filled by `fill`,
/// atomically.
pub fn replace_empty_dir(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if dir.is_dir() {
        std::fs::remove_dir(dir).with_context(|| format!("cannot replace {}", dir.display()))?;
    }
    crate::io::create_dir_atomic(dir, fill)
}

fn read_times(dir: &Path) -> Map<String, Value> {
    read_json(&dir.join("stages.json")).unwrap_or_default()
}

/// Removes what killed writers left (`.NAME.PID.tmp`) under `dir`, refusing first when a
/// directory below is held by another live process (a stray command writing into the run),
/// whose temporary files are still being written.
fn remove_temporaries(dir: &Path) -> Result<()> {
    RunLock::check_not_held(dir)?;
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_dir = entry.file_type()?.is_dir();
        if name.starts_with('.') && name.ends_with(".tmp") {
            if is_dir {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            }
            .with_context(|| format!("cannot remove {}", path.display()))?;
        } else if is_dir {
            remove_temporaries(&path)?;
        }
    }
    Ok(())
}
