//! tpo-engine: a training engine for Thought Preference Optimization.
//!
//! The crate is layered as `../shared/DESIGN.md` describes: `backend` holds the narrow op set,
//! `model` loads Hugging Face Llama-family checkpoints and runs them on those ops, `tokenizer`
//! turns chat messages into token ids, `generate` samples K candidates per prompt with
//! continuous batching, and `train` updates the policy by DPO or SFT.

pub mod backend;
pub mod checkpoint;
pub mod cli;
pub mod engine;
pub mod generate;
pub mod io;
pub mod model;
pub mod tiny;
pub mod tokenizer;
pub mod tpo;
pub mod train;
