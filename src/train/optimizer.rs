//! The optimizer's settings and rules over a whole model: Hugging Face Trainer's decay
//! groups, gradient-norm clipping and the learning-rate schedule. The AdamW state itself is
//! the trainer's (`trainer::Trainer`), on the run's device.

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

/// The factor that clips a gradient of norm `grad_norm` to `max` (0: no clipping):
/// torch.nn.utils.clip_grad_norm_'s coefficient.
pub fn clip_scale(max: f64, grad_norm: f64) -> f64 {
    if max > 0.0 {
        (max / (grad_norm + 1e-6)).min(1.0)
    } else {
        1.0
    }
}

/// Runs of consecutive parameters that share a weight-decay rule, and whether they decay:
/// matrices decay; norm weights and biases do not (transformers' Trainer rule).
pub fn decay_runs(model_cfg: &ModelConfig, layout: &ParamLayout) -> Vec<(Range<usize>, bool)> {
    let mut runs: Vec<(Range<usize>, bool)> = vec![];
    for t in layout.tensors(model_cfg) {
        let decays = t.shape.len() >= 2;
        match runs.last_mut() {
            Some((r, d)) if *d == decays && r.end == t.range.start => r.end = t.range.end,
            _ => runs.push((t.range, decays)),
        }
    }
    runs
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

    #[test]
    fn matrices_decay_and_norms_do_not_in_runs_that_tile_the_parameters() {
        let config = ModelConfig::from_json(&serde_json::json!({
            "architectures": ["Qwen2ForCausalLM"], "hidden_size": 8, "intermediate_size": 12,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
            "vocab_size": 16, "max_position_embeddings": 32,
        }))
        .unwrap();
        let layout = ParamLayout::new(&config);
        let runs = decay_runs(&config, &layout);
        assert_eq!(runs.first().unwrap().0.start, 0);
        assert_eq!(runs.last().unwrap().0.end, layout.len);
        for w in runs.windows(2) {
            assert_eq!(w[0].0.end, w[1].0.start, "runs tile the parameters");
            assert_ne!(w[0].1, w[1].1, "neighbouring runs differ in their rule");
        }
        for t in layout.tensors(&config) {
            let (_, decays) = runs
                .iter()
                .find(|(r, _)| r.contains(&t.range.start))
                .unwrap();
            assert_eq!(*decays, t.shape.len() >= 2, "{}", t.name);
        }
        assert_eq!(clip_scale(1.0, 3.0), 1.0 / (3.0 + 1e-6));
        assert_eq!(clip_scale(1.0, 0.5), 1.0);
        assert_eq!(clip_scale(0.0, 100.0), 1.0);
    }
}
