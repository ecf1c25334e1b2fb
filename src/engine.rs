//! The one place that dispatches on the device: an `Engine` is a model ready on the device
//! a command runs on (the CPU's weights as they are, or a bf16 copy on a GPU), and scores,
//! generates and classifies through the one graph; `train` trains on that device. Nothing
//! else in the crate matches on `Device`.

use crate::backend::cpu::Cpu;
use crate::backend::cuda::CudaOps;
use crate::backend::device::Device;
use crate::backend::ops::Ops;
use crate::generate::{self, Completion, GenerateOptions, GenerateStats};
use crate::model::cuda::GpuModel;
use crate::model::graph::Net;
use crate::model::graph::{Activations, ScoredSequence};
use crate::model::lora::Adapter;
use crate::model::Model;
use crate::train::batching::{micro_batches, score_on, working_rows};
use crate::train::trainer::{micro_batch_rows, train_on, RunSink, TrainSummary};
use crate::train::{Example, TrainConfig};
use anyhow::{bail, Result};

/// What a classifier's pass hands on: its sequences (indices) and their logits, (S, L).
pub type OnPass<'a> = dyn FnMut(&[usize], &[f32]) + 'a;

/// A model on the device it runs on.
pub enum Engine<'m> {
    Cpu(&'m Model, Cpu),
    /// bf16 weights and activations on a GPU.
    Cuda(Box<GpuModel<half::bf16>>),
}

impl Engine<'static> {
    /// A copy of `model` on `device` where it runs from one (a GPU: bf16 weights), or None
    /// where the model serves as it is (the CPU): for owners of a model that keep it on
    /// their device across calls.
    pub fn copy_for(model: &Model, device: &Device) -> Result<Option<Engine<'static>>> {
        Ok(match device {
            Device::Cpu(_) => None,
            Device::Cuda(gpu) => Some(Engine::Cuda(Box::new(GpuModel::upload(
                gpu.clone(),
                model,
            )?))),
        })
    }
}

impl<'m> Engine<'m> {
    /// `model` on `device` (a GPU gets a bf16 copy of its weights).
    pub fn new(model: &'m Model, device: &Device) -> Result<Engine<'m>> {
        let cpu = match device {
            Device::Cpu(cpu) => cpu.clone(),
            Device::Cuda(_) => Cpu::F32,
        };
        Ok(Engine::copy_for(model, device)?.unwrap_or(Engine::Cpu(model, cpu)))
    }

    /// Summed completion log-prob of every sequence, `budget` tokens at a time;
    /// `on_done(sequences)` reports progress.
    pub fn score(
        &self,
        seqs: &[ScoredSequence],
        budget: usize,
        on_done: &dyn Fn(usize),
    ) -> Result<Vec<f64>> {
        match self {
            Engine::Cpu(model, cpu) => score_on(&model.net_on(cpu), seqs, budget, on_done),
            Engine::Cuda(gm) => score_on(&gm.net(), seqs, budget, on_done),
        }
    }

    /// Summed completion log-prob of every sequence of every example, in order
    /// (example-major): what a reference model gives a DPO pair.
    pub fn score_examples(
        &self,
        examples: &[Example],
        budget: usize,
        on_done: &dyn Fn(usize),
    ) -> Result<Vec<f64>> {
        let scored: Vec<ScoredSequence> = examples
            .iter()
            .flat_map(|e| {
                e.seqs.iter().map(|tokens| ScoredSequence {
                    tokens,
                    prompt_len: e.prompt_len,
                })
            })
            .collect();
        self.score(&scored, budget, on_done)
    }

    /// `opts.samples` completions of each prompt (see `generate::generate`).
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        opts: &GenerateOptions,
        is_stopped: &(dyn Fn(&[u32]) -> bool + Sync),
        on_tokens: &dyn Fn(usize),
    ) -> Result<(Vec<Vec<Completion>>, GenerateStats)> {
        match self {
            Engine::Cpu(model, cpu) => {
                generate::generate_on(model, cpu.clone(), prompts, opts, is_stopped, on_tokens)
            }
            Engine::Cuda(gm) => {
                generate::gpu::generate_gpu(gm, prompts, opts, is_stopped, on_tokens)
            }
        }
    }

    /// A sequence classifier's logits for fresh whole sequences (see `Net::classify`),
    /// `budget` tokens per pass: `on_pass(indices, logits)` gets each pass's sequences
    /// (indices into `seqs`) and their logits, (S, L).
    pub fn classify(&self, seqs: &[&[u32]], budget: usize, on_pass: &mut OnPass) -> Result<()> {
        match self {
            Engine::Cpu(model, cpu) => classify_on(&model.net_on(cpu), seqs, budget, on_pass),
            Engine::Cuda(gm) => classify_on(&gm.net(), seqs, budget, on_pass),
        }
    }
}

/// `Engine::classify` through the graph `net`, with one working memory for every pass.
fn classify_on<O: Ops>(
    net: &Net<O>,
    seqs: &[&[u32]],
    budget: usize,
    on_pass: &mut OnPass,
) -> Result<()> {
    let order: Vec<usize> = (0..seqs.len()).collect();
    let rows = working_rows(seqs.iter().map(|s| s.len()), budget);
    let mut acts = Activations::new(net, rows, false)?;
    for micro in micro_batches(&order, |i| seqs[i].len(), budget) {
        let batch: Vec<&[u32]> = micro.iter().map(|&i| seqs[i]).collect();
        let logits = net.classify(&batch, &mut acts)?;
        on_pass(&micro, &logits);
    }
    Ok(())
}

/// Trains `model` on `examples` on `device` (CUDA: bf16 weights and activations, f32
/// master weights and AdamW state); `model` holds the trained weights at the end. With
/// `adapter`, trains the adapter alone over `model`'s frozen weights (held in the storage
/// type: bf16 on a GPU), and `adapter` holds the trained adapter at the end.
pub fn train(
    model: &mut Model,
    adapter: Option<&mut Adapter>,
    examples: &[Example],
    cfg: &TrainConfig,
    sink: &mut dyn RunSink,
    device: &Device,
) -> Result<TrainSummary> {
    if examples.is_empty() {
        bail!("no examples to train on");
    }
    let rows = micro_batch_rows(examples, cfg);
    match device {
        Device::Cpu(cpu) => train_on(cpu.clone(), model, adapter, examples, cfg, sink, rows),
        Device::Cuda(gpu) => {
            let ops = CudaOps::<half::bf16>::new(gpu.clone());
            train_on(ops, model, adapter, examples, cfg, sink, rows)
        }
    }
}
