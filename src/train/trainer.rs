//! The training loop shared by DPO and SFT: seeded shuffling per epoch, optimizer batches
//! split into micro-batches by a token budget with gradients accumulated across them, one
//! AdamW update per batch, a metrics line per update, checkpoints, and a stop on a
//! non-finite loss or gradient that keeps the last good weights.

use super::batching::micro_batches;
use super::loss::{dpo_loss, sft_loss, DpoConfig, DpoTotals, PairLogps};
use super::optimizer::{Optimizer, OptimizerConfig};
use crate::backend::cpu::logprobs::default_chunk_rows;
use crate::backend::cpu::sampling::Rng;
use crate::model::training::{Activations, ScoredSequence, TrainBatch};
use crate::model::Model;
use anyhow::{bail, Result};
use serde_json::{json, Map, Value};
use std::time::Instant;

#[derive(Clone, Copy, Debug)]
pub enum Objective {
    /// Each example is (chosen, rejected) with the reference's log-probs.
    Dpo(DpoConfig),
    /// Each example is one completion; the loss is its token-mean NLL.
    Sft,
}

/// One training example: DPO's chosen and rejected sequences, or SFT's one sequence, each
/// the prompt followed by the completion.
#[derive(Clone, Debug)]
pub struct Example {
    pub seqs: Vec<Vec<u32>>,
    pub prompt_len: usize,
    /// The reference model's summed completion log-prob of each sequence (DPO only).
    pub reference: Vec<f64>,
}

impl Example {
    fn tokens(&self) -> usize {
        self.seqs.iter().map(Vec::len).sum()
    }

    fn completion_tokens(&self, i: usize) -> usize {
        self.seqs[i].len() - self.prompt_len
    }
}

#[derive(Clone, Copy, Debug)]
pub struct TrainConfig {
    pub objective: Objective,
    pub optimizer: OptimizerConfig,
    pub epochs: usize,
    /// Examples per optimizer update.
    pub batch_size: usize,
    /// Most tokens in one forward/backward pass.
    pub micro_batch_tokens: usize,
    pub seed: u64,
}

/// Where a run's outputs go; the trainer calls it, the caller decides the files.
pub trait RunSink {
    /// One metrics line per update.
    fn metrics(&mut self, line: &Map<String, Value>) -> Result<()>;
    /// Called after every update; saves a checkpoint when it wants one.
    fn after_step(&mut self, model: &Model, step: usize, last: bool) -> Result<()>;
    /// Training is stopping on a bad step; `model` still holds the weights after
    /// `good_steps` updates. Returns what to tell the user about them.
    fn keep_last_good(&mut self, model: &Model, good_steps: usize) -> Result<String>;
    /// Progress after an update: (step, total steps, loss, tokens/s).
    fn progress(&mut self, step: usize, total: usize, loss: f64, tokens_per_s: f64);
}

pub struct TrainSummary {
    pub steps: usize,
    pub tokens: usize,
    pub secs: f64,
    pub last_metrics: Map<String, Value>,
}

/// The number of optimizer updates a run makes.
pub fn total_steps(examples: usize, cfg: &TrainConfig) -> usize {
    cfg.epochs * examples.div_ceil(cfg.batch_size)
}

/// The state that lives across updates: AdamW moments, the gradient buffer and the saved
/// activations, all reused from step to step.
pub struct Trainer {
    cfg: TrainConfig,
    optimizer: Optimizer,
    grads: Vec<f32>,
    acts: Activations,
}

/// What one update saw: its loss metrics, gradient norm and learning rate, and the tokens
/// it processed.
pub struct StepOutcome {
    pub metrics: Map<String, Value>,
    pub grad_norm: f64,
    pub learning_rate: f64,
    pub tokens: usize,
}

impl Trainer {
    pub fn new(model: &Model, cfg: &TrainConfig) -> Trainer {
        assert!(cfg.batch_size > 0 && cfg.micro_batch_tokens > 0);
        Trainer {
            cfg: *cfg,
            optimizer: Optimizer::new(cfg.optimizer, &model.config, &model.layout),
            grads: vec![0.0f32; model.layout.len],
            acts: Activations::default(),
        }
    }

    /// One update on the examples `batch`, the `step`-th (0-based) of `total`. On a
    /// non-finite loss or gradient nothing is applied and the error says which.
    pub fn step(
        &mut self,
        model: &mut Model,
        examples: &[Example],
        batch: &[usize],
        step: usize,
        total: usize,
    ) -> Result<StepOutcome, NonFinite> {
        let lr = self.cfg.optimizer.lr_at(step, total);
        self.grads.fill(0.0);
        let (metrics, tokens) = accumulate_gradients(
            model,
            examples,
            batch,
            &self.cfg,
            &mut self.acts,
            &mut self.grads,
        );
        let loss = metrics["loss"].as_f64().unwrap_or(f64::NAN);
        if !loss.is_finite() {
            return Err(NonFinite {
                what: "loss",
                value: loss,
            });
        }
        let grad_norm = Optimizer::grad_norm(&self.grads);
        if !grad_norm.is_finite() {
            return Err(NonFinite {
                what: "gradient norm",
                value: grad_norm,
            });
        }
        self.optimizer
            .step(&mut model.params, &self.grads, grad_norm, lr);
        Ok(StepOutcome {
            metrics,
            grad_norm,
            learning_rate: lr,
            tokens,
        })
    }
}

/// A loss or gradient that is NaN or infinite.
#[derive(Debug)]
pub struct NonFinite {
    pub what: &'static str,
    pub value: f64,
}

pub fn train(
    model: &mut Model,
    examples: &[Example],
    cfg: &TrainConfig,
    sink: &mut dyn RunSink,
) -> Result<TrainSummary> {
    assert!(!examples.is_empty());
    let total = total_steps(examples.len(), cfg);
    let steps_per_epoch = examples.len().div_ceil(cfg.batch_size);
    let mut trainer = Trainer::new(model, cfg);
    let started = Instant::now();
    let mut step = 0;
    let mut tokens_total = 0;
    let mut last_metrics = Map::new();
    for epoch in 0..cfg.epochs {
        let order = shuffled(examples.len(), cfg.seed, epoch as u64);
        for batch in order.chunks(cfg.batch_size) {
            let step_started = Instant::now();
            let mut outcome = match trainer.step(model, examples, batch, step, total) {
                Ok(outcome) => outcome,
                Err(bad) => {
                    let kept = sink.keep_last_good(model, step)?;
                    bail!(
                        "training stopped at step {}: the {} is {} (the learning rate may be too high, or the data or model hold extreme values); no update was applied; {kept}",
                        step + 1,
                        bad.what,
                        bad.value
                    );
                }
            };
            step += 1;
            tokens_total += outcome.tokens;
            let secs = step_started.elapsed().as_secs_f64();
            let tokens_per_s = outcome.tokens as f64 / secs.max(1e-9);
            let mut line = Map::new();
            line.insert("step".into(), json!(step));
            line.insert("epoch".into(), json!(step as f64 / steps_per_epoch as f64));
            line.append(&mut outcome.metrics);
            line.insert("grad_norm".into(), json!(outcome.grad_norm));
            line.insert("learning_rate".into(), json!(outcome.learning_rate));
            line.insert("tokens".into(), json!(outcome.tokens));
            line.insert("tokens_per_s".into(), json!(tokens_per_s));
            sink.metrics(&line)?;
            sink.progress(
                step,
                total,
                line["loss"].as_f64().unwrap_or(f64::NAN),
                tokens_per_s,
            );
            sink.after_step(model, step, step == total)?;
            last_metrics = line;
        }
    }
    Ok(TrainSummary {
        steps: step,
        tokens: tokens_total,
        secs: started.elapsed().as_secs_f64(),
        last_metrics,
    })
}

/// Forward and backward of one optimizer batch, micro-batch by micro-batch, adding into
/// `grads`. Returns the batch's loss metrics and the tokens processed.
fn accumulate_gradients(
    model: &Model,
    examples: &[Example],
    batch: &[usize],
    cfg: &TrainConfig,
    acts: &mut Activations,
    grads: &mut [f32],
) -> (Map<String, Value>, usize) {
    let mut dpo_totals = DpoTotals::default();
    let mut sft_loss_total = 0.0;
    // The loss is a mean over the whole batch: its sizes are fixed before any micro-batch.
    let first_completion_tokens: usize = batch
        .iter()
        .map(|&i| examples[i].completion_tokens(0))
        .sum();
    let all_completion_tokens: usize = batch
        .iter()
        .map(|&i| {
            (0..examples[i].seqs.len())
                .map(|s| examples[i].completion_tokens(s))
                .sum::<usize>()
        })
        .sum();
    let mut tokens = 0;
    for micro in micro_batches(batch, |i| examples[i].tokens(), cfg.micro_batch_tokens) {
        let seqs: Vec<ScoredSequence> = micro
            .iter()
            .flat_map(|&i| {
                let ex = &examples[i];
                ex.seqs.iter().map(|s| ScoredSequence {
                    tokens: s,
                    prompt_len: ex.prompt_len,
                })
            })
            .collect();
        let tb = TrainBatch::new(&seqs);
        tokens += tb.len();
        // One loss group per example: its gradient depends on its own log-probs only.
        let groups: Vec<usize> = micro.iter().map(|&i| examples[i].seqs.len()).collect();
        let mut loss = |g: usize, logps: &[f64]| -> Vec<f64> {
            let ex = &examples[micro[g]];
            match cfg.objective {
                Objective::Dpo(dpo) => {
                    let pair = PairLogps {
                        chosen: logps[0],
                        rejected: logps[1],
                        ref_chosen: ex.reference[0],
                        ref_rejected: ex.reference[1],
                        n_chosen: ex.completion_tokens(0),
                        n_rejected: ex.completion_tokens(1),
                    };
                    let d = dpo_loss(
                        &[pair],
                        &dpo,
                        batch.len(),
                        first_completion_tokens,
                        &mut dpo_totals,
                    );
                    vec![d[0].0, d[0].1]
                }
                Objective::Sft => sft_loss(logps, all_completion_tokens, &mut sft_loss_total),
            }
        };
        let chunk = default_chunk_rows(model.config.vocab_size);
        model.sequence_logprobs_with_grad(&tb, acts, &groups, &mut loss, grads, chunk);
    }
    let metrics = match cfg.objective {
        Objective::Dpo(dpo) => dpo_totals.metrics(&dpo),
        Objective::Sft => {
            let mut m = Map::new();
            m.insert("loss".into(), json!(sft_loss_total));
            m
        }
    };
    (metrics, tokens)
}

/// 0..n in the seeded order of one epoch (Fisher-Yates).
fn shuffled(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = Rng::for_stream(seed, epoch, 0x5348_5546);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = ((rng.uniform() as f64) * (i + 1) as f64) as usize;
        order.swap(i, j.min(i));
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffles_are_permutations_that_depend_on_seed_and_epoch() {
        let a = shuffled(50, 1, 0);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(a, shuffled(50, 1, 0));
        assert_ne!(a, shuffled(50, 2, 0));
        assert_ne!(a, shuffled(50, 1, 1));
    }
}
