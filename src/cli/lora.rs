//! The LoRA flags of the training commands: a new adapter (`--lora-r` and its shape) or
//! one to continue (`--adapter`), checked before any weights are read.

use crate::io::outputs::Inputs;
use crate::model::config::ModelConfig;
use crate::model::lora::{Adapter, LoraConfig, Target};
use crate::model::peft;
use anyhow::{bail, Result};
use std::path::PathBuf;

/// PEFT's LoraConfig default alpha.
const DEFAULT_ALPHA: f64 = 8.0;

#[derive(clap::Args, Clone, Debug, Default)]
pub struct LoraArgs {
    /// Train a LoRA adapter of this rank over the frozen model instead of the whole model;
    /// written in PEFT's format (OUT/adapter, OUT/checkpoint-STEP).
    #[arg(long)]
    pub lora_r: Option<usize>,
    /// The adapter's scaling is alpha / r (with --lora-rslora, alpha / sqrt(r)).
    /// Default: 8, PEFT's.
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    /// Scale by alpha / sqrt(r) (rsLoRA).
    #[arg(long)]
    pub lora_rslora: bool,
    /// Dropout on each adapted Linear's input to its adapter while training (PEFT's
    /// lora_dropout). Default 0.
    #[arg(long)]
    pub lora_dropout: Option<f64>,
    /// The Linear modules to adapt, by PEFT's names, comma-separated: q_proj, k_proj,
    /// v_proj, o_proj, gate_proj, up_proj, down_proj, or all-linear (the default).
    #[arg(long, value_delimiter = ',')]
    pub lora_targets: Vec<String>,
    /// A LoRA adapter to continue training (PEFT's format, a directory or a Hub id): its
    /// rank, alpha and targets are its own.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
}

impl LoraArgs {
    /// The shape flags given, by name.
    fn shape_flags(&self) -> Vec<&'static str> {
        let mut given = vec![];
        if self.lora_alpha.is_some() {
            given.push("--lora-alpha");
        }
        if self.lora_rslora {
            given.push("--lora-rslora");
        }
        if self.lora_dropout.is_some() {
            given.push("--lora-dropout");
        }
        if !self.lora_targets.is_empty() {
            given.push("--lora-targets");
        }
        given
    }

    /// Checks the flags, and adds `--adapter`'s directory to the inputs checked before any
    /// work.
    pub fn check<'a>(&'a self, inputs: Inputs<'a>) -> Result<Inputs<'a>> {
        self.config()?;
        Ok(match &self.adapter {
            Some(adapter) => inputs.dir("--adapter", adapter),
            None => inputs,
        })
    }

    /// The new adapter's config (None: no new adapter), checked.
    pub fn config(&self) -> Result<Option<LoraConfig>> {
        let shape = self.shape_flags();
        let Some(r) = self.lora_r else {
            if let Some(flag) = shape.first() {
                if self.adapter.is_some() {
                    bail!("{flag}: --adapter continues an adapter of its own shape; leave it out");
                }
                bail!("{flag} needs --lora-r (the rank of a new LoRA adapter)");
            }
            return Ok(None);
        };
        if self.adapter.is_some() {
            bail!("--lora-r makes a new adapter and --adapter continues one: give one of them");
        }
        let targets = Target::parse_names(&self.lora_targets)
            .map_err(|e| anyhow::anyhow!("--lora-targets: {e}"))?;
        let lora = LoraConfig::new(
            r,
            self.lora_alpha.unwrap_or(DEFAULT_ALPHA),
            self.lora_rslora,
            self.lora_dropout.unwrap_or(0.0),
            targets,
        )
        .map_err(|e| anyhow::anyhow!("--lora-*: {e:#}"))?;
        Ok(Some(lora))
    }

    /// The adapter a run trains, for a model of `cfg`: the one `--adapter` names, or a new
    /// one (seeded by `seed`, as PEFT initialises one: the base model exactly), or None.
    pub fn adapter(&self, cfg: &ModelConfig, seed: u64) -> Result<Option<Adapter>> {
        if let Some(lora) = self.config()? {
            return Ok(Some(Adapter::init(cfg, lora, seed)));
        }
        let Some(flag) = &self.adapter else {
            return Ok(None);
        };
        Ok(Some(peft::load_flag(flag, cfg)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(r: Option<usize>) -> LoraArgs {
        LoraArgs {
            lora_r: r,
            ..LoraArgs::default()
        }
    }

    #[test]
    fn flags_make_a_config_or_a_clear_refusal() {
        assert_eq!(args(None).config().unwrap(), None);
        let mut a = args(Some(4));
        a.lora_targets = vec!["v_proj".into(), "q_proj".into()];
        a.lora_alpha = Some(16.0);
        let lora = a.config().unwrap().unwrap();
        assert_eq!(lora.targets, vec![Target::Q, Target::V]);
        assert_eq!(lora.scale(), 4.0);
        assert_eq!(args(Some(2)).config().unwrap().unwrap().targets.len(), 7);

        let err = |a: LoraArgs| a.config().unwrap_err().to_string();
        let mut alone = args(None);
        alone.lora_alpha = Some(4.0);
        assert!(err(alone.clone()).contains("--lora-alpha needs --lora-r"));
        alone.adapter = Some("x".into());
        assert!(err(alone).contains("leave it out"));
        let mut both = args(Some(2));
        both.adapter = Some("x".into());
        assert!(err(both).contains("give one of them"));
        let mut bad = args(Some(2));
        bad.lora_targets = vec!["qkv".into()];
        assert!(err(bad).contains("no module \"qkv\""));
        assert!(err(args(Some(0))).contains("rank 0"));
        let mut dropout = args(Some(2));
        dropout.lora_dropout = Some(1.5);
        assert!(err(dropout).contains("dropout 1.5"));
        let mut dropout = args(Some(2));
        dropout.lora_dropout = Some(0.05);
        assert_eq!(dropout.config().unwrap().unwrap().dropout, 0.05);
    }
}
