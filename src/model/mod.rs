//! Llama-family causal language models (Llama, Mistral, Qwen2), and Llama and Qwen2
//! sequence classifiers (reward models), loaded from Hugging Face checkpoint directories:
//! config, weights and parameter layout, and the one graph (`graph`) that runs them on the
//! CPU (`Model`) or on a GPU (`cuda::GpuModel`).

pub mod config;
pub mod cuda;
pub mod forward;
pub mod graph;
pub mod lora;
pub mod params;
pub mod peft;
pub mod weights;

pub use config::{Architecture, Head, ModelConfig};
pub use forward::{LogitRows, Model};
pub use params::ParamLayout;
