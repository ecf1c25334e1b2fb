//! Sampling K completions per prompt: prompts prefilled once, their KV cache copied to each
//! of their K samples, all live sequences decoded together with continuous batching.

pub mod engine;
pub mod eos;
pub mod gpu;
pub mod prompts;
pub mod steer;

pub use engine::{generate, generate_on, Completion, FinishReason, GenerateOptions, GenerateStats};
pub use eos::{end_token, eos_ids};
pub use prompts::{read_prompts, Prompt, PromptMode};
