//! A reward model judge: a `LlamaForSequenceClassification` or
//! `Qwen2ForSequenceClassification` checkpoint with one label, run by our own runtime.
//!
//! Each response is scored on its own, as transformers scores one unpadded sequence: the
//! reward model's chat template renders [user: instruction, assistant: response] with no
//! generation prompt, the text is encoded without added special tokens (the template wrote
//! them), and the score is score.weight · final_norm(hidden) at the last token that is not
//! pad_token_id (`Model::classify`). Sequences are packed into forward passes of at most
//! `micro_batch_tokens` tokens (a longer one runs alone), with no KV cache and no logits over
//! the vocabulary.
//!
//! A conversation longer than the reward model's context is an error, not truncated: cutting
//! it from the left drops the instruction, from the right the end of the response, and either
//! way the model would score something other than what was asked.

use super::{Judge, JudgeGroup, JudgeOptions};
use crate::backend::cpu::Cpu;
use crate::backend::device::Device;
use crate::engine::Engine;
use crate::model::{Head, Model, ModelConfig};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::{Path, PathBuf};

pub struct RewardModelJudge {
    dir: PathBuf,
    model: Model,
    /// The model on the GPU, when the run's device is one (bf16).
    /// The model's copy on the run's device, where it needs one (a GPU).
    on_device: Option<Engine<'static>>,
    /// The CPU's products, when the run's device is the CPU.
    cpu: Cpu,
    tokenizer: Tokenizer,
    micro_batch_tokens: usize,
}

impl RewardModelJudge {
    /// Loads the checkpoint in `dir`, checking its config and chat template before the
    /// weights are read.
    pub fn load(dir: &Path, opts: &JudgeOptions) -> Result<Self> {
        if opts.micro_batch_tokens == 0 {
            bail!("reward model: micro_batch_tokens must be positive");
        }
        let config_path = dir.join("config.json");
        let config = ModelConfig::load(&config_path)?;
        match config.head {
            Head::SequenceClassification { num_labels: 1 } => {}
            Head::SequenceClassification { num_labels } => bail!(
                "{}: {} has {num_labels} labels (id2label / num_labels); a reward model gives one score, num_labels 1",
                config_path.display(),
                config.class_name()
            ),
            Head::CausalLm => bail!(
                "{}: {} is a causal language model, not a reward model; rm:DIR needs a LlamaForSequenceClassification or Qwen2ForSequenceClassification checkpoint",
                config_path.display(),
                config.class_name()
            ),
        }
        let tokenizer = Tokenizer::load(dir)?;
        if !tokenizer.has_chat_template() {
            bail!(
                "{}: the reward model has no chat template (chat_template in tokenizer_config.json, or chat_template.jinja); it needs one to see the instruction and the response as it was trained to",
                dir.display()
            );
        }
        let model = Model::load_with_config(dir, config)?;
        Ok(RewardModelJudge {
            dir: dir.to_path_buf(),
            model,
            on_device: None,
            cpu: Cpu::F32,
            tokenizer,
            micro_batch_tokens: opts.micro_batch_tokens,
        })
    }

    /// The token ids of one instruction and response as the reward model reads them.
    fn encode(&self, instruction: &str, response: &str) -> Result<Vec<u32>> {
        let messages = json!([
            {"role": "user", "content": instruction},
            {"role": "assistant", "content": response},
        ]);
        let text = self.tokenizer.render_messages(&messages, false)?;
        let ids = self.tokenizer.encode(&text, false)?;
        let cfg = &self.model.config;
        if ids.is_empty() {
            bail!("the chat template gave no tokens");
        }
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            bail!(
                "token id {bad} is beyond the model's vocab_size {}: tokenizer and model do not match",
                cfg.vocab_size
            );
        }
        if ids.len() > cfg.max_context {
            bail!(
                "the instruction and response are {} tokens after the chat template; the reward model's context is {} (shorten the responses, or use a reward model with a longer context)",
                ids.len(),
                cfg.max_context
            );
        }
        Ok(ids)
    }
}

impl Judge for RewardModelJudge {
    fn set_device(&mut self, device: &Device) -> Result<()> {
        self.on_device = Engine::copy_for(&self.model, device)
            .with_context(|| format!("reward model {}", self.dir.display()))?;
        if let Device::Cpu(cpu) = device {
            self.cpu = cpu.clone();
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("reward model {}", self.dir.display())
    }

    /// `progress` is told the number of responses of each forward pass as it finishes.
    fn score(&mut self, groups: &[JudgeGroup], progress: &dyn Fn(usize)) -> Result<Vec<Vec<f64>>> {
        // Every text is encoded before any pass, so bad input fails before the work.
        let mut seqs: Vec<Vec<u32>> = vec![];
        let mut owners: Vec<(usize, usize)> = vec![];
        for (g, group) in groups.iter().enumerate() {
            for (r, response) in group.responses.iter().enumerate() {
                let ids = self.encode(group.instruction, response).with_context(|| {
                    format!(
                        "reward model {}: response {} of prompt {} ({})",
                        self.dir.display(),
                        r + 1,
                        g + 1,
                        preview(group.instruction)
                    )
                })?;
                seqs.push(ids);
                owners.push((g, r));
            }
        }
        let mut scores: Vec<Vec<f64>> = groups
            .iter()
            .map(|g| vec![0.0; g.responses.len()])
            .collect();
        let on_cpu = Engine::Cpu(&self.model, self.cpu.clone());
        let engine = self.on_device.as_ref().unwrap_or(&on_cpu);
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let mut logits = vec![f32::NAN; seqs.len()];
        let mut on_pass = |micro: &[usize], pass: &[f32]| {
            for (&i, &score) in micro.iter().zip(pass) {
                logits[i] = score;
            }
            progress(micro.len());
        };
        engine
            .classify(&refs, self.micro_batch_tokens, &mut on_pass)
            .with_context(|| format!("reward model {}", self.dir.display()))?;
        for (&(g, r), &score) in owners.iter().zip(&logits) {
            if !score.is_finite() {
                bail!(
                    "reward model {}: the score of response {} of prompt {} ({}) is {score}; are the weights sound?",
                    self.dir.display(),
                    r + 1,
                    g + 1,
                    preview(groups[g].instruction)
                );
            }
            scores[g][r] = score as f64;
        }
        Ok(scores)
    }
}

/// The start of an instruction, quoted, to say which prompt an error is about.
fn preview(instruction: &str) -> String {
    const MAX: usize = 40;
    let line = instruction.trim().lines().next().unwrap_or("");
    match line.char_indices().nth(MAX) {
        Some((end, _)) => format!("{:?}...", &line[..end]),
        None => format!("{line:?}"),
    }
}
