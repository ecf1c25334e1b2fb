//! Llama-family causal language models (Llama, Mistral, Qwen2), and Llama and Qwen2
//! sequence classifiers (reward models), loaded from Hugging Face checkpoint directories and
//! run on the CPU backend.

pub mod config;
pub mod cuda;
pub mod forward;
pub mod graph;
pub mod params;
pub mod weights;

pub use config::{Architecture, Head, ModelConfig};
pub use forward::{LogitRows, Model};
pub use params::ParamLayout;
