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
    /// What to do instead when the parts the flag cannot lower (all but the last) are
    /// beyond the machine already.
    instead: Option<&'static str>,
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
        let fixed: u64 = self.parts[..self.parts.len().saturating_sub(1)]
            .iter()
            .map(|p| p.1)
            .fold(0, u64::saturating_add);
        let advice = match self.instead {
            Some(instead) if fixed > free => instead.to_string(),
            _ => format!("lower {}", self.lower),
        };
        bail!(
            "{command} would need about {:.1} GiB of memory ({}), and this machine has {:.1} GiB available; {advice}",
            self.total() as f64 / GIB,
            parts.join(", "),
            free as f64 / GIB,
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
        instead: None,
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
        instead: None,
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
        instead: None,
    }
}

/// Training on micro-batches of `tokens`: f32 weights, gradients, AdamW's two moments and
/// the roll-back copy (20 bytes a parameter), and the activations: what each layer keeps
/// for the backward (its input, its two norms' outputs and the residual between, q, k, v,
/// the attention's output and log-normalisers, gate/up and their product), and what one
/// layer's forward and backward work in (`graph::Activations`). The LM head's chunk of
/// logits (at most 32 MiB) comes on top.
pub fn training(cfg: &ModelConfig, tokens: usize) -> Need {
    let p = params(cfg);
    let (c, qd, kvd, im) = (
        cfg.hidden_size,
        cfg.q_dim(),
        cfg.kv_dim(),
        cfg.intermediate_size,
    );
    let per_token_layer = floats(&[
        (4, c),
        (2, qd),
        (2, kvd),
        (3, im),
        (1, cfg.num_attention_heads),
    ]);
    let per_token = floats(&[(5, c), (4, qd), (6, kvd), (3, im)]);
    let acts = (tokens as u64).saturating_mul(
        (cfg.num_hidden_layers as u64)
            .saturating_mul(per_token_layer)
            .saturating_add(per_token),
    );
    Need {
        parts: vec![
            (
                "weights, gradients, optimizer state and roll-back copy".into(),
                p.saturating_mul(20),
            ),
            (format!("activations of {tokens}-token micro-batches"), acts),
        ],
        lower: "--micro-batch-tokens",
        instead: Some(
            "the weights and their training state alone are beyond it: train a LoRA adapter instead (--lora-r 16: 4 bytes a frozen weight in place of 20)",
        ),
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
        instead: None,
    }
}

/// The device memory of LoRA TPO on a GPU (bf16 weights and activations), a formula that
/// has not run on a device: the frozen weights in bf16 (2 bytes a parameter); the adapter's
/// f32 master, roll-back copy, gradient and two AdamW moments plus its bf16 copy (22 bytes
/// an adapter parameter); the activations the backward keeps for micro-batches of `tokens`,
/// in bf16 (half the CPU's f32 count); and the bf16 KV caches of `kv_tokens` sampled
/// tokens (K candidates x their length). Sampling and training run one after the other,
/// but the frozen weights serve both, so the larger of the two working sets counts.
pub fn lora_training_on_gpu(
    cfg: &ModelConfig,
    adapter: u64,
    tokens: usize,
    kv_tokens: usize,
) -> Need {
    let acts = training(cfg, tokens).parts[1].1 / 2;
    let kv = (kv_tokens as u64)
        .saturating_mul(cfg.num_hidden_layers as u64)
        .saturating_mul(floats(&[(2, cfg.kv_dim())]) / 2);
    let (work, what) = match acts > kv {
        true => (
            acts,
            format!("bf16 activations of {tokens}-token micro-batches"),
        ),
        false => (kv, format!("bf16 KV caches of {kv_tokens} tokens")),
    };
    Need {
        parts: vec![
            ("bf16 frozen weights".into(), params(cfg).saturating_mul(2)),
            (
                "adapter state (f32 master, roll-back, gradient, moments; bf16 copy)".into(),
                adapter.saturating_mul(22),
            ),
            (what, work),
        ],
        lower: "--micro-batch-tokens",
        instead: None,
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
        let per_layer = 4 * (4 * 576 + 2 * 576 + 2 * 192 + 3 * 1536 + 9) as u64;
        let per = 4 * (5 * 576 + 4 * 576 + 6 * 192 + 3 * 1536) as u64;
        assert_eq!(t.total(), p * 20 + 4096 * (30 * per_layer + per));
    }

    #[test]
    fn a_need_beyond_the_available_memory_names_the_figures_and_the_flag() {
        let need = training(&cfg(), 4096);
        std::env::set_var(AVAILABLE_VAR, (need.total() - 1).to_string());
        let err = need.check("dpo").unwrap_err().to_string();
        std::env::set_var(AVAILABLE_VAR, need.total().to_string());
        let ok = need.check("dpo");
        // Llama-3.2-1B's shape on 22 GiB: its weights' training state alone is beyond it,
        // so the advice is LoRA, which fits.
        let b1 = llama(2048, 16, 32, 8, 8192, 128256, true);
        std::env::set_var(AVAILABLE_VAR, (22u64 << 30).to_string());
        let full_1b = training(&b1, 4096).check("dpo").unwrap_err().to_string();
        let lora_1b = lora_training(&b1, rank_16(&b1), 4096).check("dpo");
        std::env::remove_var(AVAILABLE_VAR);
        assert!(
            full_1b.contains("train a LoRA adapter instead (--lora-r 16"),
            "{full_1b}"
        );
        assert!(!full_1b.contains("lower --micro-batch-tokens"), "{full_1b}");
        lora_1b.unwrap();
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

    fn llama(
        c: usize,
        layers: usize,
        heads: usize,
        kv: usize,
        i: usize,
        v: usize,
        tied: bool,
    ) -> ModelConfig {
        ModelConfig::from_json(&serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "hidden_size": c, "intermediate_size": i,
            "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv, "vocab_size": v, "tie_word_embeddings": tied,
        }))
        .unwrap()
    }

    /// The adapter parameters of rank 16 on every Linear.
    fn rank_16(cfg: &ModelConfig) -> u64 {
        let all = crate::model::lora::Target::ALL.to_vec();
        let lora = crate::model::lora::LoraConfig::new(16, 32.0, false, 0.0, all).unwrap();
        crate::model::lora::LoraLayout::new(cfg, &lora).len as u64
    }

    /// Llama-3.2-1B's shape on a 24 GiB machine: full training needs more than it has
    /// (20 bytes a parameter), a rank-16 LoRA about two thirds of it.
    #[test]
    fn lora_fits_the_1b_shape_in_24_gib_and_full_training_does_not() {
        let c = llama(2048, 16, 32, 8, 8192, 128256, true);
        let gib = |n: u64| n as f64 / GIB;
        let full = training(&c, 4096);
        let adapter = rank_16(&c);
        assert_eq!(adapter, 16 * 16 * (4096 + 2560 + 2560 + 4096 + 3 * 10240));
        let lora = lora_training(&c, adapter, 4096);
        assert!(gib(full.total()) > 24.0, "{}", gib(full.total()));
        assert!(gib(lora.total()) < 18.0, "{}", gib(lora.total()));
        // Only the weights' share differs: 4 bytes a frozen parameter, 20 an adapter one.
        assert_eq!(full.total() - lora.total(), 16 * params(&c) - 20 * adapter);
    }

    /// The formula on a GPU of 80 GB (not run): Llama-3.1-8B fits with 4096-token
    /// micro-batches and the KV caches of 8 candidates of 1024 tokens; a 34B Llama
    /// (CodeLlama-34B's shape) fits with 512-token micro-batches; 70B's frozen weights alone
    /// are beyond it.
    #[test]
    fn on_an_80_gb_gpu_lora_fits_8b_and_34b_but_not_70b() {
        let gb = |n: u64| n as f64 / 1e9;
        let kv_tokens = 8 * 1024;
        let b8 = llama(4096, 32, 32, 8, 14336, 128256, false);
        let need = lora_training_on_gpu(&b8, rank_16(&b8), 4096, kv_tokens);
        assert!(
            (35.0..40.0).contains(&gb(need.total())),
            "{}",
            gb(need.total())
        );
        let b34 = llama(8192, 48, 64, 8, 22016, 32000, false);
        let need = lora_training_on_gpu(&b34, rank_16(&b34), 512, kv_tokens);
        assert!(
            (70.0..80.0).contains(&gb(need.total())),
            "{}",
            gb(need.total())
        );
        let need = lora_training_on_gpu(&b34, rank_16(&b34), 4096, kv_tokens);
        assert!(gb(need.total()) > 80.0);
        let b70 = llama(8192, 80, 64, 8, 28672, 128256, false);
        assert!(gb(params(&b70) * 2) > 80.0);
    }
}
