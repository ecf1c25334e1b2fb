//! The model on a CUDA device: its weights in one flat buffer of the storage type T (bf16
//! in production, f32 for the tight parity tests) with `ParamLayout`'s ranges, and the
//! graph over them (`GpuModel::net`), which is the CPU's graph run with `CudaOps`.

use super::config::ModelConfig;
use super::graph::Net;
use super::params::ParamLayout;
use super::Model;
use crate::backend::cuda::{CudaOps, DevBuf, Gpu, Storage};
use crate::backend::ops::Ops;
use crate::backend::rope_table::inv_frequencies;
use anyhow::Result;
use std::sync::Arc;

pub struct GpuModel<T: Storage> {
    pub gpu: Arc<Gpu>,
    pub ops: CudaOps<T>,
    pub config: ModelConfig,
    pub layout: ParamLayout,
    /// (P) the weights the forward reads.
    pub weights: DevBuf<T>,
    inv_freq: Vec<f64>,
}

impl<T: Storage> GpuModel<T> {
    /// Uploads `model`'s weights, converted to T.
    pub fn upload(gpu: Arc<Gpu>, model: &Model) -> Result<Self> {
        let host: Vec<T> = model.params.iter().map(|&x| T::from_f32(x)).collect();
        let ops = CudaOps::new(gpu.clone());
        let weights = ops.upload(&host, "loading the model's weights")?;
        Ok(GpuModel {
            ops,
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

    /// The model's graph on the device.
    pub fn net(&self) -> Net<'_, CudaOps<T>> {
        Net {
            ops: &self.ops,
            config: &self.config,
            layout: &self.layout,
            weights: &self.weights,
            inv_freq: &self.inv_freq,
        }
    }
}
