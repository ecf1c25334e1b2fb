//! The model on a CUDA device: `ModelOn` with the CUDA op set, its weights in the storage
//! type T (bf16 in production, f32 for the tight parity tests).

use super::graph::ModelOn;
use super::Model;
use crate::backend::cuda::{CudaOps, Gpu, Storage};
use anyhow::Result;
use std::sync::Arc;

pub type GpuModel<T> = ModelOn<CudaOps<T>>;

impl<T: Storage> ModelOn<CudaOps<T>> {
    /// Uploads `model`'s weights to `gpu`, converted to T.
    pub fn upload(gpu: Arc<Gpu>, model: &Model) -> Result<Self> {
        ModelOn::new(CudaOps::new(gpu), model)
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.ops.gpu
    }
}
