//! `tpo-engine generate`: sample K completions per prompt.

use super::format::FormatArgs;
use crate::backend::device::{Device, Placement};
use crate::backend::settings::SamplingParams;
use crate::engine::Engine;
use crate::generate::{eos_ids, read_prompts, GenerateOptions, PromptMode};
use crate::io::outputs::Inputs;
use crate::io::write_atomic;
use crate::memory;
use crate::model::Model;
use crate::tokenizer::Tokenizer;
use crate::tpo::alpaca;
use crate::tpo::prompts::{render, wrap};
use crate::tpo::thought::{Parsed, ThoughtPrompt};
use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;

const MAX_SAMPLES: usize = 4096;
const MAX_BATCH: usize = 65536;

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Checkpoint directory (config.json, *.safetensors, tokenizer.json), or a Hub id
    /// org/name[@revision] in the Hugging Face cache.
    #[arg(long)]
    model: PathBuf,
    /// A LoRA adapter (PEFT's format, a directory or a Hub id) merged into the model.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// JSONL, one {"prompt": ...} or {"messages": [...]} per line.
    #[arg(long)]
    prompts: PathBuf,
    /// Where to write the completions (JSONL, one line per prompt).
    #[arg(long)]
    out: PathBuf,
    /// Completions per prompt (K).
    #[arg(long, default_value_t = 1)]
    samples: usize,
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Keep only the K most likely tokens (0: off).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Always take the most likely token.
    #[arg(long)]
    greedy: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Feed prompt text as it is, without the chat template.
    #[arg(long)]
    no_chat_template: bool,
    /// End a completion where this text appears (repeatable); the text is cut before it.
    #[arg(long = "stop")]
    stops: Vec<String>,
    /// Never end on EOS: every completion runs to --max-new-tokens (for benchmarks).
    #[arg(long)]
    ignore_eos: bool,
    /// Most sequences decoded together.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Wrap each prompt's instruction in a thought prompt (generic, specific, or a JSON
    /// template file, as in `train`), and split each completion into "thought" and
    /// "response".
    #[arg(long)]
    thought_prompt: Option<String>,
    #[command(flatten)]
    format: FormatArgs,
    /// The output: JSONL, a line per prompt with its completions; or alpaca-eval, the
    /// JSON list AlpacaEval reads (instruction, output: the response alone with a thought
    /// prompt, generator), one completion per prompt.
    #[arg(long = "format", value_enum, default_value_t = OutputFormat::Jsonl)]
    output_format: OutputFormat,
    /// The `generator` of alpaca-eval entries (default: the model directory's name).
    #[arg(long)]
    generator: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum OutputFormat {
    Jsonl,
    AlpacaEval,
}

fn sampling_params(args: &GenerateArgs) -> Result<SamplingParams> {
    if args.greedy {
        return Ok(SamplingParams::GREEDY);
    }
    if !(args.temperature >= 0.0 && args.temperature.is_finite()) {
        bail!(
            "--temperature {}: expected a finite number >= 0",
            args.temperature
        );
    }
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        bail!("--top-p {}: expected a number in (0, 1]", args.top_p);
    }
    Ok(SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
    })
}

pub fn run_generate(mut args: GenerateArgs, device: Placement) -> Result<()> {
    let sampling = sampling_params(&args)?;
    if !(1..=MAX_SAMPLES).contains(&args.samples) {
        bail!("--samples {}: expected 1 to {MAX_SAMPLES}", args.samples);
    }
    if !(1..=MAX_BATCH).contains(&args.batch_size) {
        bail!(
            "--batch-size {}: expected 1 to {MAX_BATCH}",
            args.batch_size
        );
    }
    if args.max_new_tokens == 0 {
        bail!("--max-new-tokens 0: expected at least 1");
    }
    let alpaca = args.output_format == OutputFormat::AlpacaEval;
    if alpaca && args.samples != 1 {
        bail!(
            "--format alpaca-eval takes one output per instruction, and --samples is {}",
            args.samples
        );
    }
    if args.generator.is_some() && !alpaca {
        bail!("--generator names the model in --format alpaca-eval output");
    }
    if args.stops.iter().any(|s| s.is_empty()) {
        bail!("--stop: an empty stop string would stop at once");
    }
    args.model = crate::io::hub::resolve_flag("--model", &args.model)?;
    let thought = args
        .thought_prompt
        .as_deref()
        .map(ThoughtPrompt::resolve)
        .transpose()?;
    let control = args.format.control(thought.is_some())?;
    control.check(thought.is_some(), args.max_new_tokens)?;
    let mut inputs = Inputs::default()
        .file("--prompts", &args.prompts)
        .dir("--model", &args.model);
    if let Some(adapter) = &args.adapter {
        inputs = inputs.dir("--adapter", adapter);
    }
    inputs.check_output("--out", &args.out)?;
    let device = super::open_device(device)?;
    let started = Instant::now();
    // The prompts are read and checked before the weights: bad input costs no loading.
    let config = Model::load_config(&args.model)?;
    let tokenizer = Tokenizer::load(&args.model)?;
    let eos = if args.ignore_eos {
        vec![]
    } else {
        eos_ids(&args.model, &config, &tokenizer)?
    };
    let mode = if args.no_chat_template {
        PromptMode::Raw
    } else {
        PromptMode::Chat
    };
    let mut prompts = read_prompts(
        &args.prompts,
        &tokenizer,
        mode,
        config.vocab_size,
        config.max_context,
    )?;
    if alpaca {
        // Every entry needs its instruction: check them before any work.
        for p in &prompts {
            let source = p.source.as_object().expect("prompts are JSON objects");
            crate::tpo::prompts::instruction(source)
                .map_err(|e| anyhow::anyhow!("{}:{}: {e:#}", args.prompts.display(), p.line))?;
        }
    }
    let mut steering = None;
    if let Some(t) = &thought {
        let prefill = control.prefill_ids(t, &tokenizer)?;
        for p in prompts.iter_mut() {
            let source = p.source.as_object().expect("prompts are JSON objects");
            let ids = render(
                &wrap(source, Some(t)),
                &tokenizer,
                mode,
                config.vocab_size,
                config.max_context.saturating_sub(prefill.len()),
            )
            .map_err(|e| anyhow::anyhow!("{}:{}: {e:#}", args.prompts.display(), p.line))?;
            p.token_ids = [ids, prefill.clone()].concat();
        }
        steering = control.steering(t, &tokenizer)?;
    }
    if let Device::Cpu(cpu) = &device {
        let longest = prompts.iter().map(|p| p.token_ids.len()).max().unwrap_or(0);
        let seqs = args
            .batch_size
            .min(prompts.len().saturating_mul(args.samples));
        let positions = longest
            .saturating_add(args.max_new_tokens)
            .min(config.max_context);
        memory::generation(&config, seqs, positions, cpu.kept_bytes()).check("generate")?;
    }
    let adapter = args
        .adapter
        .as_ref()
        .map(|a| crate::model::peft::load_flag(a, &config))
        .transpose()?;
    let mut model = Model::load_with_config(&args.model, config)?;
    if let Some(adapter) = &adapter {
        adapter.merge_into(&model.layout, &mut model.params)?;
    }
    let load_secs = started.elapsed().as_secs_f64();

    let opts = GenerateOptions {
        samples: args.samples,
        max_new_tokens: args.max_new_tokens,
        sampling,
        seed: args.seed,
        batch_size: args.batch_size,
        eos_ids: eos,
        steering,
    };
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| p.token_ids.clone()).collect();
    let bar = ProgressBar::new((ids.len() * args.samples * args.max_new_tokens) as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} generating {pos} tokens [{elapsed_precise}] {per_sec}",
        )
        .expect("the template is valid"),
    );
    let stops = &args.stops;
    let is_stopped = |tokens: &[u32]| -> bool {
        !stops.is_empty()
            && tokenizer
                .decode_with_special(tokens)
                .is_ok_and(|text| stops.iter().any(|s| text.contains(s.as_str())))
    };
    let gen_started = Instant::now();
    let engine = Engine::new(&model, &device)?;
    let (completions, stats) = engine.generate(&ids, &opts, &is_stopped, &|n| bar.inc(n as u64))?;
    let gen_secs = gen_started.elapsed().as_secs_f64();
    bar.finish_and_clear();

    let generator = args
        .generator
        .clone()
        .unwrap_or_else(|| model_name(&args.model));
    let mut out = String::new();
    let mut entries = vec![];
    let mut generated = 0;
    for (prompt, samples) in prompts.iter().zip(&completions) {
        let mut items = vec![];
        for c in samples {
            generated += c.token_ids.len();
            let mut text = tokenizer.decode(&c.token_ids)?;
            if let Some(cut) = stops.iter().filter_map(|s| text.find(s.as_str())).min() {
                text.truncate(cut);
            }
            let mut item = json!({"text": text, "token_ids": c.token_ids, "finish_reason": c.finish_reason.as_str()});
            if let Some(t) = &thought {
                let (thought, response, malformed) = match t.parse(&text, control.prefill_thought) {
                    Parsed::Ok { thought, response } => (Some(thought), Some(response), None),
                    Parsed::Malformed(why) => (None, None, Some(why)),
                };
                item["thought"] = json!(thought);
                item["response"] = json!(response);
                item["malformed"] = json!(malformed);
                item["forced"] = json!(c.forced);
            }
            if alpaca {
                // What a user sees: the response, or the whole text when it has none.
                let output = item["response"].as_str().unwrap_or(text.trim());
                let source = prompt.source.as_object().expect("prompts are JSON objects");
                entries.push(alpaca::entry(source, output, &generator)?);
            }
            items.push(item);
        }
        let mut line = prompt.source.clone();
        line["prompt_tokens"] = json!(prompt.token_ids.len());
        line["completions"] = Value::Array(items);
        out.push_str(&serde_json::to_string(&line)?);
        out.push('\n');
    }
    if alpaca {
        alpaca::write(&args.out, entries)?;
    } else {
        write_atomic(&args.out, out.as_bytes())?;
    }

    let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    eprintln!(
        "{} prompts x {} samples: {generated} tokens in {gen_secs:.2}s ({:.0} tokens/s); prefill {} tokens ({:.0} tokens/s), decode {} tokens ({:.0} tokens/s); load {load_secs:.2}s; wrote {}",
        prompts.len(),
        args.samples,
        rate(generated, gen_secs),
        stats.prefill_tokens,
        rate(stats.prefill_tokens, stats.prefill_secs),
        stats.decode_tokens,
        rate(stats.decode_tokens, stats.decode_secs),
        args.out.display()
    );
    Ok(())
}

/// A model's name for reports: its directory's last component.
fn model_name(dir: &std::path::Path) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    dir.file_name()
        .map_or("model".to_string(), |n| n.to_string_lossy().into_owned())
}
