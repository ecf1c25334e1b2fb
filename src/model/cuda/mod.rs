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
use crate::backend::cuda::{Bias, Columns, Gpu, Storage};
use crate::backend::rope_table::{inv_frequencies, RopeTable};
use crate::backend::settings::AttentionDims;
use crate::model::params::LayerParams;
use anyhow::Result;
use cudarc::driver::{CudaSlice, CudaView};
use std::ops::Range;
use std::sync::Arc;

pub struct GpuModel<T: Storage> {
    pub gpu: Arc<Gpu>,
    pub config: ModelConfig,
    pub layout: ParamLayout,
    /// (P) the weights the forward reads.
    pub weights: CudaSlice<T>,
    inv_freq: Vec<f64>,
}

impl<T: Storage> GpuModel<T> {
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

    /// The inputs of a layer's attention over n rows: h = input_layernorm(x), then q, k, v
    /// from the fused projection of h (qkv: its (N, (H + 2 Hkv) * D) scratch), q and k
    /// rotated by the tables cos, sin: (N, D/2).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attention_inputs(
        &self,
        w: &LayerParams,
        x: &CudaSlice<T>,
        h: &mut CudaSlice<T>,
        qkv: &mut CudaSlice<T>,
        (q, k, v): (&mut CudaSlice<T>, &mut CudaSlice<T>, &mut CudaSlice<T>),
        (cos, sin): (&CudaSlice<f32>, &CudaSlice<f32>),
        n: usize,
    ) -> Result<()> {
        let gpu: &Gpu = &self.gpu;
        let cfg = &self.config;
        let c = cfg.hidden_size;
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let qkv_dim = qd + 2 * kvd;
        let dims = self.attention_dims();
        let at = |stride, offset| Columns { stride, offset };
        gpu.rmsnorm_forward(h, x, &self.w(&w.input_layernorm), cfg.rms_norm_eps, n, c)?;
        let bias = w.qkv_bias().map(|r| self.w(&r));
        gpu.matmul_forward(
            qkv,
            &*h,
            &self.w(&w.qkv_proj()),
            bias.as_ref().map(|b| b as &dyn Bias<T>),
            n,
            c,
            qkv_dim,
        )?;
        gpu.copy_columns((q, at(qd, 0)), (&*qkv, at(qkv_dim, 0)), n, qd)?;
        gpu.copy_columns((k, at(kvd, 0)), (&*qkv, at(qkv_dim, qd)), n, kvd)?;
        gpu.copy_columns((v, at(kvd, 0)), (&*qkv, at(qkv_dim, qd + kvd)), n, kvd)?;
        let half = cfg.head_dim / 2;
        gpu.rope(q, cos, sin, dims.n_head, half, 1.0)?;
        gpu.rope(k, cos, sin, dims.n_kv_head, half, 1.0)
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
