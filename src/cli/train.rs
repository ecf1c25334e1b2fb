//! `tpo-engine dpo`, `sft` and `logprobs`: training and scoring on the run's device.

use super::lora::LoraArgs;
use crate::backend::device::{Device, Placement};
use crate::engine::{train, Engine};
use crate::generate::{end_token, PromptMode};
use crate::io::hub::resolve_flag;
use crate::io::outputs::Inputs;
use crate::io::write_atomic;
use crate::memory;
use crate::model::config::ModelConfig;
use crate::model::graph::ScoredSequence;
use crate::model::lora::Adapter;
use crate::model::Model;
use crate::tokenizer::Tokenizer;
use crate::train::data::{read_completions, read_pairs, TextEncoder, REF_CHOSEN, REF_REJECTED};
use crate::train::run::RunDir;
use crate::train::trainer::total_steps;
use crate::train::{
    DpoConfig, DpoLossType, Example, LrSchedule, Objective, OptimizerConfig, TrainConfig,
};
use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Options every training command shares.
#[derive(clap::Args)]
pub struct TrainArgs {
    /// Checkpoint directory to start from (config.json, *.safetensors, tokenizer.json), or
    /// a Hub id org/name[@revision] in the Hugging Face cache.
    #[arg(long)]
    model: PathBuf,
    /// Run directory to create: metrics.jsonl, checkpoint-STEP/ and the trained model/.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    pub optim: OptimArgs,
    #[command(flatten)]
    pub lora: LoraArgs,
}

/// The optimizer and batching flags of every training command.
#[derive(clap::Args, Clone, Debug)]
pub struct OptimArgs {
    /// Peak learning rate (default: 1e-6 for dpo, 2e-5 for sft, as TRL).
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long, value_enum, default_value_t = LrSchedule::Linear)]
    pub lr_schedule: LrSchedule,
    /// Updates over which the learning rate rises linearly from 0.
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: usize,
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Examples (dpo: pairs) per optimizer update.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Most tokens in one forward/backward pass; a batch is split into such micro-batches
    /// and their gradients accumulated.
    #[arg(long, default_value_t = 4096)]
    pub micro_batch_tokens: usize,
    /// AdamW weight decay (on matrices; never on norm weights or biases).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 0.9)]
    pub adam_beta1: f64,
    #[arg(long, default_value_t = 0.999)]
    pub adam_beta2: f64,
    #[arg(long, default_value_t = 1e-8)]
    pub adam_eps: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Save a checkpoint every this many updates (0: only the final model).
    #[arg(long, default_value_t = 0)]
    pub save_steps: usize,
    /// Seed of the example order; a run is deterministic for a given seed, whatever the
    /// thread count.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Feed prompt text as it is, without the chat template.
    #[arg(long)]
    pub no_chat_template: bool,
}

#[derive(clap::Args)]
pub struct DpoArgs {
    /// JSONL, one {"prompt", "chosen", "rejected"} per line; the completions are the text
    /// after the prompt. Optional "ref_chosen_logps" and "ref_rejected_logps" skip the
    /// reference pass.
    #[arg(long)]
    pairs: PathBuf,
    #[command(flatten)]
    loss: DpoLossArgs,
    #[command(flatten)]
    train: TrainArgs,
}

/// The DPO loss flags.
#[derive(clap::Args, Clone, Debug)]
pub struct DpoLossArgs {
    #[arg(long, default_value_t = 0.1)]
    pub beta: f64,
    #[arg(long, value_enum, default_value_t = DpoLossType::Sigmoid)]
    pub loss: DpoLossType,
    /// Assumed probability that a preference is flipped (sigmoid loss).
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f64,
    /// Weight of an NLL term on the chosen completions (DPO+NLL); 0 disables it.
    #[arg(long, default_value_t = 0.0)]
    pub nll_alpha: f64,
}

#[derive(clap::Args)]
pub struct SftArgs {
    /// JSONL, one {"prompt", "completion"} per line.
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    train: TrainArgs,
}

#[derive(clap::Args)]
pub struct LogprobsArgs {
    /// Checkpoint directory, or a Hub id org/name[@revision] in the Hugging Face cache.
    #[arg(long)]
    model: PathBuf,
    /// A LoRA adapter (PEFT's format, a directory or a Hub id) merged into the model.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// JSONL, one {"prompt", "completion"} per line.
    #[arg(long)]
    input: PathBuf,
    /// Output JSONL: each input line with "sum_logprob" and "n_tokens" added.
    #[arg(long)]
    out: PathBuf,
    /// Most tokens in one forward pass.
    #[arg(long, default_value_t = 8192)]
    micro_batch_tokens: usize,
    /// Feed prompt text as it is, without the chat template.
    #[arg(long)]
    no_chat_template: bool,
}

const MAX_EPOCHS: usize = 10_000;
const MAX_BATCH: usize = 65_536;

/// A model with what is needed to encode its training text.
/// What reading a command's data needs of its model: the config and the tokenizer. The
/// weights are loaded after the data is read and checked (`weights`), so that bad input
/// costs no loading.
struct Loaded {
    dir: PathBuf,
    config: ModelConfig,
    tokenizer: Tokenizer,
    end_token: u32,
}

fn load(dir: &Path) -> Result<Loaded> {
    let config = Model::load_config(dir)?;
    let tokenizer = Tokenizer::load(dir)?;
    let end_token = end_token(dir, &config, &tokenizer)?;
    Ok(Loaded {
        dir: dir.to_path_buf(),
        config,
        tokenizer,
        end_token,
    })
}

impl Loaded {
    fn weights(&self) -> Result<Model> {
        Model::load_with_config(&self.dir, self.config.clone())
    }
}

fn encoder<'a>(l: &'a Loaded, no_chat_template: bool) -> TextEncoder<'a> {
    TextEncoder {
        tokenizer: &l.tokenizer,
        mode: if no_chat_template {
            PromptMode::Raw
        } else {
            PromptMode::Chat
        },
        end_token: l.end_token,
        vocab_size: l.config.vocab_size,
        max_context: l.config.max_context,
    }
}

/// Summed log-probs of each example's sequences under `model` with `adapter` (the DPO
/// reference: the starting policy). An adapter that changes the model is merged into a
/// copy for the pass, which is dropped after it.
fn reference_logps(
    model: &Model,
    adapter: Option<&Adapter>,
    device: &Device,
    examples: &[Example],
    micro_batch_tokens: usize,
) -> Result<Vec<f64>> {
    let merged = match adapter {
        Some(a) if !a.is_identity() => Some(a.merged(model)?),
        _ => None,
    };
    let model = merged.as_ref().unwrap_or(model);
    let bar = progress_bar(2 * examples.len(), "reference log-probs");
    let logps = Engine::new(model, device)?
        .score_examples(examples, micro_batch_tokens, &|n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    Ok(logps)
}

fn check_range(flag: &str, value: f64, ok: bool, expected: &str) -> Result<()> {
    if !ok || !value.is_finite() {
        bail!("{flag} {value}: expected {expected}");
    }
    Ok(())
}

pub fn train_config(
    args: &OptimArgs,
    objective: Objective,
    default_lr: f64,
) -> Result<TrainConfig> {
    let lr = args.lr.unwrap_or(default_lr);
    check_range("--lr", lr, lr >= 0.0, "a finite number >= 0")?;
    let b1 = args.adam_beta1;
    check_range(
        "--adam-beta1",
        b1,
        (0.0..1.0).contains(&b1),
        "a number in [0, 1)",
    )?;
    let b2 = args.adam_beta2;
    check_range(
        "--adam-beta2",
        b2,
        (0.0..1.0).contains(&b2),
        "a number in [0, 1)",
    )?;
    let eps = args.adam_eps;
    check_range("--adam-eps", eps, eps > 0.0, "a number > 0")?;
    let wd = args.weight_decay;
    check_range("--weight-decay", wd, wd >= 0.0, "a finite number >= 0")?;
    let clip = args.max_grad_norm;
    check_range(
        "--max-grad-norm",
        clip,
        clip >= 0.0,
        "a finite number >= 0 (0: off)",
    )?;
    if !(1..=MAX_EPOCHS).contains(&args.epochs) {
        bail!("--epochs {}: expected 1 to {MAX_EPOCHS}", args.epochs);
    }
    if !(1..=MAX_BATCH).contains(&args.batch_size) {
        bail!(
            "--batch-size {}: expected 1 to {MAX_BATCH}",
            args.batch_size
        );
    }
    if args.micro_batch_tokens == 0 {
        bail!("--micro-batch-tokens 0: expected at least 1");
    }
    Ok(TrainConfig {
        objective,
        optimizer: OptimizerConfig {
            lr,
            beta1: b1,
            beta2: b2,
            eps,
            weight_decay: wd,
            max_grad_norm: clip,
            schedule: args.lr_schedule,
            warmup_steps: args.warmup_steps,
        },
        epochs: args.epochs,
        batch_size: args.batch_size,
        micro_batch_tokens: args.micro_batch_tokens,
        seed: args.seed,
    })
}

pub fn dpo_config(args: &DpoLossArgs) -> Result<DpoConfig> {
    check_range("--beta", args.beta, args.beta > 0.0, "a number > 0")?;
    let ls = args.label_smoothing;
    check_range(
        "--label-smoothing",
        ls,
        (0.0..0.5).contains(&ls),
        "a number in [0, 0.5)",
    )?;
    if ls > 0.0 && args.loss != DpoLossType::Sigmoid {
        bail!("--label-smoothing applies to the sigmoid loss only");
    }
    let a = args.nll_alpha;
    check_range("--nll-alpha", a, a >= 0.0, "a finite number >= 0")?;
    Ok(DpoConfig {
        loss_type: args.loss,
        beta: args.beta,
        label_smoothing: ls,
        nll_alpha: a,
    })
}

fn progress_bar(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{bar:30}} {{pos}}/{{len}} {what} [{{elapsed_precise}}<{{eta_precise}}]"
        ))
        .expect("the template is valid"),
    );
    bar
}

pub fn run_dpo(mut args: DpoArgs, device: Placement) -> Result<()> {
    let base_name = args.train.model.display().to_string();
    args.train.model = resolve_flag("--model", &args.train.model)?;
    let dpo = dpo_config(&args.loss)?;
    let cfg = train_config(&args.train.optim, Objective::Dpo(dpo), 1e-6)?;
    let inputs = Inputs::default()
        .file("--pairs", &args.pairs)
        .dir("--model", &args.train.model);
    args.train
        .lora
        .check(inputs)?
        .check_output("--out", &args.train.out)?;
    RunDir::check_free(&args.train.out)?;
    let device = super::open_device(device)?;
    let loaded = load(&args.train.model)?;
    let pairs = read_pairs(
        &args.pairs,
        &encoder(&loaded, args.train.optim.no_chat_template),
    )?;
    let total = total_steps(pairs.len(), &cfg);
    let mut adapter = trained_adapter(&args.train.lora, &loaded.config, &cfg, &device, "dpo")?;
    let model = loaded.weights()?;
    // The output is claimed (created and locked) before the work that fills it.
    let mut run = RunDir::create(
        &args.train.out,
        &args.train.model,
        args.train.optim.save_steps,
        total,
    )?
    .with_report(&format!("dpo run {}", args.train.out.display()), true);
    if adapter.is_some() {
        run = run.with_adapters(&base_name);
    }

    // The reference is the starting model: its log-probs are computed once, here, and stored
    // with the pairs, so no second model is resident while training.
    let ref_started = Instant::now();
    let mut examples: Vec<Example> = pairs
        .iter()
        .map(|p| Example {
            seqs: vec![
                [p.prompt.as_slice(), &p.chosen].concat(),
                [p.prompt.as_slice(), &p.rejected].concat(),
            ],
            prompt_len: p.prompt.len(),
            reference: p.reference.map_or(vec![], |(c, r)| vec![c, r]),
        })
        .collect();
    if pairs[0].reference.is_none() {
        // A failed pass gives the claimed output back as it was.
        let (a, budget) = (adapter.as_ref(), cfg.micro_batch_tokens);
        let filled = reference_logps(&model, a, &device, &examples, budget).and_then(|logps| {
            if let Some(i) = logps.iter().position(|x| !x.is_finite()) {
                bail!(
                    "{}:{}: the reference log-prob is {}: the model {} produces non-finite values",
                    args.pairs.display(),
                    pairs[i / 2].line,
                    logps[i],
                    args.train.model.display()
                );
            }
            for (e, lp) in examples.iter_mut().zip(logps.chunks_exact(2)) {
                e.reference = lp.to_vec();
            }
            Ok(())
        });
        if let Err(e) = filled {
            run.discard();
            return Err(e);
        }
    }
    let ref_secs = ref_started.elapsed().as_secs_f64();
    let mut text = String::new();
    for (p, e) in pairs.iter().zip(&examples) {
        let mut line = p.source.clone();
        line[REF_CHOSEN] = json!(e.reference[0]);
        line[REF_REJECTED] = json!(e.reference[1]);
        text.push_str(&serde_json::to_string(&line)?);
        text.push('\n');
    }
    write_atomic(&run.out.join("pairs.jsonl"), text.as_bytes())?;

    eprintln!(
        "{} pairs; reference log-probs in {ref_secs:.2}s; {total} updates{}",
        pairs.len(),
        adapter_line(adapter.as_ref())
    );
    finish(model, adapter.as_mut(), &examples, &cfg, &mut run, &device)
}

/// What a LoRA run trains, for the start line.
fn adapter_line(adapter: Option<&Adapter>) -> String {
    adapter.map_or(String::new(), |a| {
        format!(
            "; LoRA r {} (scale {}) on {} Linears: {} trained parameters",
            a.config.r,
            a.config.scale(),
            a.layout.linears.len(),
            a.layout.len
        )
    })
}

/// The adapter a training command trains (None: the whole model), once what the run
/// will hold in memory, the whole model's state or a LoRA run's, is found to fit.
fn trained_adapter(
    lora: &LoraArgs,
    model: &ModelConfig,
    cfg: &TrainConfig,
    device: &Device,
    command: &str,
) -> Result<Option<Adapter>> {
    let adapter = lora.adapter(model, cfg.seed)?;
    let tokens = cfg.micro_batch_tokens;
    let need = match &adapter {
        Some(a) => memory::lora_training(model, a.layout.len as u64, tokens),
        None => memory::training(model, tokens),
    };
    need.check_on(device, command)?;
    Ok(adapter)
}

pub fn run_sft(mut args: SftArgs, device: Placement) -> Result<()> {
    let base_name = args.train.model.display().to_string();
    args.train.model = resolve_flag("--model", &args.train.model)?;
    let cfg = train_config(&args.train.optim, Objective::Sft, 2e-5)?;
    let inputs = Inputs::default()
        .file("--data", &args.data)
        .dir("--model", &args.train.model);
    args.train
        .lora
        .check(inputs)?
        .check_output("--out", &args.train.out)?;
    RunDir::check_free(&args.train.out)?;
    let device = super::open_device(device)?;
    let loaded = load(&args.train.model)?;
    let data = read_completions(
        &args.data,
        &encoder(&loaded, args.train.optim.no_chat_template),
    )?;
    let total = total_steps(data.len(), &cfg);
    let mut adapter = trained_adapter(&args.train.lora, &loaded.config, &cfg, &device, "sft")?;
    let model = loaded.weights()?;
    let mut run = RunDir::create(
        &args.train.out,
        &args.train.model,
        args.train.optim.save_steps,
        total,
    )?
    .with_report(&format!("sft run {}", args.train.out.display()), false);
    if adapter.is_some() {
        run = run.with_adapters(&base_name);
    }
    let examples: Vec<Example> = data
        .iter()
        .map(|e| Example {
            seqs: vec![[e.prompt.as_slice(), &e.completion].concat()],
            prompt_len: e.prompt.len(),
            reference: vec![],
        })
        .collect();
    eprintln!(
        "{} examples; {total} updates{}",
        data.len(),
        adapter_line(adapter.as_ref())
    );
    finish(model, adapter.as_mut(), &examples, &cfg, &mut run, &device)
}

fn finish(
    mut model: Model,
    adapter: Option<&mut Adapter>,
    examples: &[Example],
    cfg: &TrainConfig,
    run: &mut RunDir,
    device: &Device,
) -> Result<()> {
    let summary = train(&mut model, adapter, examples, cfg, run, device)?;
    run.finish_progress();
    let metric = |name: &str| {
        summary
            .last_metrics
            .get(name)
            .and_then(Value::as_f64)
            .map_or(String::new(), |v| format!(", {name} {v:.4}"))
    };
    eprintln!(
        "{} updates, {} tokens in {:.2}s ({:.0} tokens/s); last loss {:.4}{}{}; wrote {}",
        summary.steps,
        summary.tokens,
        summary.secs,
        summary.tokens as f64 / summary.secs.max(1e-9),
        summary.last_metrics["loss"].as_f64().unwrap_or(f64::NAN),
        metric("rewards/accuracies"),
        metric("rewards/margins"),
        run.model_dir().display()
    );
    Ok(())
}

pub fn run_logprobs(mut args: LogprobsArgs, device: Placement) -> Result<()> {
    if args.micro_batch_tokens == 0 {
        bail!("--micro-batch-tokens 0: expected at least 1");
    }
    args.model = resolve_flag("--model", &args.model)?;
    let mut inputs = Inputs::default()
        .file("--input", &args.input)
        .dir("--model", &args.model);
    if let Some(adapter) = &args.adapter {
        inputs = inputs.dir("--adapter", adapter);
    }
    inputs.check_output("--out", &args.out)?;
    let device = super::open_device(device)?;
    let loaded = load(&args.model)?;
    let data = read_completions(&args.input, &encoder(&loaded, args.no_chat_template))?;
    memory::scoring(&loaded.config, args.micro_batch_tokens).check_on(&device, "logprobs")?;
    let adapter = args
        .adapter
        .as_ref()
        .map(|a| crate::model::peft::load_flag(a, &loaded.config))
        .transpose()?;
    let mut model = loaded.weights()?;
    if let Some(adapter) = &adapter {
        adapter.merge_into(&model.layout, &mut model.params)?;
    }
    let seqs: Vec<Vec<u32>> = data
        .iter()
        .map(|e| [e.prompt.as_slice(), &e.completion].concat())
        .collect();
    let scored: Vec<ScoredSequence> = seqs
        .iter()
        .zip(&data)
        .map(|(tokens, e)| ScoredSequence {
            tokens,
            prompt_len: e.prompt.len(),
        })
        .collect();
    let started = Instant::now();
    let bar = progress_bar(scored.len(), "sequences");
    let logps = Engine::new(&model, &device)?
        .score(&scored, args.micro_batch_tokens, &|n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    let mut text = String::new();
    for ((e, lp), tokens) in data.iter().zip(&logps).zip(&seqs) {
        if !lp.is_finite() {
            bail!(
                "{}:{}: the log-prob is {lp}: the model {} produces non-finite values",
                args.input.display(),
                e.line,
                args.model.display()
            );
        }
        let mut line = e.source.clone();
        line["sum_logprob"] = json!(lp);
        line["n_tokens"] = json!(tokens.len() - e.prompt.len());
        text.push_str(&serde_json::to_string(&line)?);
        text.push('\n');
    }
    write_atomic(&args.out, text.as_bytes())?;
    let tokens: usize = seqs.iter().map(Vec::len).sum();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{} sequences, {tokens} tokens in {secs:.2}s ({:.0} tokens/s); wrote {}",
        data.len(),
        tokens as f64 / secs.max(1e-9),
        args.out.display()
    );
    Ok(())
}
