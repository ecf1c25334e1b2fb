//! The model's graph, written once over the op set (`backend::ops::Ops`) and run on either
//! device: the decoder layer's forward and backward, the final norm and the LM head's fused
//! log-probs, the packed forward of fresh sequences, prefill and decode steps over KV caches,
//! and the classifier head. `Model` runs it with `Cpu` on its own f32 weights, `ModelOn<O>`
//! on any op set (`GpuModel<T>` is `ModelOn<CudaOps<T>>`); every CPU test of the model
//! exercises the same orchestration the GPU runs.
//!
//! Shape letters as in `backend`: N rows, C width, H/Hkv heads, D head dim, I MLP width,
//! V vocabulary, M scored rows, S sequences.

pub mod activations;
pub mod batch;
pub mod infer;
pub mod layer;
pub mod logprobs;
pub(crate) mod lora;
pub mod model_on;

pub use activations::Activations;
pub use batch::{DeviceBatch, ScoredSequence, TrainBatch};
pub use model_on::ModelOn;

use super::config::ModelConfig;
use super::params::ParamLayout;
use crate::backend::ops::Ops;
use crate::backend::settings::AttentionDims;
use std::ops::Range;

/// A LoRA adapter's weights on the device the net runs on: every A (r, in) and B (out, r)
/// in one buffer, laid out by `layout`; each adapted Linear adds s * (dropout(x) A^T) B^T.
pub struct LoraNet<'a, O: Ops> {
    pub layout: &'a crate::model::lora::LoraLayout,
    pub weights: &'a O::Buf<O::S>,
    pub r: usize,
    pub scale: f32,
    /// Dropout on the adapted Linears' inputs (training only; None: none).
    pub dropout: Option<LoraDropout>,
}

/// LoRA dropout while training (PEFT's `lora_dropout`): the probability, and the seed of
/// one pass's masks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoraDropout {
    pub p: f32,
    pub seed: u64,
}

impl LoraDropout {
    /// The mask seed of Linear `target` of layer `l`: each Linear draws its own mask, as
    /// PEFT's per-module dropout does.
    pub fn seed_of(&self, l: usize, target: crate::model::lora::Target) -> u64 {
        let which = (l as u64) << 8 | target as u64;
        crate::backend::rng::splitmix64(self.seed ^ crate::backend::rng::splitmix64(which))
    }
}

/// A model's weights on one device, with what the graph needs to run them.
pub struct Net<'a, O: Ops> {
    pub ops: &'a O,
    pub config: &'a ModelConfig,
    pub layout: &'a ParamLayout,
    /// (P) the weights the forward reads, in the layout's ranges.
    pub weights: &'a O::Buf<O::S>,
    /// Rotary inverse frequencies: (D/2).
    pub inv_freq: &'a [f64],
    /// A LoRA adapter the forward adds to its targets (None: the model alone).
    pub lora: Option<LoraNet<'a, O>>,
}

impl<'a, O: Ops> Net<'a, O> {
    /// The weights of one tensor.
    pub fn w(&self, range: &Range<usize>) -> O::W<'a> {
        O::weights(self.weights, range.clone())
    }

    pub fn attention_dims(&self) -> AttentionDims {
        attention_dims(self.config)
    }
}

/// The attention layer's head counts and size.
pub fn attention_dims(cfg: &ModelConfig) -> AttentionDims {
    AttentionDims {
        n_head: cfg.num_attention_heads,
        n_kv_head: cfg.num_key_value_heads,
        head_dim: cfg.head_dim,
    }
}
