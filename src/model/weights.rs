//! Reading model weights from safetensors files (one file, or shards through an index)
//! into the flat f32 parameter buffer.

use super::config::ModelConfig;
use super::params::{ParamLayout, TensorSlot};
use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// The storage type of a checkpoint's floating-point tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageDtype {
    F32,
    Bf16,
    F16,
}

impl StorageDtype {
    pub fn safetensors(self) -> Dtype {
        match self {
            StorageDtype::F32 => Dtype::F32,
            StorageDtype::Bf16 => Dtype::BF16,
            StorageDtype::F16 => Dtype::F16,
        }
    }

    /// The name transformers writes as `torch_dtype` / `dtype` in config.json.
    pub fn torch_name(self) -> &'static str {
        match self {
            StorageDtype::F32 => "float32",
            StorageDtype::Bf16 => "bfloat16",
            StorageDtype::F16 => "float16",
        }
    }

    pub fn parse(s: &str) -> Option<StorageDtype> {
        match s {
            "f32" | "float32" => Some(StorageDtype::F32),
            "bf16" | "bfloat16" => Some(StorageDtype::Bf16),
            "f16" | "float16" => Some(StorageDtype::F16),
            _ => None,
        }
    }
}

/// The safetensors files of a checkpoint directory.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index)
            .with_context(|| format!("cannot read {}", index.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", index.display()))?;
        let map = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .with_context(|| format!("{}: missing object `weight_map`", index.display()))?;
        let mut files = BTreeSet::new();
        for (name, file) in map {
            let file = file.as_str().with_context(|| {
                format!(
                    "{}: weight_map[\"{name}\"] is not a file name",
                    index.display()
                )
            })?;
            files.insert(dir.join(file));
        }
        return Ok(files.into_iter().collect());
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    bail!(
        "{}: no weights (expected model.safetensors or model.safetensors.index.json)",
        dir.display()
    )
}

/// Loads every tensor of `layout` into a new flat buffer, converting to f32. Returns the
/// buffer and the checkpoint's storage dtype (that of its largest tensors).
pub fn load_weights(
    dir: &Path,
    cfg: &ModelConfig,
    layout: &ParamLayout,
) -> Result<(Vec<f32>, StorageDtype)> {
    let slots: HashMap<String, TensorSlot> = layout
        .tensors(cfg)
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect();
    let mut params = vec![0.0f32; layout.len];
    let mut filled: BTreeSet<String> = BTreeSet::new();
    let mut dtype = None;
    for file in weight_files(dir)? {
        let bytes = std::fs::read(&file)
            .with_context(|| format!("cannot read weights {}", file.display()))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| {
            anyhow::anyhow!(
                "{}: not a valid safetensors file ({e:?}); is it truncated?",
                file.display()
            )
        })?;
        for (name, view) in st.tensors() {
            let Some(slot) = slots.get(&name) else {
                continue; // e.g. lm_head.weight of a tied checkpoint, rotary inv_freq buffers
            };
            if view.shape() != slot.shape.as_slice() {
                bail!(
                    "{}: tensor {name} has shape {:?}, expected {:?}",
                    file.display(),
                    view.shape(),
                    slot.shape
                );
            }
            let dst = &mut params[slot.range.clone()];
            let data = view.data();
            let this = match view.dtype() {
                Dtype::F32 => {
                    for (d, b) in dst.iter_mut().zip(data.chunks_exact(4)) {
                        *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    }
                    StorageDtype::F32
                }
                Dtype::BF16 => {
                    for (d, b) in dst.iter_mut().zip(data.chunks_exact(2)) {
                        *d = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
                    }
                    StorageDtype::Bf16
                }
                Dtype::F16 => {
                    for (d, b) in dst.iter_mut().zip(data.chunks_exact(2)) {
                        *d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
                    }
                    StorageDtype::F16
                }
                other => bail!(
                    "{}: tensor {name} has dtype {other:?}; expected F32, BF16 or F16",
                    file.display()
                ),
            };
            if slot.shape.len() == 2 {
                dtype = Some(this);
            }
            filled.insert(name);
        }
    }
    let missing: Vec<&String> = slots.keys().filter(|n| !filled.contains(*n)).collect();
    if let Some(first) = missing.iter().min() {
        bail!(
            "{}: weights are missing {} tensor(s), e.g. {first}",
            dir.display(),
            missing.len()
        );
    }
    if let Some(bad) = params.iter().position(|x| !x.is_finite()) {
        bail!(
            "{}: weights hold a non-finite value (flat index {bad})",
            dir.display()
        );
    }
    Ok((params, dtype.unwrap_or(StorageDtype::F32)))
}
