//! The training loop shared by DPO and SFT: seeded shuffling per epoch, optimizer batches
//! split into micro-batches by a token budget with gradients accumulated across them, one
//! AdamW update per batch, a metrics line per update, checkpoints, and a stop on a
//! non-finite loss or gradient that keeps the last good weights.

use super::batching::micro_batches;
use super::loss::{dpo_loss, sft_loss, DpoConfig, DpoTotals, PairLogps};
use super::optimizer::{clip_scale, decay_runs, OptimizerConfig};
use crate::backend::ops::Ops;
use crate::backend::rng::splitmix64;
use crate::backend::rng::Rng;
use crate::backend::settings::AdamW;
use crate::model::graph::logprobs::GroupLoss;
use crate::model::graph::{Activations, LoraDropout, LoraNet, Net, ScoredSequence, TrainBatch};
use crate::model::lora::{Adapter, LoraLayout};
use crate::model::{Model, ModelConfig, ParamLayout};
use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use std::ops::Range;
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
    pub(crate) fn tokens(&self) -> usize {
        self.seqs.iter().map(Vec::len).sum()
    }

    pub(crate) fn completion_tokens(&self, i: usize) -> usize {
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

/// What a run trains, as the sink sees it after an update: the whole model, or a LoRA
/// adapter over the model's frozen weights.
#[derive(Clone, Copy)]
pub enum Trained<'a> {
    Model(&'a Model),
    Adapter(&'a Adapter),
}

/// Where a run's outputs go; the trainer calls it, the caller decides the files.
pub trait RunSink {
    /// One metrics line per update.
    fn metrics(&mut self, line: &Map<String, Value>) -> Result<()>;
    /// Whether `after_step` will read the trained weights after update `step` (a device
    /// trainer copies them to the host only then).
    fn wants_model(&self, _step: usize, _last: bool) -> bool {
        true
    }
    /// Called after every update; saves a checkpoint when it wants one.
    fn after_step(&mut self, trained: Trained, step: usize, last: bool) -> Result<()>;
    /// Training is stopping on a non-finite loss or gradient; `trained` has been rolled
    /// back to the weights after `good_steps` updates, the last that gave a finite loss and
    /// gradient (0: the starting weights). Returns what to tell the user about them.
    fn keep_last_good(&mut self, trained: Trained, good_steps: usize) -> Result<String>;
    /// Progress after an update: (step, loss, tokens/s).
    fn progress(&mut self, step: usize, loss: f64, tokens_per_s: f64);
}

#[derive(Debug)]
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

/// The trainer of one device, written once over the op set: the f32 master weights of
/// what it trains (and the storage-type copy the forward reads, where the device keeps
/// one), AdamW moments, the gradient buffer, the weights before the last update (to roll
/// back to) and the activations, all allocated once and reused from step to step.
///
/// What it trains is the whole model (P = its parameters), or a LoRA adapter (P = the
/// adapter's): then the model's weights are frozen, held once in the storage type, with no
/// master, moments, gradient or roll-back copy, and the backward forms no gradient of
/// theirs.
pub struct Trainer<O: Ops> {
    cfg: TrainConfig,
    ops: O,
    config: ModelConfig,
    layout: ParamLayout,
    inv_freq: Vec<f64>,
    /// LoRA: the model's frozen weights and the adapter's shape.
    frozen: Option<Frozen<O>>,
    master: O::Buf<f32>,           // (P)
    weights: Option<O::Buf<O::S>>, // (P) the forward's copy (none on the CPU)
    previous: O::Buf<f32>,         // (P) valid once an update has been applied
    m: O::Buf<f32>,                // (P)
    v: O::Buf<f32>,                // (P)
    grads: O::Buf<f32>,            // (P)
    acts: Activations<O>,
    /// Runs of consecutive tensors that share a weight-decay rule: matrices decay; norm
    /// weights and biases do not (transformers' Trainer rule).
    runs: Vec<(Range<usize>, bool)>,
    steps: u32,
    updated: bool,
}

/// What one update saw: its loss metrics, gradient norm and learning rate, and the tokens
/// it processed.
pub struct StepOutcome {
    pub metrics: Map<String, Value>,
    pub grad_norm: f64,
    pub learning_rate: f64,
    pub tokens: usize,
}

/// A LoRA run's frozen model weights and its adapter's shape.
struct Frozen<O: Ops> {
    weights: O::Buf<O::S>, // (model's P)
    layout: LoraLayout,
    r: usize,
    scale: f32,
    /// LoRA dropout's probability (0: none).
    dropout: f32,
}

const STATE: &str = "for the weights, gradients and AdamW state";

impl<O: Ops> Trainer<O> {
    /// Takes the weights it trains: `model`'s, or with `adapter`, the adapter's, with
    /// `model`'s frozen (the CPU moves them: the host's vectors are empty until
    /// `lend_weights` and `release`), and makes room for micro-batches of up to `rows`
    /// tokens.
    pub fn new(
        ops: O,
        model: &mut Model,
        adapter: Option<&mut Adapter>,
        cfg: &TrainConfig,
        rows: usize,
    ) -> Result<Self> {
        if cfg.batch_size == 0 || cfg.micro_batch_tokens == 0 {
            bail!("the batch size and the tokens per micro-batch must be positive");
        }
        let (frozen, master, runs) = match adapter {
            None => {
                let runs = decay_runs(&model.config, &model.layout);
                (None, ops.master_from_host(&mut model.params)?, runs)
            }
            Some(adapter) => {
                let frozen = Frozen {
                    weights: ops.frozen_from_host(&mut model.params)?,
                    layout: adapter.layout.clone(),
                    r: adapter.config.r,
                    scale: adapter.config.scale() as f32,
                    dropout: adapter.config.dropout as f32,
                };
                // Every adapter tensor is a matrix: all of them decay.
                let runs = vec![(0..adapter.layout.len, true)];
                let master = ops.master_from_host(&mut adapter.params)?;
                (Some(frozen), master, runs)
            }
        };
        let p = O::len(&master);
        let mut weights = None;
        ops.refresh_weights(&mut weights, &master)?;
        let acts = {
            let trained = O::forward_weights(&master, &weights)?;
            let (config, layout) = (&model.config, &model.layout);
            let net = net_of(
                &ops,
                config,
                layout,
                &model.inv_freq,
                frozen.as_ref(),
                trained,
            );
            Activations::new(&net, rows, true)?
        };
        Ok(Trainer {
            cfg: *cfg,
            config: model.config.clone(),
            layout: model.layout.clone(),
            inv_freq: model.inv_freq.clone(),
            frozen,
            previous: ops.alloc(p, STATE)?,
            m: ops.alloc(p, STATE)?,
            v: ops.alloc(p, STATE)?,
            grads: ops.alloc(p, STATE)?,
            ops,
            master,
            weights,
            acts,
            runs,
            steps: 0,
            updated: false,
        })
    }

    /// Puts the weights it trains in `host`, the model's or the adapter's parameters
    /// (see `Ops::lend_to_host`).
    pub fn lend_weights(&mut self, host: &mut Vec<f32>) -> Result<()> {
        self.ops.lend_to_host(&mut self.master, host)
    }

    /// Takes them back before the next update.
    pub fn take_back_weights(&mut self, host: &mut Vec<f32>) -> Result<()> {
        self.ops.return_from_host(&mut self.master, host)
    }

    /// Ends a LoRA run: the frozen model weights go back to `model` (a no-op otherwise).
    pub fn release(&mut self, model: &mut Model) -> Result<()> {
        match self.frozen.take() {
            Some(f) => self.ops.frozen_to_host(f.weights, &mut model.params),
            None => Ok(()),
        }
    }

    /// Restores the weights from before the last update (a no-op when there was none).
    pub fn roll_back(&mut self) -> Result<()> {
        if self.updated {
            std::mem::swap(&mut self.master, &mut self.previous);
            self.ops.refresh_weights(&mut self.weights, &self.master)?;
            self.updated = false;
        }
        Ok(())
    }

    /// One update on the examples `batch`, the `step`-th (0-based) of `total`. On a
    /// non-finite loss or gradient nothing is applied and the inner error says which; the
    /// outer one is a failure of the device or of the data.
    pub fn step(
        &mut self,
        examples: &[Example],
        batch: &[usize],
        step: usize,
        total: usize,
    ) -> Result<Result<StepOutcome, NonFinite>> {
        let lr = self.cfg.optimizer.lr_at(step, total);
        let ops = &self.ops;
        ops.zero(&mut self.grads)?;
        let trained = O::forward_weights(&self.master, &self.weights)?;
        let (config, layout, inv_freq) = (&self.config, &self.layout, &self.inv_freq);
        let mut net = net_of(ops, config, layout, inv_freq, self.frozen.as_ref(), trained);
        let lora = self.frozen.is_some();
        let (acts, grads) = (&mut self.acts, &mut self.grads);
        let step_seed = splitmix64(self.cfg.seed ^ splitmix64(step as u64 + 1));
        let mut micro = 0u64;
        let (metrics, tokens) =
            accumulate_gradients(examples, batch, &self.cfg, &mut |tb, groups, loss| {
                // LoRA dropout draws new masks for every micro-batch of every update.
                if let Some(d) = net.lora.as_mut().and_then(|l| l.dropout.as_mut()) {
                    d.seed = splitmix64(step_seed ^ micro.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                }
                micro += 1;
                // LoRA: the gradient buffer is the adapter's, and the model's is none.
                let (model_grads, lora_grads) = match lora {
                    false => (Some(&mut *grads), None),
                    true => (None, Some(&mut *grads)),
                };
                net.sequence_logprobs_with_grads(tb, acts, groups, loss, model_grads, lora_grads)
                    .map(|_| ())
            })?;
        let loss = metrics["loss"].as_f64().unwrap_or(f64::NAN);
        if !loss.is_finite() {
            return Ok(Err(NonFinite {
                what: "loss",
                value: loss,
            }));
        }
        let grad_norm = ops.sum_squares(&self.grads)?.sqrt();
        if !grad_norm.is_finite() {
            return Ok(Err(NonFinite {
                what: "gradient norm",
                value: grad_norm,
            }));
        }
        self.apply(lr, grad_norm)?;
        self.updated = true;
        Ok(Ok(StepOutcome {
            metrics,
            grad_norm,
            learning_rate: lr,
            tokens,
        }))
    }

    /// AdamW over every parameter: one pass when no tensor decays differently from the
    /// others (weight decay 0), else one per run of tensors that share the rule.
    fn apply(&mut self, lr: f64, grad_norm: f64) -> Result<()> {
        self.steps += 1;
        let o = &self.cfg.optimizer;
        let scale = clip_scale(o.max_grad_norm, grad_norm);
        let h = |decays: bool| AdamW {
            lr: lr as f32,
            beta1: o.beta1 as f32,
            beta2: o.beta2 as f32,
            eps: o.eps as f32,
            weight_decay: if decays { o.weight_decay as f32 } else { 0.0 },
            step: self.steps,
            grad_scale: scale as f32,
        };
        let runs = if o.weight_decay == 0.0 {
            vec![(0..O::len(&self.master), false)]
        } else {
            self.runs.clone()
        };
        for (r, decays) in runs {
            self.ops.adamw_update(
                &mut self.master,
                &mut self.previous,
                &mut self.m,
                &mut self.v,
                &self.grads,
                self.weights.as_mut(),
                r,
                h(decays),
            )?;
        }
        Ok(())
    }
}

impl<O: Ops> Frozen<O> {
    /// The adapter in the graph, its weights `trained` (with dropout where it has some; the
    /// trainer draws each pass's seed).
    fn lora_net<'a>(&'a self, trained: &'a O::Buf<O::S>) -> LoraNet<'a, O> {
        LoraNet {
            layout: &self.layout,
            weights: trained,
            r: self.r,
            scale: self.scale,
            dropout: (self.dropout > 0.0).then_some(LoraDropout {
                p: self.dropout,
                seed: 0,
            }),
        }
    }
}

/// The graph over a model of `config`, reading `trained` as the model's weights, or with
/// `frozen`, the frozen weights with `trained` as the adapter's.
fn net_of<'a, O: Ops>(
    ops: &'a O,
    config: &'a ModelConfig,
    layout: &'a ParamLayout,
    inv_freq: &'a [f64],
    frozen: Option<&'a Frozen<O>>,
    trained: &'a O::Buf<O::S>,
) -> Net<'a, O> {
    Net {
        ops,
        config,
        layout,
        weights: frozen.map_or(trained, |f| &f.weights),
        inv_freq,
        lora: frozen.map(|f| f.lora_net(trained)),
    }
}

/// A loss or gradient that is NaN or infinite.
#[derive(Debug)]
pub struct NonFinite {
    pub what: &'static str,
    pub value: f64,
}

/// The most tokens one micro-batch of a run can hold: the budget, or a single example
/// larger than it, and never more than the largest optimizer batch holds in all.
pub fn micro_batch_rows(examples: &[Example], cfg: &TrainConfig) -> usize {
    let mut sizes: Vec<usize> = examples.iter().map(Example::tokens).collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    let largest = sizes.first().copied().unwrap_or(0);
    let batch: usize = sizes.iter().take(cfg.batch_size).sum();
    cfg.micro_batch_tokens.min(batch).max(largest)
}

/// Trains `model`, or with `adapter`, the adapter over `model`'s frozen weights, with
/// `ops` (see `engine::train`).
pub(crate) fn train_on<O: Ops>(
    ops: O,
    model: &mut Model,
    mut adapter: Option<&mut Adapter>,
    examples: &[Example],
    cfg: &TrainConfig,
    sink: &mut dyn RunSink,
    rows: usize,
) -> Result<TrainSummary> {
    let mut trainer = Trainer::new(ops, model, adapter.as_deref_mut(), cfg, rows)?;
    let mut result = train_with(&mut trainer, model, &mut adapter, examples, cfg, sink);
    // Whatever happened, the host holds the trainer's last weights: the CPU's are moved
    // back where they are not there yet, a device's copied (after a failure too; a second
    // failure then does not hide the first). A LoRA run's frozen weights go back too.
    let host = host_params(model, &mut adapter);
    if host.is_empty() || result.is_err() {
        let lent = trainer.lend_weights(host);
        if result.is_ok() {
            result = lent.and(result);
        }
    }
    let released = trainer.release(model);
    if result.is_ok() {
        result = released.and(result);
    }
    result
}

/// The weights a run trains, as its sink sees them.
fn trained<'a>(model: &'a Model, adapter: &'a Option<&mut Adapter>) -> Trained<'a> {
    match adapter {
        Some(a) => Trained::Adapter(a),
        None => Trained::Model(model),
    }
}

fn train_with<O: Ops>(
    trainer: &mut Trainer<O>,
    model: &mut Model,
    adapter: &mut Option<&mut Adapter>,
    examples: &[Example],
    cfg: &TrainConfig,
    sink: &mut dyn RunSink,
) -> Result<TrainSummary> {
    let total = total_steps(examples.len(), cfg);
    let steps_per_epoch = examples.len().div_ceil(cfg.batch_size);
    let started = Instant::now();
    let mut step = 0;
    let mut tokens_total = 0;
    let mut last_metrics = Map::new();
    for epoch in 0..cfg.epochs {
        let order = shuffled(examples.len(), cfg.seed, epoch as u64);
        for batch in order.chunks(cfg.batch_size) {
            let step_started = Instant::now();
            let mut outcome = match trainer.step(examples, batch, step, total)? {
                Ok(outcome) => outcome,
                Err(bad) => {
                    let stopped = format!(
                        "training stopped at step {}: the {} is {} (the learning rate may be too high, or the data or model hold extreme values)",
                        step + 1,
                        bad.what,
                        bad.value
                    );
                    if step == 0 {
                        bail!(
                            "{stopped}; the starting model itself gives it, so nothing was trained"
                        );
                    }
                    // These weights gave the bad value: the last good ones are those before
                    // the update that made them.
                    trainer.roll_back()?;
                    trainer.lend_weights(host_params(model, adapter))?;
                    let kept = sink
                        .keep_last_good(trained(model, adapter), step - 1)
                        .with_context(|| stopped.clone())?;
                    bail!("{stopped}; {kept}");
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
                line["loss"].as_f64().unwrap_or(f64::NAN),
                tokens_per_s,
            );
            let last = step == total;
            if last || sink.wants_model(step, last) {
                trainer.lend_weights(host_params(model, adapter))?;
                sink.after_step(trained(model, adapter), step, last)?;
                if !last {
                    trainer.take_back_weights(host_params(model, adapter))?;
                }
            }
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

/// The host's vector of the weights a run trains.
fn host_params<'a>(
    model: &'a mut Model,
    adapter: &'a mut Option<&mut Adapter>,
) -> &'a mut Vec<f32> {
    match adapter {
        Some(a) => &mut a.params,
        None => &mut model.params,
    }
}

/// A forward and backward over one micro-batch: (batch, loss groups, loss) as
/// `Model::sequence_logprobs_with_grad` takes them, gradients accumulated wherever the pass
/// keeps them.
pub(crate) type Pass<'a> = dyn FnMut(&TrainBatch, &[usize], &mut GroupLoss) -> Result<()> + 'a;

/// Forward and backward of one optimizer batch, micro-batch by micro-batch, each through
/// `pass`. Returns the batch's loss metrics and the tokens processed.
pub(crate) fn accumulate_gradients(
    examples: &[Example],
    batch: &[usize],
    cfg: &TrainConfig,
    pass: &mut Pass,
) -> Result<(Map<String, Value>, usize)> {
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
        let mut loss = |g: usize, logps: &[f64]| -> Result<Vec<f64>> {
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
                    Ok(vec![d[0].0, d[0].1])
                }
                Objective::Sft => Ok(sft_loss(logps, all_completion_tokens, &mut sft_loss_total)),
            }
        };
        pass(&tb, &groups, &mut loss)?;
    }
    let metrics = match cfg.objective {
        Objective::Dpo(dpo) => dpo_totals.metrics(&dpo),
        Objective::Sft => {
            let mut m = Map::new();
            m.insert("loss".into(), json!(sft_loss_total));
            m
        }
    };
    Ok((metrics, tokens))
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
pub(crate) mod tests {
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

    use crate::backend::device::Device;
    use crate::model::weights::StorageDtype;
    use crate::model::{ModelConfig, ParamLayout};
    use crate::train::loss::{DpoConfig, DpoLossType};
    use crate::train::optimizer::LrSchedule;

    /// A 2-layer Llama with GQA and random weights (0.3 sd), seeded.
    pub(crate) fn tiny_model() -> Model {
        let config = ModelConfig::from_json(&serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "hidden_size": 16, "intermediate_size": 24,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 40, "max_position_embeddings": 64,
        }))
        .unwrap();
        let mut rng = Rng::new(9);
        let params = (0..ParamLayout::new(&config).len)
            .map(|_| 0.3 * rng.normal())
            .collect();
        Model::from_params(config, params, StorageDtype::F32)
    }

    /// Six pairs of unequal lengths with made-up reference log-probs.
    fn pairs() -> Vec<Example> {
        (0..6u32)
            .map(|i| {
                let prompt: Vec<u32> = (0..2 + i % 3).map(|t| (t * 7 + i) % 40).collect();
                let tail = |n: u32, salt: u32| (0..n).map(move |t| (t * 3 + salt + i) % 40);
                Example {
                    seqs: vec![
                        prompt.iter().copied().chain(tail(3 + i % 2, 1)).collect(),
                        prompt.iter().copied().chain(tail(2 + i % 4, 5)).collect(),
                    ],
                    prompt_len: prompt.len(),
                    reference: vec![-20.0 - i as f64, -18.0 + i as f64],
                }
            })
            .collect()
    }

    fn config(batch_size: usize, micro_batch_tokens: usize) -> TrainConfig {
        TrainConfig {
            objective: Objective::Dpo(DpoConfig {
                loss_type: DpoLossType::Sigmoid,
                beta: 0.5,
                label_smoothing: 0.1,
                nll_alpha: 0.3,
            }),
            optimizer: OptimizerConfig {
                lr: 1e-2,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.1,
                max_grad_norm: 1.0,
                schedule: LrSchedule::Constant,
                warmup_steps: 0,
            },
            epochs: 1,
            batch_size,
            micro_batch_tokens,
            seed: 3,
        }
    }

    #[test]
    fn micro_batches_accumulate_the_gradient_of_the_whole_batch() {
        let model = tiny_model();
        let examples = pairs();
        let batch: Vec<usize> = (0..examples.len()).collect();
        let grads = |budget: usize| {
            let mut grads = vec![0.0f32; model.layout.len];
            let cfg = config(6, budget);
            let net = model.net();
            let mut acts = Activations::new(&net, 0, true).unwrap();
            let (metrics, _) = accumulate_gradients(&examples, &batch, &cfg, &mut |tb, g, loss| {
                net.sequence_logprobs_with_grad(tb, &mut acts, g, loss, &mut grads)
                    .map(|_| ())
            })
            .unwrap();
            (metrics["loss"].as_f64().unwrap(), grads)
        };
        let (whole_loss, whole) = grads(10_000);
        // 12 tokens: one pair per micro-batch, several of them alone over the budget.
        let (split_loss, split) = grads(12);
        assert!((whole_loss - split_loss).abs() < 1e-12 * whole_loss.abs().max(1.0));
        let max = whole.iter().fold(0.0f32, |m, g| m.max(g.abs()));
        assert!(max > 0.0);
        for (a, b) in whole.iter().zip(&split) {
            assert!((a - b).abs() <= 1e-5 * max, "{a} vs {b}");
        }
    }

    fn params(trained: Trained<'_>) -> &[f32] {
        match trained {
            Trained::Model(m) => &m.params,
            Trained::Adapter(a) => &a.params,
        }
    }

    /// Records the weights after each update and what the stop keeps.
    #[derive(Default)]
    struct Recorder {
        after: Vec<Vec<f32>>,
        kept: Option<(usize, Vec<f32>)>,
    }

    impl RunSink for Recorder {
        fn metrics(&mut self, _: &Map<String, Value>) -> Result<()> {
            Ok(())
        }
        fn after_step(&mut self, trained: Trained, _: usize, _: bool) -> Result<()> {
            self.after.push(params(trained).to_vec());
            Ok(())
        }
        fn keep_last_good(&mut self, trained: Trained, good_steps: usize) -> Result<String> {
            self.kept = Some((good_steps, params(trained).to_vec()));
            Ok("kept".into())
        }
        fn progress(&mut self, _: usize, _: f64, _: f64) {}
    }

    #[test]
    fn a_non_finite_loss_rolls_back_to_the_weights_before_the_update_that_gave_it() {
        let mut model = tiny_model();
        let mut examples = pairs();
        // One pair per update; the third update's pair has a NaN reference.
        let cfg = config(1, 10_000);
        let third = shuffled(examples.len(), cfg.seed, 0)[2];
        examples[third].reference[0] = f64::NAN;
        let mut rec = Recorder::default();
        let err = crate::engine::train(&mut model, None, &examples, &cfg, &mut rec, &Device::CPU)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("training stopped at step 3: the loss is NaN"),
            "{err}"
        );
        assert_eq!(rec.after.len(), 2, "two updates applied");
        let (good_steps, kept) = rec.kept.expect("the last good weights were offered");
        assert_eq!(good_steps, 1);
        assert!(
            kept == rec.after[0],
            "the weights after the first update are kept"
        );
        assert!(
            model.params == rec.after[0],
            "the model is rolled back to them"
        );
    }
}
