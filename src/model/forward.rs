//! A model on the CPU: its config, its f32 weights (the host's copy on every device) and
//! the graph over them (`Model::net`), with the forward of sequences that continue KV
//! caches and a classifier's scores as conveniences over that graph.

use super::config::{Head, ModelConfig};
use super::graph::{Activations, Net};
use super::params::ParamLayout;
use super::weights::{load_weights, StorageDtype};
use crate::backend::cpu::kv_cache::{KvCache, SeqCaches};
use crate::backend::cpu::Cpu;
use crate::backend::rope_table::inv_frequencies;
use anyhow::{bail, Result};
use std::path::Path;

/// A loaded model: its config, the flat f32 parameters and precomputed rotary tables.
pub struct Model {
    pub config: ModelConfig,
    pub layout: ParamLayout,
    pub params: Vec<f32>,
    /// How the checkpoint stored its weights (checkpoints we write keep it).
    pub dtype: StorageDtype,
    /// Rotary inverse frequencies: (D/2).
    pub(crate) inv_freq: Vec<f64>,
}

/// The config.json of `dir`, which must be a causal LM's.
fn causal_lm_config(dir: &Path) -> Result<ModelConfig> {
    let path = dir.join("config.json");
    let config = ModelConfig::load(&path)?;
    if config.head != Head::CausalLm {
        bail!(
            "{}: {} is a sequence classifier (a reward model), not a causal language model",
            path.display(),
            config.class_name()
        );
    }
    Ok(config)
}

/// Which positions' logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitRows {
    /// Every new token: (N, V).
    All,
    /// The last new token of each sequence: (S, V).
    Last,
}

impl Model {
    /// Loads config.json and the safetensors weights of a causal LM's checkpoint directory.
    pub fn load(dir: &Path) -> Result<Model> {
        // load_with_config checks the headers against the config before allocating.
        Model::load_with_config(dir, causal_lm_config(dir)?)
    }

    /// The config.json of a causal LM's checkpoint directory, for callers that check their
    /// inputs before the weights are read; checked against the weights' headers already
    /// (`check_headers`), so that nothing sized by the config meets a corrupt size.
    pub fn load_config(dir: &Path) -> Result<ModelConfig> {
        let config = causal_lm_config(dir)?;
        super::weights::check_headers(dir, &config)?;
        Ok(config)
    }

    /// Loads the safetensors weights of a checkpoint directory whose config.json gave
    /// `config` (for callers that check the config before the weights are read).
    pub fn load_with_config(dir: &Path, config: ModelConfig) -> Result<Model> {
        let (layout, params, dtype) = load_weights(dir, &config)?;
        Ok(Model::assemble(config, layout, params, dtype))
    }

    pub fn from_params(config: ModelConfig, params: Vec<f32>, dtype: StorageDtype) -> Model {
        let layout = ParamLayout::new(&config);
        assert_eq!(
            params.len(),
            layout.len,
            "parameter buffer does not match the config"
        );
        Model::assemble(config, layout, params, dtype)
    }

    fn assemble(
        config: ModelConfig,
        layout: ParamLayout,
        params: Vec<f32>,
        dtype: StorageDtype,
    ) -> Model {
        let inv_freq = inv_frequencies(config.head_dim, config.rope_theta, &config.rope_scaling);
        Model {
            config,
            layout,
            params,
            dtype,
            inv_freq,
        }
    }

    /// The model's graph on the CPU, f32 throughout.
    pub fn net(&self) -> Net<'_, Cpu> {
        static F32: Cpu = Cpu::F32;
        self.net_on(&F32)
    }

    /// The model's graph on the CPU with `cpu`'s products.
    pub fn net_on<'a>(&'a self, cpu: &'a Cpu) -> Net<'a, Cpu> {
        Net {
            ops: cpu,
            config: &self.config,
            layout: &self.layout,
            weights: &self.params,
            inv_freq: &self.inv_freq,
            lora: None,
        }
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.config.num_hidden_layers, self.config.kv_dim())
    }

    /// Runs the new tokens `seqs[s]` of each sequence s, which continue `caches[s]` (empty
    /// for a fresh prompt), appends their keys/values there and returns logits of `rows`.
    ///
    /// The sequences are packed row after row (N = total new tokens), so sequences of
    /// different lengths need no padding. A token beyond the vocabulary or a position
    /// beyond the context is an error.
    pub fn forward(
        &self,
        seqs: &[&[u32]],
        caches: &mut [&mut KvCache],
        rows: LogitRows,
    ) -> Result<Vec<f32>> {
        self.forward_adapted(None, seqs, caches, rows)
    }

    /// `forward` with a LoRA adapter applied in the graph, unmerged (each adapted Linear
    /// adds s * (x A^T) B^T), as PEFT runs one.
    pub fn forward_adapted(
        &self,
        adapter: Option<&crate::model::lora::Adapter>,
        seqs: &[&[u32]],
        caches: &mut [&mut KvCache],
        rows: LogitRows,
    ) -> Result<Vec<f32>> {
        if seqs.len() != caches.len() {
            bail!("{} sequences with {} caches", seqs.len(), caches.len());
        }
        if self.config.head != Head::CausalLm {
            bail!("only a causal LM has logits");
        }
        let mut net = self.net();
        net.lora = adapter.map(|a| crate::model::graph::LoraNet {
            layout: &a.layout,
            weights: &a.params,
            r: a.config.r,
            scale: a.config.scale() as f32,
            dropout: None,
        });
        let tokens: Vec<u32> = seqs.iter().flat_map(|s| s.iter().copied()).collect();
        let mut acts = Activations::new(&net, tokens.len(), false)?;
        let lens: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
        let refs: Vec<&mut KvCache> = caches.iter_mut().map(|c| &mut **c).collect();
        let mut caches = SeqCaches::new(refs, &lens);
        let positions = caches.positions().to_vec();
        net.cached_forward(&tokens, &positions, &mut caches, &mut acts)?;
        let picked: Vec<usize> = match rows {
            LogitRows::All => (0..tokens.len()).collect(),
            LogitRows::Last => {
                if lens.contains(&0) {
                    bail!("a sequence with no new tokens has no last row");
                }
                lens.iter()
                    .scan(0, |end, &n| {
                        *end += n;
                        Some(*end - 1)
                    })
                    .collect()
            }
        };
        let (lm_head, v) = (&self.layout.lm_head, self.config.vocab_size);
        net.head(&mut acts, &picked, lm_head, v)?;
        Ok(std::mem::take(&mut acts.head_out))
    }

    /// A sequence classifier's logits, (S, L), for fresh whole sequences (see
    /// `Net::classify`).
    pub fn classify(&self, seqs: &[&[u32]]) -> Result<Vec<f32>> {
        let net = self.net();
        let n = seqs.iter().map(|s| s.len()).sum();
        let mut acts = Activations::new(&net, n, false)?;
        net.classify(seqs, &mut acts)
    }
}
