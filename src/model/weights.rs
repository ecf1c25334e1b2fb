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
            let file = file.as_str().filter(|f| is_plain_file_name(f)).with_context(|| {
                format!("{}: weight_map[\"{name}\"] must name a file in the checkpoint directory, found {file}", index.display())
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

/// A file name with no directory part (shard names must stay inside the checkpoint).
fn is_plain_file_name(name: &str) -> bool {
    let mut parts = Path::new(name).components();
    matches!(
        (parts.next(), parts.next()),
        (Some(std::path::Component::Normal(_)), None)
    )
}

/// One tensor of a safetensors header: (name, dtype, shape).
pub type TensorHeader = (String, String, Vec<usize>);

/// The header of a safetensors file: tensor name -> (dtype, shape), checked against the
/// file's length so a truncated file is caught before any data is read.
fn read_header(file: &Path) -> Result<Vec<TensorHeader>> {
    let f = std::fs::File::open(file)
        .with_context(|| format!("cannot read weights {}", file.display()))?;
    let file_len = f
        .metadata()
        .with_context(|| format!("cannot read weights {}", file.display()))?
        .len();
    parse_header(f, file_len).map_err(|what| {
        anyhow::anyhow!(
            "{}: not a valid safetensors file ({what}); is it truncated?",
            file.display()
        )
    })
}

/// A safetensors header read from the start of a file of `file_len` bytes: each tensor's
/// (name, dtype, shape), or what is wrong. At most 100 MiB of header is read, and every
/// tensor's data must end within the file.
pub fn parse_header(
    mut f: impl std::io::Read,
    file_len: u64,
) -> std::result::Result<Vec<TensorHeader>, &'static str> {
    let mut len_bytes = [0u8; 8];
    f.read_exact(&mut len_bytes).map_err(|_| "no header")?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > 100 << 20 || 8 + header_len > file_len {
        return Err("header length beyond the file");
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header).map_err(|_| "short header")?;
    let value: serde_json::Value =
        serde_json::from_slice(&header).map_err(|_| "header is not JSON")?;
    let map = value.as_object().ok_or("header is not a JSON object")?;
    let mut out = vec![];
    let mut data_end = 0u64;
    for (name, info) in map.iter().filter(|(n, _)| *n != "__metadata__") {
        let dtype = info
            .get("dtype")
            .and_then(|d| d.as_str())
            .ok_or("a tensor without dtype")?;
        let shape: Option<Vec<usize>> = info
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|s| s.iter().map(|d| d.as_u64().map(|d| d as usize)).collect());
        let end = info
            .get("data_offsets")
            .and_then(|o| o.get(1))
            .and_then(|e| e.as_u64());
        let (Some(shape), Some(end)) = (shape, end) else {
            return Err("a tensor without shape or data_offsets");
        };
        data_end = data_end.max(end);
        out.push((name.clone(), dtype.to_string(), shape));
    }
    if (8 + header_len).saturating_add(data_end) > file_len {
        return Err("data ends beyond the file");
    }
    Ok(out)
}

/// Pass 1 of `load_weights`, headers only: the checkpoint's files, and the config's layout
/// and tensor slots, once the headers hold every layer the config names (checked before
/// anything is sized by that count) and every tensor once with its shape and a float
/// dtype. Callers that size anything by the config (a memory estimate) call it first.
#[allow(clippy::type_complexity)]
pub fn check_headers(
    dir: &Path,
    cfg: &ModelConfig,
) -> Result<(Vec<PathBuf>, ParamLayout, HashMap<String, TensorSlot>)> {
    // Pass 1, headers only.
    let files = weight_files(dir)?;
    let headers = files
        .iter()
        .map(|f| Ok((f.clone(), read_header(f)?)))
        .collect::<Result<Vec<_>>>()?;
    check_layer_count(dir, cfg, &headers)?;
    let layout = ParamLayout::new(cfg);
    let slots: HashMap<String, TensorSlot> = layout
        .tensors(cfg)
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect();
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    for (file, tensors) in &headers {
        for (name, dtype, shape) in tensors {
            let Some(slot) = slots.get(name) else {
                continue;
            };
            if let Some(first) = seen.insert(name.clone(), file.clone()) {
                bail!(
                    "tensor {name} is stored twice: in {} and in {}",
                    first.display(),
                    file.display()
                );
            }
            if *shape != slot.shape {
                bail!(
                    "{}: tensor {name} has shape {shape:?}, expected {:?}",
                    file.display(),
                    slot.shape
                );
            }
            if !matches!(dtype.as_str(), "F32" | "BF16" | "F16") {
                bail!(
                    "{}: tensor {name} has dtype {dtype}; expected F32, BF16 or F16",
                    file.display()
                );
            }
        }
    }
    let missing: Vec<&String> = slots.keys().filter(|n| !seen.contains_key(*n)).collect();
    if let Some(first) = missing.iter().min() {
        bail!(
            "{}: weights are missing {} tensor(s), e.g. {first}",
            dir.display(),
            missing.len()
        );
    }
    Ok((files, layout, slots))
}

/// Loads every tensor the config names into a new flat buffer, converting to f32. Returns
/// the config's parameter layout, the buffer and the checkpoint's storage dtype (that of its
/// largest tensors).
///
/// Nothing the config's sizes govern is allocated before the safetensors headers agree with
/// them: first the layer count (so a corrupt `num_hidden_layers` costs nothing), then every
/// tensor's presence, shape and dtype; only then the buffer.
pub fn load_weights(
    dir: &Path,
    cfg: &ModelConfig,
) -> Result<(ParamLayout, Vec<f32>, StorageDtype)> {
    let (files, layout, slots) = check_headers(dir, cfg)?;

    // Pass 2: the data, converted to f32.
    let mut params = vec![0.0f32; layout.len];
    let mut dtype = None;
    for file in files {
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
            if let Some(bad) = params[slot.range.clone()]
                .iter()
                .position(|x| !x.is_finite())
            {
                bail!(
                    "{}: tensor {name} holds a non-finite value at flat index {bad}",
                    file.display()
                );
            }
        }
    }
    Ok((layout, params, dtype.unwrap_or(StorageDtype::F32)))
}

/// The checkpoint's headers, file by file: (name, dtype, shape) of each tensor.
type Headers = [(PathBuf, Vec<TensorHeader>)];

/// An error unless the weights hold every layer 0..num_hidden_layers of the config: asked
/// of the headers' tensor names (`model.layers.N.`), before anything is sized by the count.
fn check_layer_count(dir: &Path, cfg: &ModelConfig, headers: &Headers) -> Result<()> {
    let want = cfg.num_hidden_layers;
    let held: BTreeSet<usize> = headers
        .iter()
        .flat_map(|(_, tensors)| tensors)
        .filter_map(|(name, _, _)| layer_index(name))
        .collect();
    let Some(missing) = (0..want).find(|i| !held.contains(i)) else {
        return Ok(());
    };
    let holds = match (held.first(), held.last()) {
        (Some(first), Some(last)) => format!(
            "{} layer(s), model.layers.{first} to model.layers.{last}",
            held.len()
        ),
        _ => "no layers".to_string(),
    };
    bail!(
        "{}: num_hidden_layers is {want}, but the weights in {} hold {holds} \
         (model.layers.{missing} is missing): the config does not match the checkpoint",
        dir.join("config.json").display(),
        dir.display()
    )
}

/// N of a tensor named `model.layers.N.…`.
fn layer_index(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("model.layers.")?;
    let (index, _) = rest.split_once('.')?;
    index.parse().ok()
}
