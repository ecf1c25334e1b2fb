//! Writing model weights as a Hugging Face safetensors file in a chosen storage dtype.

use crate::model::weights::StorageDtype;
use crate::model::{ModelConfig, ParamLayout};
use anyhow::{anyhow, Result};
use safetensors::tensor::View;
use safetensors::Dtype;
use std::borrow::Cow;
use std::path::Path;

/// One tensor's bytes, already converted to the storage dtype.
struct Stored {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &Stored {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn encode(values: &[f32], dtype: StorageDtype) -> Vec<u8> {
    match dtype {
        StorageDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        StorageDtype::Bf16 => values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
        StorageDtype::F16 => values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
    }
}

/// Writes every tensor of the layout to `path` (model.safetensors), with transformers'
/// names and the "pt" format tag transformers expects.
pub fn save_safetensors(
    path: &Path,
    cfg: &ModelConfig,
    layout: &ParamLayout,
    params: &[f32],
    dtype: StorageDtype,
) -> Result<()> {
    let stored: Vec<(String, Stored)> = layout
        .tensors(cfg)
        .into_iter()
        .map(|t| {
            let bytes = encode(&params[t.range], dtype);
            (
                t.name,
                Stored {
                    dtype: dtype.safetensors(),
                    shape: t.shape,
                    bytes,
                },
            )
        })
        .collect();
    let metadata = Some(
        [("format".to_string(), "pt".to_string())]
            .into_iter()
            .collect(),
    );
    let bytes = safetensors::serialize(stored.iter().map(|(n, s)| (n.as_str(), s)), metadata)
        .map_err(|e| anyhow!("cannot serialize {}: {e:?}", path.display()))?;
    crate::io::write_atomic(path, &bytes)
}
