//! Llama-family causal language models (Llama, Mistral, Qwen2) loaded from Hugging Face
//! checkpoint directories and run on the CPU backend.

pub mod config;
pub mod forward;
pub mod kv_cache;
pub mod params;
pub mod training;
pub mod weights;

pub use config::{Architecture, ModelConfig};
pub use forward::{LogitRows, Model};
pub use kv_cache::KvCache;
pub use params::ParamLayout;
