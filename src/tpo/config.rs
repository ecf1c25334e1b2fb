//! The resolved configuration of a TPO run, saved as RUN_DIR/config.json: `--resume` reads it
//! back, so a resumed run is the run that was started.

use super::format::FormatControl;
use super::judge::LlmJudgeOptions;
use super::thought::ThoughtPrompt;
use crate::backend::settings::SamplingParams;
use crate::train::{DpoConfig, Objective, OptimizerConfig, TrainConfig};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Which model gives the reference log-probs of iteration t's pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Reference {
    /// The model of iteration t-1, the policy's starting point (the paper's choice).
    Previous,
    /// The seed model, in every iteration.
    Seed,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sampling {
    /// Candidates per prompt (K).
    pub samples: usize,
    pub max_new_tokens: usize,
    /// 0: greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// 0: off.
    pub top_k: usize,
    /// Most sequences decoded together.
    pub batch_size: usize,
}

impl Sampling {
    pub fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TpoConfig {
    /// The seed checkpoint: the policy of iteration 0.
    pub model: PathBuf,
    /// The `--judge` spec.
    pub judge: String,
    pub judge_timeout_secs: f64,
    pub judge_retries: usize,
    pub judge_batch_size: usize,
    /// How an `openai:` judge is asked (defaults in runs made before it existed).
    #[serde(default)]
    pub judge_llm: LlmJudgeOptions,
    /// None: the direct-response baseline (no thought prompt).
    pub thought_prompt: Option<ThoughtPrompt>,
    pub iterations: usize,
    /// Fresh prompts per iteration, taken in order from the pool (never reused).
    pub prompts_per_iteration: usize,
    pub sampling: Sampling,
    /// Sampling of the held-out evaluation (one completion per prompt).
    pub eval_temperature: f32,
    /// Length control: s = z(score) - rho * z(response length).
    pub rho: f64,
    pub malformed_as_rejected: bool,
    pub reference: Reference,
    pub dpo: DpoConfig,
    pub optimizer: OptimizerConfig,
    pub epochs: usize,
    /// Pairs per optimizer update.
    pub batch_size: usize,
    pub micro_batch_tokens: usize,
    /// Save a checkpoint every this many updates within an iteration (0: only its model).
    pub save_steps: usize,
    pub seed: u64,
    /// Prompts go through the model's chat template (false: raw text).
    pub chat_template: bool,
    /// Decoding-time control of the thought format (off in runs made before it existed).
    #[serde(default)]
    pub format: FormatControl,
    /// LoRA: each iteration trains the adapter over the frozen seed (None: the whole model).
    #[serde(default)]
    pub lora: Option<LoraTraining>,
}

/// A run that trains a LoRA adapter: iteration t continues the adapter of iteration t-1,
/// over the seed's frozen weights.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LoraTraining {
    /// The adapter of iteration 0 (PEFT's format); None: a new one of the shape below.
    pub start: Option<PathBuf>,
    pub r: usize,
    pub alpha: f64,
    pub rslora: bool,
    /// LoRA dropout while training.
    #[serde(default)]
    pub dropout: f64,
    /// PEFT module names.
    pub targets: Vec<String>,
    /// The base model's name in the adapters' config: the --model given.
    pub base_name: String,
}

impl LoraTraining {
    /// The adapter's shape.
    pub fn config(&self) -> Result<crate::model::lora::LoraConfig> {
        let targets = crate::model::lora::Target::parse_names(&self.targets)?;
        crate::model::lora::LoraConfig::new(self.r, self.alpha, self.rslora, self.dropout, targets)
    }
}

impl TpoConfig {
    pub fn train_config(&self, iteration: usize) -> TrainConfig {
        TrainConfig {
            objective: Objective::Dpo(self.dpo),
            optimizer: self.optimizer,
            epochs: self.epochs,
            batch_size: self.batch_size,
            micro_batch_tokens: self.micro_batch_tokens,
            // Each iteration shuffles its pairs with its own stream.
            seed: self.seed.wrapping_add(iteration as u64),
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)? + "\n";
        crate::io::write_atomic(path, text.as_bytes())
    }

    pub fn load(path: &Path) -> Result<TpoConfig> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read {}: --resume needs a run directory made by `tpo-engine train`",
                path.display()
            )
        })?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not a TPO run configuration", path.display()))
    }

    /// Checks what flags cannot check one at a time.
    pub fn check(&self) -> Result<()> {
        if self.iterations == 0 {
            bail!("--iterations 0: expected at least 1");
        }
        if self.prompts_per_iteration == 0 {
            bail!("--prompts-per-iteration 0: expected at least 1");
        }
        let s = &self.sampling;
        if !(2..=1024).contains(&s.samples) {
            bail!(
                "--samples {}: expected 2 to 1024 (a pair needs two candidates)",
                s.samples
            );
        }
        if s.max_new_tokens == 0 {
            bail!("--max-new-tokens 0: expected at least 1");
        }
        if !(s.temperature >= 0.0 && s.temperature.is_finite()) {
            bail!(
                "--temperature {}: expected a finite number >= 0",
                s.temperature
            );
        }
        if !(s.top_p > 0.0 && s.top_p <= 1.0) {
            bail!("--top-p {}: expected a number in (0, 1]", s.top_p);
        }
        if s.batch_size == 0 {
            bail!("--gen-batch-size 0: expected at least 1");
        }
        let t = self.eval_temperature;
        if !(t >= 0.0 && t.is_finite()) {
            bail!("--eval-temperature {t}: expected a finite number >= 0");
        }
        if !(self.rho >= 0.0 && self.rho.is_finite()) {
            bail!("--rho {}: expected a finite number >= 0", self.rho);
        }
        if !(self.judge_timeout_secs > 0.0 && self.judge_timeout_secs.is_finite()) {
            bail!(
                "--judge-timeout {}: expected a number of seconds > 0",
                self.judge_timeout_secs
            );
        }
        self.format
            .check(self.thought_prompt.is_some(), s.max_new_tokens)?;
        if self.judge_batch_size == 0 {
            bail!("--judge-batch-size 0: expected at least 1");
        }
        Ok(())
    }
}
