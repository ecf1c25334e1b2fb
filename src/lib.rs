//! tpo-engine: a training engine for Thought Preference Optimization.
//!
//! The crate is layered as the README's development section describes: `backend` holds the
//! op set (CPU and CUDA twins behind one `Ops` interface), `model` loads Hugging Face
//! Llama-family checkpoints and holds the one graph that runs them on those ops, `tokenizer`
//! turns chat messages into token ids, `generate` samples K candidates per prompt with
//! continuous batching, `train` updates the policy by DPO or SFT, `engine` is the one place
//! that picks the device, and `tpo` is the loop that ties them together.

pub mod backend;
pub mod chat_compat;
pub mod checkpoint;
pub mod cli;
pub mod engine;
pub mod generate;
pub mod io;
pub mod memory;
pub mod model;
pub mod report;
pub mod tiny;
pub mod tokenizer;
pub mod tpo;
pub mod train;
