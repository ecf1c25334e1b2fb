//! `tpo-engine train`: the TPO loop, or with no arguments the built-in demonstration.

use super::format::FormatArgs;
use super::lora::LoraArgs;
use super::train::{dpo_config, train_config, DpoLossArgs, OptimArgs};
use crate::backend::device::Placement;
use crate::io::outputs::Inputs;
use crate::tpo::config::{LoraTraining, Reference, Sampling, TpoConfig};
use crate::tpo::judge::{JudgeMode, LlmJudgeOptions};
use crate::tpo::prompts::{prompt_line_limit, read_prompt_file};
use crate::tpo::run::JudgeChanges;
use crate::tpo::run::TpoRun;
use crate::tpo::summary::table;
use crate::tpo::thought::ThoughtPrompt;
use crate::train::Objective;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

#[derive(clap::Args, Clone, Debug)]
pub struct TpoArgs {
    /// Seed checkpoint: the policy of iteration 0. With no --model (and no other run
    /// flags), the built-in demonstration runs. A Hub id org/name[@revision] is read from
    /// the Hugging Face cache.
    #[arg(long)]
    model: Option<PathBuf>,
    /// JSONL, one {"prompt": ...} or {"messages": [...]} per line, plus any fields the judge
    /// reads; consumed in order, fresh prompts in every iteration.
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Held-out prompts for the evaluation after each iteration (default: the last
    /// --heldout-prompts lines of --prompts).
    #[arg(long)]
    heldout: Option<PathBuf>,
    /// How many prompts to hold out of --prompts when there is no --heldout (0: no
    /// evaluation).
    #[arg(long, default_value_t = 32)]
    heldout_prompts: usize,
    /// The judge: rm:DIR (a reward model), cmd:COMMAND (pointwise scores),
    /// pairwise-cmd:COMMAND (pairwise preferences, scored by ELO), openai:BASE_URL (an LLM
    /// behind a chat-completions API), builtin:NAME.
    #[arg(long)]
    judge: Option<String>,
    /// Seconds one call of a judge command, or one request to an openai: judge, may take.
    #[arg(long, default_value_t = 300.0)]
    judge_timeout: f64,
    /// Further tries of a failed judge call (and of an openai: judge's unreadable answer).
    #[arg(long, default_value_t = 2)]
    judge_retries: usize,
    /// openai: judges: the served model's name (default: the only model the server lists).
    #[arg(long)]
    judge_model: Option<String>,
    /// openai: judges: score each response alone, or compare pairs in both orders (scored
    /// by ELO).
    #[arg(long, value_enum, default_value_t = JudgeMode::Pointwise)]
    judge_mode: JudgeMode,
    /// openai: judges: a prompt template file with {instruction} and {response}
    /// (pointwise) or {instruction}, {response_a} and {response_b} (pairwise); default: the
    /// built-in prompt of the mode.
    #[arg(long, value_name = "FILE")]
    judge_prompt: Option<PathBuf>,
    /// openai: judges: requests in flight at once.
    #[arg(long, default_value_t = 8)]
    judge_concurrency: usize,
    /// openai: judges: most tokens of one answer (an answer cut there is unreadable: give a
    /// reasoning judge room to think).
    #[arg(long, default_value_t = 1024)]
    judge_max_tokens: usize,
    /// openai: judges: the environment variable holding the API key (sent as a bearer
    /// token; never logged or recorded).
    #[arg(long, default_value = "OPENAI_API_KEY")]
    judge_api_key_env: String,
    /// Most requests in one call of a judge command.
    #[arg(long, default_value_t = 256)]
    judge_batch_size: usize,
    #[arg(long, default_value_t = 3)]
    iterations: usize,
    /// Fresh prompts per iteration (default: the training prompts divided evenly).
    #[arg(long)]
    prompts_per_iteration: Option<usize>,
    /// generic, specific, or a JSON template file ("template" with {instruction},
    /// "thought_marker", "response_marker"). Not used with --no-thoughts.
    #[arg(long, default_value = "generic")]
    thought_prompt: String,
    /// The direct-response baseline: the same loop without a thought prompt.
    #[arg(long)]
    no_thoughts: bool,
    #[command(flatten)]
    format: FormatArgs,
    /// Candidates per prompt (K).
    #[arg(long, default_value_t = 8)]
    samples: usize,
    #[arg(long, default_value_t = 1024)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Keep only the K most likely tokens (0: off).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Most sequences decoded together.
    #[arg(long, default_value_t = 64)]
    gen_batch_size: usize,
    /// Temperature of the held-out answers (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    eval_temperature: f32,
    /// Length control: pairs by z(score) - rho * z(response length).
    #[arg(long, default_value_t = 0.0)]
    rho: f64,
    /// Never use a malformed candidate as the rejected side.
    #[arg(long)]
    no_malformed_rejected: bool,
    /// The reference model of iteration t: the previous iteration's model, or the seed.
    #[arg(long, value_enum, default_value_t = Reference::Previous)]
    reference: Reference,
    #[command(flatten)]
    loss: DpoLossArgs,
    #[command(flatten)]
    optim: OptimArgs,
    #[command(flatten)]
    lora: LoraArgs,
    /// Run directory (created; with --resume, an existing run to continue).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in --out where it stopped, with its saved configuration (other
    /// flags are not used).
    #[arg(long)]
    resume: bool,
    /// The demonstration at a reduced size (for tests).
    #[arg(long, hide = true)]
    quick: bool,
}

pub fn run_train(args: TpoArgs, device: Placement) -> Result<()> {
    if let (true, Some(out)) = (args.resume, &args.out) {
        if out.join("demo.json").exists() {
            return crate::tpo::demo::resume_demo(out, device);
        }
    }
    if args.model.is_none() && !args.resume {
        if args.prompts.is_some() || args.judge.is_some() || args.heldout.is_some() {
            bail!("--prompts, --heldout and --judge need --model (with no --model the built-in demonstration runs)");
        }
        if !only_demo_flags(&args) {
            bail!("the built-in demonstration (no --model) takes only --out; its settings are fixed (see the README), and the other flags need --model");
        }
        let out = args.out.unwrap_or_else(|| PathBuf::from("tpo-demo"));
        return crate::tpo::demo::run_demo(&out, args.quick, device);
    }
    let out = args
        .out
        .clone()
        .context("--out: the run directory is required")?;
    let device = super::open_device(device)?;
    let mut run = if args.resume {
        // The judge may change: what it already scored stays; everything else is fixed by
        // the run's saved configuration, and a flag that would change it is refused.
        let defaults = default_args();
        let mut rest = args.clone();
        rest.resume = false;
        let llm = llm_options(&rest)?;
        let changes = JudgeChanges {
            judge: rest.judge.take(),
            timeout_secs: (rest.judge_timeout != defaults.judge_timeout)
                .then_some(rest.judge_timeout),
            retries: (rest.judge_retries != defaults.judge_retries).then_some(rest.judge_retries),
            llm: (llm != LlmJudgeOptions::default()).then_some(llm),
        };
        rest.judge_timeout = defaults.judge_timeout;
        rest.judge_retries = defaults.judge_retries;
        rest.judge_model = None;
        rest.judge_mode = defaults.judge_mode;
        rest.judge_prompt = None;
        rest.judge_concurrency = defaults.judge_concurrency;
        rest.judge_max_tokens = defaults.judge_max_tokens;
        rest.judge_api_key_env = defaults.judge_api_key_env.clone();
        if !only_demo_flags(&rest) {
            bail!(
                "--resume: the run's saved configuration ({}) fixes everything but the judge; give only --out and, to change the judge, --judge and the --judge-* flags (or start a new run)",
                out.join("config.json").display()
            );
        }
        TpoRun::resume(&out, "tpo", &changes)?
    } else {
        let (cfg, pool, heldout) = resolve(&args)?;
        TpoRun::create(&out, cfg, pool, heldout, "tpo", &device)?
    };
    run.set_device(device)?;
    let thoughts = run.cfg.thought_prompt.is_some();
    let rows = run.run(&mut |rows| {
        eprintln!("\n{}", table(rows, thoughts));
        Ok(())
    })?;
    println!("{}", table(&rows, thoughts));
    eprintln!(
        "wrote {} (the last model: {})",
        out.display(),
        run.model_dir(run.cfg.iterations).display()
    );
    Ok(())
}

/// `train`'s flags as they are when none is given.
fn default_args() -> TpoArgs {
    #[derive(clap::Parser)]
    struct Defaults {
        #[command(flatten)]
        args: TpoArgs,
    }
    <Defaults as clap::Parser>::parse_from(["train"]).args
}

/// Whether every flag but --out and --quick has its default.
fn only_demo_flags(args: &TpoArgs) -> bool {
    let defaults = default_args();
    let mut given = args.clone();
    given.out = None;
    given.quick = false;
    format!("{given:?}") == format!("{defaults:?}")
}

/// How an `openai:` judge is asked, from the flags (the prompt file read here, so that the
/// run's configuration holds the template itself).
fn llm_options(args: &TpoArgs) -> Result<LlmJudgeOptions> {
    let prompt = match &args.judge_prompt {
        Some(path) => Some(std::fs::read_to_string(path).with_context(|| {
            format!(
                "--judge-prompt {}: cannot read the prompt template",
                path.display()
            )
        })?),
        None => None,
    };
    Ok(LlmJudgeOptions {
        model: args.judge_model.clone(),
        mode: args.judge_mode,
        prompt,
        prompt_file: args.judge_prompt.clone(),
        concurrency: args.judge_concurrency,
        max_tokens: args.judge_max_tokens,
        api_key_env: args.judge_api_key_env.clone(),
        ..LlmJudgeOptions::default()
    })
}

type Prompts = Vec<serde_json::Map<String, serde_json::Value>>;

/// A LoRA run's settings from the flags (None: the whole model trains); a starting
/// adapter is read (and checked against the model) here.
fn lora_training(args: &TpoArgs, model: &std::path::Path) -> Result<Option<LoraTraining>> {
    let given = args.model.as_ref().expect("checked by the caller");
    let base_name = given.display().to_string();
    let config = crate::model::Model::load_config(model)?;
    let Some(adapter) = args.lora.adapter(&config, args.optim.seed)? else {
        return Ok(None);
    };
    let start = match &args.lora.adapter {
        Some(flag) => Some(
            crate::io::hub::resolve_flag("--adapter", flag)?
                .canonicalize()
                .with_context(|| format!("--adapter {}: no such directory", flag.display()))?,
        ),
        None => None,
    };
    let lora = &adapter.config;
    Ok(Some(LoraTraining {
        start,
        r: lora.r,
        alpha: lora.alpha,
        rslora: lora.rslora,
        dropout: lora.dropout,
        targets: lora.targets.iter().map(|t| t.name().to_string()).collect(),
        base_name,
    }))
}

fn resolve(args: &TpoArgs) -> Result<(TpoConfig, Prompts, Prompts)> {
    let model = args.model.as_ref().expect("checked by the caller");
    let model = crate::io::hub::resolve_flag("--model", model)?
        .canonicalize()
        .with_context(|| format!("--model {}: no such directory", model.display()))?;
    let prompts_path = args
        .prompts
        .as_ref()
        .context("--prompts is required with --model")?;
    if let Some(out) = &args.out {
        let mut inputs = Inputs::default()
            .dir("--model", &model)
            .file("--prompts", prompts_path);
        if let Some(heldout) = &args.heldout {
            inputs = inputs.file("--heldout", heldout);
        }
        inputs.check_output("--out", out)?;
    }
    let judge = args
        .judge
        .clone()
        .context("--judge is required with --model")?;
    let max_line = prompt_line_limit(&model)?;
    let mut pool = read_prompt_file(prompts_path, max_line)?;
    let heldout = match &args.heldout {
        Some(path) => read_prompt_file(path, max_line)?,
        None => {
            if args.heldout_prompts >= pool.len() {
                bail!(
                    "--heldout-prompts {}: {} has only {} prompts (give --heldout FILE, or hold out fewer)",
                    args.heldout_prompts,
                    prompts_path.display(),
                    pool.len()
                );
            }
            pool.split_off(pool.len() - args.heldout_prompts)
        }
    };
    if args.iterations == 0 {
        bail!("--iterations 0: expected at least 1");
    }
    let per_iteration = args
        .prompts_per_iteration
        .unwrap_or(pool.len() / args.iterations);
    if per_iteration == 0 && args.prompts_per_iteration.is_none() {
        bail!(
            "{}: {} training prompts (after {} held out) cannot give {} iterations a fresh prompt each",
            prompts_path.display(),
            pool.len(),
            heldout.len(),
            args.iterations
        );
    }
    let dpo = dpo_config(&args.loss)?;
    let train = train_config(&args.optim, Objective::Dpo(dpo), 1e-6)?;
    let lora = lora_training(args, &model)?;
    let cfg = TpoConfig {
        model,
        judge,
        judge_timeout_secs: args.judge_timeout,
        judge_retries: args.judge_retries,
        judge_batch_size: args.judge_batch_size,
        judge_llm: llm_options(args)?,
        thought_prompt: if args.no_thoughts {
            None
        } else {
            Some(ThoughtPrompt::resolve(&args.thought_prompt)?)
        },
        iterations: args.iterations,
        prompts_per_iteration: per_iteration,
        sampling: Sampling {
            samples: args.samples,
            max_new_tokens: args.max_new_tokens,
            temperature: args.temperature,
            top_p: args.top_p,
            top_k: args.top_k,
            batch_size: args.gen_batch_size,
        },
        eval_temperature: args.eval_temperature,
        rho: args.rho,
        malformed_as_rejected: !args.no_malformed_rejected,
        reference: args.reference,
        dpo,
        optimizer: train.optimizer,
        epochs: train.epochs,
        batch_size: train.batch_size,
        micro_batch_tokens: train.micro_batch_tokens,
        save_steps: args.optim.save_steps,
        seed: args.optim.seed,
        chat_template: !args.optim.no_chat_template,
        format: args.format.control(!args.no_thoughts)?,
        lora,
    };
    Ok((cfg, pool, heldout))
}
