//! A model's weights on the device of an op set, in its storage type: what the graph runs
//! on a device other than the host's f32 copy (`Model`).

use super::Net;
use crate::backend::ops::Ops;
use crate::backend::rope_table::inv_frequencies;
use crate::backend::storage::Storage;
use crate::model::config::ModelConfig;
use crate::model::params::ParamLayout;
use crate::model::Model;
use anyhow::Result;

pub struct ModelOn<O: Ops> {
    pub ops: O,
    pub config: ModelConfig,
    pub layout: ParamLayout,
    /// (P) the weights the forward reads.
    pub weights: O::Buf<O::S>,
    inv_freq: Vec<f64>,
}

impl<O: Ops> ModelOn<O> {
    /// Copies `model`'s weights to the device of `ops`, converted to its storage type.
    pub fn new(ops: O, model: &Model) -> Result<Self> {
        let host: Vec<O::S> = model.params.iter().map(|&x| O::S::from_f32(x)).collect();
        let weights = ops.upload(&host, "loading the model's weights")?;
        Ok(ModelOn {
            ops,
            config: model.config.clone(),
            layout: model.layout.clone(),
            inv_freq: inv_frequencies(
                model.config.head_dim,
                model.config.rope_theta,
                &model.config.rope_scaling,
            ),
            weights,
        })
    }

    /// The model's graph on the device.
    pub fn net(&self) -> Net<'_, O> {
        Net {
            ops: &self.ops,
            config: &self.config,
            layout: &self.layout,
            weights: &self.weights,
            inv_freq: &self.inv_freq,
            lora: None,
        }
    }
}
