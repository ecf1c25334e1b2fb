//! What a command will hold in host memory, estimated from the model's config before any
//! weights are loaded, against what the machine has free: a run that cannot fit stops at
//! once with the figures and the flag to lower, instead of meeting the OOM killer later.
//!
//! The estimates count the large buffers only (weights, gradients and optimizer state, kept
//! packings, KV caches, saved activations); the rest (tokenizer, scratch rows) is small.

use crate::backend::device::Device;
use crate::model::config::ModelConfig;
use anyhow::{bail, Result};

/// Overrides the machine's available memory, in bytes (for tests).
pub const AVAILABLE_VAR: &str = "TPO_MEMORY_AVAILABLE";

/// A command's large buffers, each named, and the flag that lowers the part that can be
/// lowered.
pub struct Need {
    parts: Vec<(String, u64)>,
    lower: &'static str,
}

const GIB: f64 = (1u64 << 30) as f64;

impl Need {
    /// The same need, naming `flags` as what lowers it (a command's own flag names).
    pub fn lowered_by(mut self, flags: &'static str) -> Need {
        self.lower = flags;
        self
    }

    pub fn total(&self) -> u64 {
        self.parts.iter().map(|p| p.1).fold(0, u64::saturating_add)
    }

    /// `check` where `device` runs the work in host memory (the CPU); nothing on a GPU,
    /// whose memory is another matter.
    pub fn check_on(&self, device: &Device, command: &str) -> Result<()> {
        match device {
            Device::Cpu(_) => self.check(command),
            _ => Ok(()),
        }
    }

    /// An error when the total exceeds the machine's available memory (`available`).
    pub fn check(&self, command: &str) -> Result<()> {
        let Some(free) = available() else {
            return Ok(());
        };
        if self.total() <= free {
            return Ok(());
        }
        let parts: Vec<String> = self
            .parts
            .iter()
            .map(|(what, bytes)| format!("{what} {:.1} GiB", *bytes as f64 / GIB))
            .collect();
        bail!(
            "{command} would need about {:.1} GiB of memory ({}), and this machine has {:.1} GiB available; lower {}",
            self.total() as f64 / GIB,
            parts.join(", "),
            free as f64 / GIB,
            self.lower
        )
    }
}

/// Bytes free for a new process: `TPO_MEMORY_AVAILABLE`, else MemAvailable of
/// /proc/meminfo; None where neither says.
pub fn available() -> Option<u64> {
    if let Some(bytes) = std::env::var(AVAILABLE_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return Some(bytes);
    }
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

fn params(cfg: &ModelConfig) -> u64 {
    cfg.parameter_count().unwrap_or(usize::MAX) as u64
}

/// 4 bytes x the sum of `terms` (count, size) products, saturating: a hostile config's
/// sizes can neither overflow nor panic here.
fn floats(terms: &[(u64, usize)]) -> u64 {
    terms
        .iter()
        .map(|&(n, size)| n.saturating_mul(size as u64))
        .fold(0u64, u64::saturating_add)
        .saturating_mul(4)
}

/// Generation of `seqs` sequences at once (`--batch-size`, or fewer), each up to `positions`
/// tokens long, with `kept_bytes` per parameter of kept weight packings.
pub fn generation(cfg: &ModelConfig, seqs: usize, positions: usize, kept_bytes: u64) -> Need {
    let p = params(cfg);
    let kv = (seqs as u64)
        .saturating_mul(positions as u64)
        .saturating_mul(cfg.num_hidden_layers as u64)
        .saturating_mul(floats(&[(2, cfg.kv_dim())]));
    let logits = (seqs as u64).saturating_mul(floats(&[(1, cfg.vocab_size)]));
    Need {
        parts: vec![
            ("weights".into(), p.saturating_mul(4)),
            ("kept packings".into(), p.saturating_mul(kept_bytes)),
            (format!("KV caches of {seqs} sequences"), kv),
            ("logits".into(), logits),
        ],
        lower: "--batch-size (or --max-new-tokens)",
    }
}

/// Making a checkpoint: its f32 weights and their serialized copy, `stored` bytes each.
pub fn checkpoint(cfg: &ModelConfig, stored: u64) -> Need {
    let p = params(cfg);
    Need {
        parts: vec![
            ("weights".into(), p.saturating_mul(4)),
            ("the file's bytes".into(), p.saturating_mul(stored)),
        ],
        lower: "--hidden, --layers, --intermediate or --vocab",
    }
}

/// Scoring (log-probs) in micro-batches of `tokens`: the weights and one micro-batch's
/// forward activations, none kept for a backward.
pub fn scoring(cfg: &ModelConfig, tokens: usize) -> Need {
    let per_token = floats(&[
        (4, cfg.hidden_size),
        (2, cfg.kv_dim()),
        (3, cfg.intermediate_size),
    ]);
    Need {
        parts: vec![
            ("weights".into(), params(cfg).saturating_mul(4)),
            (
                format!("activations of {tokens}-token micro-batches"),
                (tokens as u64).saturating_mul(per_token),
            ),
        ],
        lower: "--micro-batch-tokens",
    }
}

/// Training on micro-batches of `tokens`: f32 weights, gradients, AdamW's two moments and
/// the roll-back copy (20 bytes a parameter), and the activations the backward keeps.
pub fn training(cfg: &ModelConfig, tokens: usize) -> Need {
    let p = params(cfg);
    let per_token_layer = floats(&[
        (6, cfg.hidden_size),
        (2, cfg.q_dim()),
        (2, cfg.kv_dim()),
        (3, cfg.intermediate_size),
    ]);
    let acts = (tokens as u64)
        .saturating_mul(cfg.num_hidden_layers as u64)
        .saturating_mul(per_token_layer);
    Need {
        parts: vec![
            (
                "weights, gradients, optimizer state and roll-back copy".into(),
                p.saturating_mul(20),
            ),
            (format!("activations of {tokens}-token micro-batches"), acts),
        ],
        lower: "--micro-batch-tokens",
    }
}

/// LoRA training on micro-batches of `tokens`: the model's frozen f32 weights (4 bytes a
/// parameter, no gradient or optimizer state), the adapter's `adapter` parameters with
/// their gradient, AdamW moments, roll-back copy and master (20 bytes each), and the
/// activations the backward keeps, as in full training (the adapters' own products add
/// r floats per token and Linear, a few percent).
pub fn lora_training(cfg: &ModelConfig, adapter: u64, tokens: usize) -> Need {
    let full = training(cfg, tokens);
    let acts = full.parts[1].clone();
    Need {
        parts: vec![
            ("frozen weights".into(), params(cfg).saturating_mul(4)),
            (
                "adapter weights, gradients, optimizer state and roll-back copy".into(),
                adapter.saturating_mul(20),
            ),
            acts,
        ],
        lower: "--micro-batch-tokens",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ModelConfig {
        let json = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
            "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
            "tie_word_embeddings": true, "max_position_embeddings": 2048
        });
        ModelConfig::from_json(&json).unwrap()
    }

    /// The 135m shape: the counted parameters are those of the model (an upper bound within
    /// a bias per projection); 64 sequences of 160 tokens hold 30 layers x 2 x 192 floats a
    /// token.
    #[test]
    fn the_estimates_count_the_large_buffers() {
        let c = cfg();
        let exact = crate::model::params::ParamLayout::new(&c).len as u64;
        let p = params(&c);
        assert!(p >= exact && p < exact + exact / 100, "{p} against {exact}");
        let g = generation(&c, 64, 160, 4);
        let kv = 64 * 160 * 30 * 2 * 192 * 4;
        assert_eq!(g.total(), p * 8 + kv + 64 * 49152 * 4);
        let t = training(&c, 4096);
        let per = 4 * (6 * 576 + 2 * 576 + 2 * 192 + 3 * 1536) as u64;
        assert_eq!(t.total(), p * 20 + 4096 * 30 * per);
    }

    #[test]
    fn a_need_beyond_the_available_memory_names_the_figures_and_the_flag() {
        let need = training(&cfg(), 4096);
        std::env::set_var(AVAILABLE_VAR, (need.total() - 1).to_string());
        let err = need.check("dpo").unwrap_err().to_string();
        std::env::set_var(AVAILABLE_VAR, need.total().to_string());
        let ok = need.check("dpo");
        std::env::remove_var(AVAILABLE_VAR);
        assert!(
            err.contains("dpo would need about") && err.contains("--micro-batch-tokens"),
            "{err}"
        );
        assert!(
            err.contains("activations of 4096-token micro-batches"),
            "{err}"
        );
        ok.unwrap();
    }
}
