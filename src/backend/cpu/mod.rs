//! CPU implementations of the op set: f32, parallel with rayon, matrix products through the
//! `gemm` crate. Each op file carries its tests against a naive f64 reference. Ops check
//! their shapes up front and return errors, never panic, in the words of their CUDA twins.

pub mod adamw;
pub mod attention;
mod attention_row_avx512;
mod attention_rows;
mod attention_tiled;
pub mod bf16;
pub mod block_products;
pub mod dropout;
pub mod embedding;
pub mod glue;
pub mod kv_cache;
pub mod logprobs;
pub mod math;
pub mod matmul;
pub mod matmul_bf16;
mod ops;
pub mod packed_f32;
pub mod packed_weights;
pub mod products;
pub mod residual;
pub mod rmsnorm;
pub mod rope;
pub mod sampling;
pub mod swiglu;

#[cfg(test)]
pub(crate) mod testutil;

pub use ops::Cpu;
pub use products::Products;

use anyhow::{bail, Result};

/// An error naming `op` unless every length in `lens` is n.
pub(crate) fn check_lens(op: &str, lens: &[usize], n: usize) -> Result<()> {
    if let Some(len) = lens.iter().find(|&&l| l != n) {
        bail!("{op}: a buffer of {len} elements, expected {n}");
    }
    Ok(())
}

/// An error naming `op` unless every length in `lens` is n rows of c, c > 0.
pub(crate) fn check_rows(op: &str, lens: &[usize], n: usize, c: usize) -> Result<()> {
    if c == 0 {
        bail!("{op}: rows of 0 elements");
    }
    if let Some(len) = lens.iter().find(|&&l| l != n * c) {
        bail!("{op}: a buffer of {len} elements, expected {n} x {c}");
    }
    Ok(())
}
