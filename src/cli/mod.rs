//! The command line: parses arguments and calls the library.

mod config_file;
mod format;
mod generate;
mod lora;
mod merge;
mod task;
mod tpo;
mod train;

use crate::backend::device::{Device, DeviceChoice, Placement, Precision};
use crate::tiny::{make_tiny_model, TinySpec};
use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "tpo-engine",
    version,
    args_override_self = true,
    about = "Thought Preference Optimization: sampling and training for Llama-family models"
)]
pub struct Cli {
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Where the model runs: auto (CUDA when this build has its kernels and the driver and
    /// a device are there, else the CPU, saying why), cpu, cuda, or cuda:N.
    #[arg(long, global = true, default_value = "auto")]
    device: DeviceChoice,
    /// The matrix products' arithmetic: f32, or bf16 operands with f32 sums (weights, norms,
    /// softmax, log-probs and the loss stay f32). Default: f32 on the CPU, bf16 on CUDA
    /// (its only one). On the CPU, bf16 runs AMX-BF16 tiles, else AVX512-BF16, else
    /// widens to f32; TPO_CPU_BF16=amx|avx512-bf16|portable forces one.
    #[arg(long, global = true)]
    precision: Option<Precision>,
    /// Flag values from a TOML, YAML or JSON file, under the flags' names
    /// (`max-new-tokens = 512`); flags given on the command line override it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Thought Preference Optimization: sample thought + response candidates, judge the
    /// responses, pair best and worst, DPO, repeat. With no arguments: the built-in
    /// demonstration.
    Train(Box<tpo::TpoArgs>),
    /// Sample K completions per prompt from a Hugging Face checkpoint.
    Generate(generate::GenerateArgs),
    /// Train on preference pairs by DPO (reference log-probs computed once, up front).
    Dpo(train::DpoArgs),
    /// Supervised fine-tuning on prompt/completion examples (loss on the completion only).
    Sft(train::SftArgs),
    /// Summed log-prob of each completion given its prompt.
    Logprobs(train::LogprobsArgs),
    /// Fold a LoRA adapter (PEFT's format) into its base model: a full checkpoint.
    Merge(merge::MergeArgs),
    /// Write a small Llama checkpoint with random weights and a trained BPE tokenizer.
    InitModel {
        /// The checkpoint directory to create (must not exist).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        spec: TinySpec,
    },
    #[command(hide = true)]
    TaskData(task::TaskDataArgs),
}

const MAX_THREADS: usize = 1024;

pub fn run() -> Result<()> {
    let args = config_file::expand(std::env::args_os().collect(), &Cli::command())?;
    let cli = Cli::parse_from(args);
    if let Some(n) = cli.threads {
        if !(1..=MAX_THREADS).contains(&n) {
            bail!("--threads {n}: expected 1 to {MAX_THREADS}");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("cannot start the thread pool")?;
    }
    let placement = Placement {
        device: cli.device,
        precision: cli.precision,
    };
    match cli.command {
        Command::Train(args) => tpo::run_train(*args, placement),
        Command::Generate(args) => generate::run_generate(args, placement),
        Command::Dpo(args) => train::run_dpo(args, placement),
        Command::Sft(args) => train::run_sft(args, placement),
        Command::Logprobs(args) => train::run_logprobs(args, placement),
        Command::TaskData(args) => task::run(args),
        Command::Merge(args) => merge::run_merge(args),
        Command::InitModel { out, spec } => {
            make_tiny_model(&out, &spec)?;
            eprintln!("wrote {}", out.display());
            Ok(())
        }
    }
}

/// Opens the device a command runs on and says which it is (and, for auto on the CPU, why).
fn open_device(choice: Placement) -> Result<Device> {
    let (device, line) = Device::select(choice)?;
    eprintln!("{line}");
    Ok(device)
}
