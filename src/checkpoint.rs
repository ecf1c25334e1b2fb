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

/// The tensor's bytes in `dtype`; None when a value does not fit (beyond f16's 65504).
fn encode(values: &[f32], dtype: StorageDtype) -> Option<Vec<u8>> {
    match dtype {
        StorageDtype::F32 => Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        StorageDtype::Bf16 => values
            .iter()
            .map(|v| half::bf16::from_f32(*v))
            .map(|h| h.is_finite().then(|| h.to_le_bytes()))
            .collect::<Option<Vec<_>>>()
            .map(|b| b.concat()),
        StorageDtype::F16 => values
            .iter()
            .map(|v| half::f16::from_f32(*v))
            .map(|h| h.is_finite().then(|| h.to_le_bytes()))
            .collect::<Option<Vec<_>>>()
            .map(|b| b.concat()),
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
            let bytes = encode(&params[t.range], dtype).with_context(|| {
                format!(
                    "cannot write {}: tensor {} holds a value that {} cannot store",
                    path.display(),
                    t.name,
                    dtype.torch_name()
                )
            })?;
            Ok((
                t.name,
                Stored {
                    dtype: dtype.safetensors(),
                    shape: t.shape,
                    bytes,
                },
            ))
        })
        .collect::<Result<_>>()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_beyond_the_storage_dtype_is_an_error_naming_the_tensor_and_nothing_is_left() {
        let cfg = ModelConfig::from_json(&serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "hidden_size": 8, "intermediate_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
            "vocab_size": 4,
        }))
        .unwrap();
        let layout = ParamLayout::new(&cfg);
        let mut params = vec![0.5f32; layout.len];
        params[layout.norm.start] = 1e6;
        let tmp = tempfile::TempDir::new().unwrap();
        let path = tmp.path().join("model.safetensors");
        for dtype in [StorageDtype::F32, StorageDtype::Bf16] {
            save_safetensors(&path, &cfg, &layout, &params, dtype).unwrap();
        }
        std::fs::remove_file(&path).unwrap();
        let err = save_safetensors(&path, &cfg, &layout, &params, StorageDtype::F16)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model.norm.weight") && err.contains("float16"),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
