//! Writing model weights as a Hugging Face safetensors file in a chosen storage dtype.

use crate::model::weights::StorageDtype;
use crate::model::{Model, ModelConfig, ParamLayout};
use anyhow::{anyhow, Context, Result};
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

/// Files of a checkpoint directory besides the weights, copied verbatim into checkpoints we
/// write (the config keeps its dtype because the weights keep theirs).
const COPIED_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

/// Writes `model` as a Hugging Face checkpoint directory at `dir` (which must not exist):
/// model.safetensors in the model's storage dtype, plus the config, tokenizer and
/// generation files of `source`, the directory it was loaded from. Atomic: the files are
/// written to a temporary directory that is then renamed, so a crash leaves no half.
pub fn save_checkpoint(dir: &Path, source: &Path, model: &Model) -> Result<()> {
    crate::io::create_dir_atomic(dir, |tmp| {
        for name in COPIED_FILES {
            let from = source.join(name);
            if from.exists() {
                let bytes = std::fs::read(&from)
                    .with_context(|| format!("cannot read {}", from.display()))?;
                crate::io::write_atomic(&tmp.join(name), &bytes)?;
            }
        }
        save_safetensors(
            &tmp.join("model.safetensors"),
            &model.config,
            &model.layout,
            &model.params,
            model.dtype,
        )
    })
}
