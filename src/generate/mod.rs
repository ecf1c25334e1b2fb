//! Sampling K completions per prompt: prompts prefilled once, their KV cache copied to each
//! of their K samples, all live sequences decoded together with continuous batching.

pub mod engine;
pub mod eos;
pub mod gpu;
pub mod prompts;

pub use engine::{generate, Completion, FinishReason, GenerateOptions, GenerateStats};
pub use eos::{end_token, eos_ids};
pub use prompts::{read_prompts, Prompt, PromptMode};

use crate::backend::device::Device;
use crate::model::Model;

/// `generate` on `device`: the CPU engine, or the CUDA one (`gpu::generate_gpu`).
pub fn generate_on(
    device: &Device,
    model: &Model,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    is_stopped: &(dyn Fn(&[u32]) -> bool + Sync),
    on_tokens: &dyn Fn(usize),
) -> anyhow::Result<(Vec<Vec<Completion>>, GenerateStats)> {
    match device {
        Device::Cpu => generate(model, prompts, opts, is_stopped, on_tokens),
        Device::Cuda(gpu) => gpu::generate_gpu(gpu, model, prompts, opts, is_stopped, on_tokens),
    }
}
