//! Judges score responses. A judge sees the instruction and the response, never the thought.
//!
//! Every judge answers through one trait, [`Judge`]: one score per response, higher is better.
//! Pairwise judges implement [`PairwiseJudge`] and reach [`Judge`] through
//! [`elo::EloJudge`], which judges every pair in both orders and fits ELO scores by maximum
//! likelihood, as the paper does.

pub mod builtin;
pub mod command;
pub mod elo;
pub mod llm_prompt;
pub mod openai;
pub mod reward_model;
pub mod verdict;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One prompt's responses as a judge sees them.
#[derive(Clone, Debug)]
pub struct JudgeGroup<'a> {
    /// The prompt's JSONL object: its "prompt" text or "messages", and any task fields (the
    /// built-in task's reference answer, say).
    pub source: &'a Map<String, Value>,
    /// The instruction as text: the prompt, or the last user message.
    pub instruction: &'a str,
    /// The responses to score (thoughts already removed).
    pub responses: Vec<&'a str>,
}

pub trait Judge {
    /// What the judge is, for logs and the run's config.
    fn describe(&self) -> String;
    /// One score per response of each group, in order; higher is better. `progress` is told
    /// how many responses were scored as work finishes. A judge that
    /// [`leaves_unscored`](Judge::leaves_unscored) gives NaN for a response it could not
    /// score (an LLM whose answers could not be read): counted and left out, never guessed.
    fn score(&mut self, groups: &[JudgeGroup], progress: &dyn Fn(usize)) -> Result<Vec<Vec<f64>>>;
    /// Whether a NaN score means "no score" (see `score`); for any other judge a NaN is an
    /// error.
    fn leaves_unscored(&self) -> bool {
        false
    }
    /// Where a judge that runs a model runs it (the others ignore it).
    fn set_device(&mut self, _device: &crate::backend::device::Device) -> Result<()> {
        Ok(())
    }
}

/// Outcome of one battle, judged with `a` shown first and `b` second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preference {
    /// The first response is better (r = 1).
    First,
    /// The second response is better (r = -1).
    Second,
    /// A tie, or the judge could not decide (r = 0).
    Tie,
}

/// One ordered comparison of two responses to the same instruction.
#[derive(Clone, Debug)]
pub struct Battle<'a> {
    pub source: &'a Map<String, Value>,
    pub instruction: &'a str,
    pub first: &'a str,
    pub second: &'a str,
}

pub trait PairwiseJudge {
    fn describe(&self) -> String;
    /// One preference per battle, in order.
    fn compare(&mut self, battles: &[Battle], progress: &dyn Fn(usize)) -> Result<Vec<Preference>>;
}

/// How judges that run something behave: external commands and reward models.
#[derive(Clone, Debug)]
pub struct JudgeOptions {
    /// Seconds one call of an external command may take before it is killed.
    pub timeout_secs: f64,
    /// Further tries of a failed call before the run stops.
    pub retries: usize,
    /// Most requests in one call of an external command.
    pub batch_size: usize,
    /// Most tokens in one forward pass of a reward model.
    pub micro_batch_tokens: usize,
    /// How an `openai:` judge is asked.
    pub llm: LlmJudgeOptions,
}

/// Whether an LLM judge scores each response alone or compares two.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum JudgeMode {
    /// One score per response, read from the answer ("Score: 7").
    #[default]
    Pointwise,
    /// A verdict per pair of responses, asked in both orders, turned into scores by ELO.
    Pairwise,
}

impl JudgeMode {
    pub fn as_str(self) -> &'static str {
        match self {
            JudgeMode::Pointwise => "pointwise",
            JudgeMode::Pairwise => "pairwise",
        }
    }
}

/// How an `openai:` judge (a model behind a chat-completions API) is asked; recorded in a
/// run's configuration (the API key never is: only the name of the variable holding it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LlmJudgeOptions {
    /// The served model's name (None: the only one the server lists).
    pub model: Option<String>,
    pub mode: JudgeMode,
    /// The prompt template (None: the built-in one of the mode).
    pub prompt: Option<String>,
    /// Where the template was read from, for messages.
    pub prompt_file: Option<std::path::PathBuf>,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// The environment variable holding the API key (unset or empty: no key is sent).
    pub api_key_env: String,
    /// Seconds before the first retry of a failed request; doubled at each further one
    /// (a 429's Retry-After wins).
    pub backoff_secs: f64,
    /// Most tokens of one answer.
    pub max_tokens: usize,
}

impl Default for LlmJudgeOptions {
    fn default() -> Self {
        LlmJudgeOptions {
            model: None,
            mode: JudgeMode::Pointwise,
            prompt: None,
            prompt_file: None,
            concurrency: 8,
            api_key_env: "OPENAI_API_KEY".into(),
            backoff_secs: 1.0,
            max_tokens: 1024,
        }
    }
}

impl Default for JudgeOptions {
    fn default() -> Self {
        JudgeOptions {
            timeout_secs: 300.0,
            retries: 2,
            batch_size: 256,
            micro_batch_tokens: 8192,
            llm: LlmJudgeOptions::default(),
        }
    }
}

/// The judge a `--judge` spec names:
/// - `rm:DIR`: a reward model (a `LlamaForSequenceClassification` or
///   `Qwen2ForSequenceClassification` checkpoint);
/// - `cmd:COMMAND`: an external command giving pointwise scores (run by `sh -c`);
/// - `pairwise-cmd:COMMAND`: an external command giving pairwise preferences, turned into
///   scores by ELO;
/// - `builtin:NAME`: a programmatic judge of the built-in task;
/// - `openai:BASE_URL`: a model behind an OpenAI-compatible chat-completions API, asked
///   pointwise or pairwise (then turned into scores by ELO) as `opts.llm` says.
///
/// `opts.llm` belongs to `openai:` judges: given with another kind, it is an error.
pub fn open_judge(spec: &str, opts: &JudgeOptions) -> Result<Box<dyn Judge>> {
    let Some((kind, arg)) = spec.split_once(':') else {
        bail!("--judge {spec}: expected rm:DIR, cmd:COMMAND, pairwise-cmd:COMMAND, openai:BASE_URL or builtin:NAME");
    };
    if arg.trim().is_empty() {
        bail!("--judge {spec}: nothing after \"{kind}:\"");
    }
    if kind != "openai" && opts.llm != LlmJudgeOptions::default() {
        bail!(
            "--judge {spec}: --judge-model, --judge-mode, --judge-prompt, --judge-concurrency, --judge-max-tokens and --judge-api-key-env are for openai: judges only"
        );
    }
    Ok(match kind {
        "openai" => openai::open(arg, opts)?,
        "rm" => Box::new(reward_model::RewardModelJudge::load(
            &crate::io::hub::resolve_model(arg)?,
            opts,
        )?),
        "cmd" => Box::new(command::PointwiseCommand::new(arg, opts)?),
        "pairwise-cmd" => Box::new(elo::EloJudge::new(command::PairwiseCommand::new(
            arg, opts,
        )?)),
        "builtin" => builtin::builtin_judge(arg)?,
        _ => bail!(
            "--judge {spec}: unknown kind \"{kind}\" (expected rm, cmd, pairwise-cmd, openai or builtin)"
        ),
    })
}
