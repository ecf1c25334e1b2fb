//! The model on a CUDA device: the same graph as `model::forward` and `model::training`,
//! over device buffers. Weights live in one flat buffer of the storage type T (bf16 in
//! production, f32 for the tight parity tests) with `ParamLayout`'s ranges; training adds
//! the f32 master copy, gradients and AdamW state (`train::gpu`).
//!
//! Shape letters as in `backend`: N rows, C width, H/Hkv heads, D head dim, I MLP width,
//! V vocabulary, M scored rows, S sequences.

pub mod classify;
pub mod decode;
pub mod training;

use super::config::ModelConfig;
use super::params::ParamLayout;
use super::Model;
use crate::backend::cpu::attention::AttentionDims;
use crate::backend::cpu::rope::{inv_frequencies, RopeTable};
use crate::backend::cuda::{Gpu, Storage};
use anyhow::Result;
use cudarc::driver::{CudaSlice, CudaView};
use std::ops::Range;
use std::sync::Arc;

/// A storage type the model can run in: converts to and from the host's f32.
pub trait ModelStorage: Storage {
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
}
impl ModelStorage for f32 {
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
}
impl ModelStorage for half::bf16 {
    fn from_f32(x: f32) -> Self {
        half::bf16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
}

pub struct GpuModel<T: ModelStorage> {
    pub gpu: Arc<Gpu>,
    pub config: ModelConfig,
    pub layout: ParamLayout,
    /// (P) the weights the forward reads.
    pub weights: CudaSlice<T>,
    inv_freq: Vec<f64>,
}

impl<T: ModelStorage> GpuModel<T> {
    /// Uploads `model`'s weights, converted to T.
    pub fn upload(gpu: Arc<Gpu>, model: &Model) -> Result<Self> {
        let host: Vec<T> = model.params.iter().map(|&x| T::from_f32(x)).collect();
        let mut weights = gpu.alloc::<T>(host.len(), "loading the model's weights")?;
        gpu.stream.memcpy_htod(&host, &mut weights)?;
        Ok(GpuModel {
            config: model.config.clone(),
            layout: model.layout.clone(),
            inv_freq: inv_frequencies(
                model.config.head_dim,
                model.config.rope_theta,
                &model.config.rope_scaling,
            ),
            weights,
            gpu,
        })
    }

    /// A view of one tensor of the weights.
    pub(crate) fn w(&self, range: &Range<usize>) -> CudaView<'_, T> {
        self.weights.slice(range.clone())
    }

    pub(crate) fn attention_dims(&self) -> AttentionDims {
        AttentionDims {
            n_head: self.config.num_attention_heads,
            n_kv_head: self.config.num_key_value_heads,
            head_dim: self.config.head_dim,
        }
    }

    /// The rotary tables of `positions` on the device: cos, sin, each (N, D/2).
    pub(crate) fn rope_tables(
        &self,
        positions: &[usize],
    ) -> Result<(CudaSlice<f32>, CudaSlice<f32>)> {
        let table = RopeTable::for_positions(&self.inv_freq, positions);
        let s = &self.gpu.stream;
        Ok((s.clone_htod(&table.cos)?, s.clone_htod(&table.sin)?))
    }
}

/// Copies f32 values from the device into a host slice of the same length.
pub fn download_f32(gpu: &Gpu, src: &CudaSlice<f32>, dst: &mut [f32]) -> Result<()> {
    gpu.stream.memcpy_dtoh(src, dst)?;
    Ok(())
}
