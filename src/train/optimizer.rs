//! The optimizer over a whole model: AdamW state in flat buffers with the model's layout,
//! Hugging Face Trainer's decay groups, gradient-norm clipping and the learning-rate
//! schedule.

use crate::backend::cpu::adamw::{adamw_update, sum_squares};
use crate::backend::settings::AdamW;
use crate::model::{ModelConfig, ParamLayout};
use std::ops::Range;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    Constant,
    Linear,
    Cosine,
}

#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct OptimizerConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    pub max_grad_norm: f64,
    pub schedule: LrSchedule,
    pub warmup_steps: usize,
}

impl OptimizerConfig {
    /// The learning rate of update `step` (0-based) of `total`, as transformers'
    /// get_scheduler computes it: linear warmup from 0, then constant, linear to 0 or a
    /// half cosine to 0.
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        let warmup = self.warmup_steps;
        if step < warmup {
            return self.lr * step as f64 / warmup.max(1) as f64;
        }
        let decay_steps = total.saturating_sub(warmup).max(1) as f64;
        let progress = (step - warmup) as f64 / decay_steps;
        self.lr
            * match self.schedule {
                LrSchedule::Constant => 1.0,
                LrSchedule::Linear => (1.0 - progress).max(0.0),
                LrSchedule::Cosine => {
                    (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
                }
            }
    }
}

pub struct Optimizer {
    cfg: OptimizerConfig,
    m: Vec<f32>, // (P) first moments
    v: Vec<f32>, // (P) second moments
    /// Parameter ranges and whether weight decay applies: matrices decay; norm weights and
    /// biases do not (transformers' Trainer rule).
    groups: Vec<(Range<usize>, bool)>,
    steps: u32,
}

impl Optimizer {
    pub fn new(cfg: OptimizerConfig, model_cfg: &ModelConfig, layout: &ParamLayout) -> Self {
        let groups = layout
            .tensors(model_cfg)
            .into_iter()
            .map(|t| (t.range, t.shape.len() >= 2))
            .collect();
        Optimizer {
            cfg,
            m: vec![0.0; layout.len],
            v: vec![0.0; layout.len],
            groups,
            steps: 0,
        }
    }

    /// Global L2 norm of a gradient buffer.
    /// The factor that clips a gradient of norm `grad_norm` to `max` (0: no clipping):
    /// torch.nn.utils.clip_grad_norm_'s coefficient.
    pub fn clip_scale(max: f64, grad_norm: f64) -> f64 {
        if max > 0.0 {
            (max / (grad_norm + 1e-6)).min(1.0)
        } else {
            1.0
        }
    }

    pub fn grad_norm(grads: &[f32]) -> f64 {
        sum_squares(grads).sqrt()
    }

    /// Applies one update with the learning rate `lr` and the gradient whose norm is
    /// `grad_norm` (from `grad_norm`, checked finite by the caller); `previous` receives the
    /// parameters from before it.
    pub fn step(
        &mut self,
        params: &mut [f32],
        previous: &mut [f32],
        grads: &[f32],
        grad_norm: f64,
        lr: f64,
    ) -> anyhow::Result<()> {
        self.steps += 1;
        let scale = Optimizer::clip_scale(self.cfg.max_grad_norm, grad_norm);
        for (range, decays) in &self.groups {
            let r = range.clone();
            adamw_update(
                &mut params[r.clone()],
                &mut previous[r.clone()],
                &mut self.m[r.clone()],
                &mut self.v[r.clone()],
                &grads[r],
                None,
                AdamW {
                    lr: lr as f32,
                    beta1: self.cfg.beta1 as f32,
                    beta2: self.cfg.beta2 as f32,
                    eps: self.cfg.eps as f32,
                    weight_decay: if *decays {
                        self.cfg.weight_decay as f32
                    } else {
                        0.0
                    },
                    step: self.steps,
                    grad_scale: scale as f32,
                },
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(schedule: LrSchedule, warmup_steps: usize) -> OptimizerConfig {
        OptimizerConfig {
            lr: 1.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            schedule,
            warmup_steps,
        }
    }

    #[test]
    fn schedules_follow_transformers() {
        let lin = cfg(LrSchedule::Linear, 2);
        let lrs: Vec<f64> = (0..6).map(|s| lin.lr_at(s, 6)).collect();
        assert_eq!(lrs, vec![0.0, 0.5, 1.0, 0.75, 0.5, 0.25]);
        let cos = cfg(LrSchedule::Cosine, 0);
        assert_eq!(cos.lr_at(0, 4), 1.0);
        assert!((cos.lr_at(2, 4) - 0.5).abs() < 1e-12);
        assert!((cos.lr_at(1, 4) - (0.5 + 0.5 * std::f64::consts::FRAC_1_SQRT_2)).abs() < 1e-12);
        let constant = cfg(LrSchedule::Constant, 4);
        assert_eq!(constant.lr_at(1, 10), 0.25);
        assert_eq!(constant.lr_at(9, 10), 1.0);
    }
}
