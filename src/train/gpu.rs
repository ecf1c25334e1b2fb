//! The trainer on a CUDA device, twin of `trainer::Trainer`: f32 master weights, gradients
//! and AdamW state on the device, the forward reading a copy of the weights in the storage
//! type T (bf16: the AdamW kernel writes it as it updates; f32: a device copy). The host's
//! `Model` is brought up to date only when a checkpoint needs it.
//!
//! Device memory per parameter: 4 bytes of master weight, 4 of the previous weights (to
//! roll back an update that gave a non-finite loss), 8 of AdamW moments, 4 of gradient and
//! 2 of bf16 weights: 22 bytes, 26 GiB for a 1.2B model, before activations.

use super::optimizer::Optimizer;
use super::trainer::{accumulate_gradients, Example, NonFinite, StepOutcome, TrainConfig};
use crate::backend::cuda::{Gpu, LogitsScratch};
use crate::backend::settings::AdamW;
use crate::backend::storage::Storage;
use crate::model::cuda::GpuModel;
use crate::model::Model;
use anyhow::{Context, Result};
use cudarc::driver::CudaSlice;
use std::any::Any;
use std::ops::Range;
use std::sync::Arc;

pub struct GpuTrainer<T: Storage> {
    cfg: TrainConfig,
    pub model: GpuModel<T>,
    master: CudaSlice<f32>,   // (P)
    previous: CudaSlice<f32>, // (P) the weights before the last update
    m: CudaSlice<f32>,        // (P)
    v: CudaSlice<f32>,        // (P)
    grads: CudaSlice<f32>,    // (P)
    scratch: LogitsScratch,
    /// Runs of consecutive tensors that share a weight-decay rule: (range, decays).
    runs: Vec<(Range<usize>, bool)>,
    steps: u32,
    updated: bool,
}

const STATE: &str = "for the weights, gradients and AdamW state";

impl<T: Storage> GpuTrainer<T> {
    pub fn new(gpu: Arc<Gpu>, model: &Model, cfg: &TrainConfig) -> Result<Self> {
        let p = model.layout.len;
        let mut master = gpu.alloc::<f32>(p, STATE)?;
        gpu.stream.memcpy_htod(&model.params, &mut master)?;
        let gmodel = GpuModel::<T>::upload(gpu.clone(), model)?;
        let mut runs: Vec<(Range<usize>, bool)> = vec![];
        for t in model.layout.tensors(&model.config) {
            let decays = t.shape.len() >= 2;
            match runs.last_mut() {
                Some((r, d)) if *d == decays && r.end == t.range.start => r.end = t.range.end,
                _ => runs.push((t.range, decays)),
            }
        }
        Ok(GpuTrainer {
            cfg: *cfg,
            previous: gpu.alloc(p, STATE)?,
            m: gpu.alloc(p, STATE)?,
            v: gpu.alloc(p, STATE)?,
            grads: gpu.alloc(p, STATE)?,
            scratch: LogitsScratch::new(
                &gpu,
                crate::backend::cuda::logprobs::default_chunk_rows(model.config.vocab_size),
                model.config.vocab_size,
            )?,
            master,
            model: gmodel,
            runs,
            steps: 0,
            updated: false,
        })
    }

    /// One update, as `Trainer::step`; the outer error is a device failure.
    pub fn step(
        &mut self,
        examples: &[Example],
        batch: &[usize],
        step: usize,
        total: usize,
    ) -> Result<std::result::Result<StepOutcome, NonFinite>> {
        let gpu = self.model.gpu.clone();
        let lr = self.cfg.optimizer.lr_at(step, total);
        gpu.stream.memset_zeros(&mut self.grads)?;
        let (metrics, tokens) = {
            let (model, grads, scratch) = (&self.model, &mut self.grads, &mut self.scratch);
            accumulate_gradients(examples, batch, &self.cfg, &mut |tb, groups, loss| {
                model
                    .sequence_logprobs_with_grad(tb, groups, loss, grads, scratch)
                    .map(|_| ())
            })?
        };
        let loss = metrics["loss"].as_f64().unwrap_or(f64::NAN);
        if !loss.is_finite() {
            return Ok(Err(NonFinite {
                what: "loss",
                value: loss,
            }));
        }
        let grad_norm = gpu.sum_squares(&self.grads)?.sqrt();
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

    /// AdamW over every parameter: one launch when no tensor decays differently from the
    /// others (weight decay 0), else one per run of tensors that share the rule.
    fn apply(&mut self, lr: f64, grad_norm: f64) -> Result<()> {
        let gpu = self.model.gpu.clone();
        self.steps += 1;
        let o = &self.cfg.optimizer;
        let scale = Optimizer::clip_scale(o.max_grad_norm, grad_norm);
        let h = |decays: bool| AdamW {
            lr: lr as f32,
            beta1: o.beta1 as f32,
            beta2: o.beta2 as f32,
            eps: o.eps as f32,
            weight_decay: if decays { o.weight_decay as f32 } else { 0.0 },
            step: self.steps,
            grad_scale: scale as f32,
        };
        let all = 0..self.master.len();
        let runs = if o.weight_decay == 0.0 {
            vec![(all, false)]
        } else {
            self.runs.clone()
        };
        let bf16 =
            (&mut self.model.weights as &mut dyn Any).downcast_mut::<CudaSlice<half::bf16>>();
        match bf16 {
            Some(shadow) => {
                for (r, decays) in runs {
                    gpu.adamw_update(
                        &mut self.master.slice_mut(r.clone()),
                        &mut self.previous.slice_mut(r.clone()),
                        &mut self.m.slice_mut(r.clone()),
                        &mut self.v.slice_mut(r.clone()),
                        &self.grads.slice(r.clone()),
                        Some(&mut shadow.slice_mut(r)),
                        h(decays),
                    )?;
                }
            }
            None => {
                for (r, decays) in runs {
                    gpu.adamw_update(
                        &mut self.master.slice_mut(r.clone()),
                        &mut self.previous.slice_mut(r.clone()),
                        &mut self.m.slice_mut(r.clone()),
                        &mut self.v.slice_mut(r.clone()),
                        &self.grads.slice(r),
                        None,
                        h(decays),
                    )?;
                }
                self.refresh_weights()?;
            }
        }
        Ok(())
    }

    /// The forward's copy of the weights from the master (f32 storage; bf16 gets it from
    /// the AdamW kernel, or here after a roll-back).
    fn refresh_weights(&mut self) -> Result<()> {
        let gpu = self.model.gpu.clone();
        let weights = &mut self.model.weights as &mut dyn Any;
        if let Some(w) = weights.downcast_mut::<CudaSlice<f32>>() {
            gpu.stream.memcpy_dtod(&self.master, w)?;
        } else {
            let host = gpu.stream.clone_dtoh(&self.master)?;
            let conv: Vec<T> = host.into_iter().map(T::from_f32).collect();
            gpu.stream.memcpy_htod(&conv, &mut self.model.weights)?;
        }
        Ok(())
    }

    /// Restores the weights from before the last update (a no-op when there was none).
    pub fn roll_back(&mut self) -> Result<()> {
        if self.updated {
            std::mem::swap(&mut self.master, &mut self.previous);
            self.refresh_weights()?;
            self.updated = false;
        }
        Ok(())
    }

    /// Copies the master weights into the host model.
    pub fn download(&self, model: &mut Model) -> Result<()> {
        self.model
            .gpu
            .stream
            .memcpy_dtoh(&self.master, &mut model.params)
            .context("copying the trained weights from the GPU")
    }
}
