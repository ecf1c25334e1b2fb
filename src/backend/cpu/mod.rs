//! CPU implementations of the op set: f32, parallel with rayon, matrix products through the
//! `gemm` crate. Each op file carries its tests against a naive f64 reference.

pub mod adamw;
pub mod attention;
mod attention_tiled;
pub mod embedding;
pub mod glue;
pub mod kv_cache;
pub mod logprobs;
pub mod math;
pub mod matmul;
mod ops;
pub mod residual;
pub mod rmsnorm;
pub mod rope;
pub mod sampling;
pub mod swiglu;

#[cfg(test)]
pub(crate) mod testutil;

pub use ops::Cpu;
