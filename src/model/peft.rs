//! LoRA adapters on disk in PEFT's format, so PEFT, transformers and vLLM read ours and we
//! read theirs: `adapter_config.json` and `adapter_model.safetensors`, whose tensors are
//! named `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight` (A: (r, in)) and
//! `...lora_B.weight` (B: (out, r)). Written whole (a temporary directory, then a rename).
//!
//! Read: `peft_type` LORA, `r`, `lora_alpha`, `use_rslora`, `lora_dropout`, and
//! `target_modules` as a list of module names or "all-linear". What this engine cannot
//! apply is refused by name rather than ignored: DoRA, per-module ranks or alphas, a subset
//! of layers, biases, `modules_to_save`, a regex of targets.

use super::config::ModelConfig;
use super::lora::{Adapter, LoraConfig, LoraLayout, Target};
use anyhow::{anyhow, bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};
use std::path::Path;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// A tensor's PEFT name: `which` is "lora_A" or "lora_B".
pub fn tensor_name(layer: usize, target: Target, which: &str) -> String {
    format!(
        "base_model.model.model.layers.{layer}.{}.{which}.weight",
        target.path()
    )
}

/// adapter_config.json's fields, as PEFT writes them for a LoRA of a causal LM.
pub fn config_json(lora: &LoraConfig, base_model: &str) -> Value {
    // PEFT's own files hold a whole alpha as an integer.
    let alpha = match lora.alpha.fract() == 0.0 && lora.alpha.abs() < 1e15 {
        true => json!(lora.alpha as i64),
        false => json!(lora.alpha),
    };
    json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": lora.r,
        "lora_alpha": alpha,
        "use_rslora": lora.rslora,
        "lora_dropout": lora.dropout,
        "target_modules": lora.targets.iter().map(|t| t.name()).collect::<Vec<_>>(),
        "bias": "none",
        "base_model_name_or_path": base_model,
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "modules_to_save": null,
        "layers_to_transform": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_dora": false,
    })
}

/// Writes `adapter` as the directory `dir` (which must not exist).
pub fn save(dir: &Path, adapter: &Adapter, base_model: &str) -> Result<()> {
    let config = serde_json::to_string_pretty(&config_json(&adapter.config, base_model))? + "\n";
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = adapter
        .layout
        .linears
        .iter()
        .flat_map(|l| {
            let r = adapter.config.r;
            [
                ("lora_A", vec![r, l.in_dim], l.a.clone()),
                ("lora_B", vec![l.out_dim, r], l.b.clone()),
            ]
            .map(|(which, shape, range)| {
                let bytes = adapter.params[range]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect();
                (tensor_name(l.layer, l.target, which), shape, bytes)
            })
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| anyhow!("tensor {name}: {e:?}"))
        })
        .collect::<Result<_>>()?;
    let metadata = Some(
        [("format".to_string(), "pt".to_string())]
            .into_iter()
            .collect(),
    );
    let weights = safetensors::serialize(views, metadata)
        .map_err(|e| anyhow!("cannot serialize the adapter for {}: {e:?}", dir.display()))?;
    crate::io::create_dir_atomic(dir, |tmp| {
        crate::io::write_atomic(&tmp.join(CONFIG_FILE), config.as_bytes())?;
        crate::io::write_atomic(&tmp.join(WEIGHTS_FILE), &weights)
    })
}

/// Reads the adapter a `--adapter` flag names (a directory, or a Hub id in the Hugging Face
/// cache) for a model of `cfg`: to be merged once the weights are loaded.
pub fn load_flag(flag: &Path, cfg: &ModelConfig) -> Result<Adapter> {
    let dir = crate::io::hub::resolve_flag("--adapter", flag)?;
    load(&dir, cfg).with_context(|| format!("--adapter {}", flag.display()))
}

/// The adapter in `dir` (ours or PEFT's) for a model of `cfg`.
pub fn load(dir: &Path, cfg: &ModelConfig) -> Result<Adapter> {
    let config_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).with_context(|| {
        format!(
            "cannot read {}: an adapter directory holds {CONFIG_FILE} and {WEIGHTS_FILE}",
            config_path.display()
        )
    })?;
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not JSON", config_path.display()))?;
    let lora = read_config(&v).with_context(|| format!("{}", config_path.display()))?;
    let layout = LoraLayout::new(cfg, &lora);
    let weights_path = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&weights_path)
        .with_context(|| format!("cannot read {}", weights_path.display()))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        anyhow!(
            "{}: not a valid safetensors file ({e:?}); is it truncated?",
            weights_path.display()
        )
    })?;
    let mut params = vec![0.0f32; layout.len];
    let mut wanted = 0;
    for l in &layout.linears {
        for (which, shape, range) in [
            ("lora_A", [lora.r, l.in_dim], l.a.clone()),
            ("lora_B", [l.out_dim, lora.r], l.b.clone()),
        ] {
            let name = tensor_name(l.layer, l.target, which);
            let view = st.tensor(&name).map_err(|_| {
                anyhow!(
                    "{}: no tensor {name} (the config targets {} in every layer)",
                    weights_path.display(),
                    l.target.name()
                )
            })?;
            if view.shape() != shape {
                bail!(
                    "{}: tensor {name} has shape {:?}, expected {shape:?} (r {} for a model of this config)",
                    weights_path.display(),
                    view.shape(),
                    lora.r
                );
            }
            let dst = &mut params[range];
            let data = view.data();
            match view.dtype() {
                Dtype::F32 => {
                    for (d, b) in dst.iter_mut().zip(data.chunks_exact(4)) {
                        *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    }
                }
                Dtype::BF16 => {
                    for (d, b) in dst.iter_mut().zip(data.chunks_exact(2)) {
                        *d = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
                    }
                }
                Dtype::F16 => {
                    for (d, b) in dst.iter_mut().zip(data.chunks_exact(2)) {
                        *d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
                    }
                }
                other => bail!(
                    "{}: tensor {name} has dtype {other:?}; expected F32, BF16 or F16",
                    weights_path.display()
                ),
            }
            if let Some(bad) = dst.iter().position(|x| !x.is_finite()) {
                bail!(
                    "{}: tensor {name} holds a non-finite value at flat index {bad}",
                    weights_path.display()
                );
            }
            wanted += 1;
        }
    }
    let held = st.names().len();
    if held != wanted {
        let extra = st
            .names()
            .into_iter()
            .find(|n| {
                !layout.linears.iter().any(|l| {
                    ["lora_A", "lora_B"]
                        .iter()
                        .any(|w| tensor_name(l.layer, l.target, w) == *n)
                })
            })
            .map(str::to_string)
            .unwrap_or_default();
        bail!(
            "{}: holds {held} tensors, the config names {wanted}; {extra} is not one of them (a model with other layers, or targets the config does not list)",
            weights_path.display()
        );
    }
    Ok(Adapter {
        config: lora,
        layout,
        params,
    })
}

/// The LoRA config of an adapter_config.json, refusing what cannot be applied.
fn read_config(v: &Value) -> Result<LoraConfig> {
    let peft_type = v["peft_type"].as_str().unwrap_or("(none)");
    if peft_type != "LORA" {
        bail!("peft_type is {peft_type}; only LORA adapters are read");
    }
    let r = v["r"]
        .as_u64()
        .context("\"r\" is missing or not a whole number")? as usize;
    let alpha = match &v["lora_alpha"] {
        Value::Null => 8.0, // PEFT's default
        a => a.as_f64().context("\"lora_alpha\" is not a number")?,
    };
    let dropout = v["lora_dropout"].as_f64().unwrap_or(0.0);
    let rslora = v["use_rslora"].as_bool().unwrap_or(false);
    let refuse = |key: &str, ok: bool, what: &str| -> Result<()> {
        if ok {
            Ok(())
        } else {
            bail!("{key} is {}: {what} is not supported", v[key])
        }
    };
    refuse(
        "use_dora",
        !v["use_dora"].as_bool().unwrap_or(false),
        "DoRA",
    )?;
    let bias = v["bias"].as_str().unwrap_or("none");
    refuse("bias", bias == "none", "training biases")?;
    refuse(
        "fan_in_fan_out",
        !v["fan_in_fan_out"].as_bool().unwrap_or(false),
        "a transposed (Conv1D) layout",
    )?;
    for (key, what) in [
        ("rank_pattern", "a rank per module"),
        ("alpha_pattern", "an alpha per module"),
    ] {
        refuse(key, v[key].as_object().is_none_or(|m| m.is_empty()), what)?;
    }
    refuse(
        "lora_bias",
        !v["lora_bias"].as_bool().unwrap_or(false),
        "a bias in lora_B",
    )?;
    for (key, what) in [
        ("layers_to_transform", "adapting some layers only"),
        ("modules_to_save", "fully trained extra modules"),
        ("exclude_modules", "excluding modules"),
        ("layer_replication", "replicated layers"),
        ("target_parameters", "adapting parameters directly"),
        ("trainable_token_indices", "trainable token embeddings"),
    ] {
        refuse(key, v[key].is_null(), what)?;
    }
    let targets = match &v["target_modules"] {
        Value::String(s) if s == "all-linear" => Target::ALL.to_vec(),
        Value::String(s) => {
            bail!("target_modules is the pattern {s:?}; give a list of module names (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj) or \"all-linear\"")
        }
        Value::Array(names) => names
            .iter()
            .map(|n| {
                let name = n.as_str().unwrap_or_default();
                Target::parse(name).with_context(|| {
                    format!("target_modules names {n}, which is not a Linear of a Llama decoder layer (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)")
                })
            })
            .collect::<Result<_>>()?,
        other => bail!("target_modules is {other}: expected a list of module names"),
    };
    LoraConfig::new(r, alpha, rslora, dropout, targets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::lora::tests::tiny;

    #[test]
    fn an_adapter_comes_back_as_it_was_saved_under_pefts_names() {
        let cfg = tiny();
        let lora = LoraConfig::new(2, 16.0, true, 0.05, vec![Target::Q, Target::Up]).unwrap();
        let mut adapter = Adapter::init(&cfg, lora, 3);
        for (i, x) in adapter.params.iter_mut().enumerate() {
            *x += i as f32 * 1e-3;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("adapter");
        save(&dir, &adapter, "org/base").unwrap();
        let back = load(&dir, &cfg).unwrap();
        assert_eq!(back.config, adapter.config);
        assert_eq!(back.layout, adapter.layout);
        assert_eq!(back.params, adapter.params);
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(CONFIG_FILE)).unwrap()).unwrap();
        assert_eq!(v["peft_type"], "LORA");
        assert_eq!(v["task_type"], "CAUSAL_LM");
        assert_eq!(v["target_modules"], json!(["q_proj", "up_proj"]));
        assert_eq!(v["base_model_name_or_path"], "org/base");
        let bytes = std::fs::read(dir.join(WEIGHTS_FILE)).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let a = st
            .tensor("base_model.model.model.layers.1.mlp.up_proj.lora_A.weight")
            .unwrap();
        assert_eq!(a.shape(), [2, 8]);
        let b = st
            .tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight")
            .unwrap();
        assert_eq!(b.shape(), [8, 2]);
        assert_eq!(st.names().len(), 8);
        // The directory exists now: a second save is refused, the first left as it was.
        assert!(save(&dir, &adapter, "org/base").is_err());
        assert_eq!(load(&dir, &cfg).unwrap().params, adapter.params);
    }

    #[test]
    fn what_cannot_be_applied_is_refused_by_name() {
        let base = config_json(
            &LoraConfig::new(2, 4.0, false, 0.0, vec![Target::Q]).unwrap(),
            "b",
        );
        let with = |key: &str, value: Value| {
            let mut v = base.clone();
            v[key] = value;
            read_config(&v).map_err(|e| e.to_string())
        };
        assert!(with("r", json!(2)).is_ok());
        assert_eq!(
            with("target_modules", json!("all-linear")).unwrap().targets,
            Target::ALL.to_vec()
        );
        for (key, value, needle) in [
            ("peft_type", json!("IA3"), "only LORA"),
            ("use_dora", json!(true), "DoRA"),
            ("bias", json!("all"), "biases"),
            ("rank_pattern", json!({"q_proj": 4}), "rank per module"),
            ("layers_to_transform", json!([0]), "some layers"),
            ("modules_to_save", json!(["lm_head"]), "extra modules"),
            ("lora_bias", json!(true), "bias in lora_B"),
            ("exclude_modules", json!(["q_proj"]), "excluding"),
            ("target_modules", json!(".*proj"), "pattern"),
            ("target_modules", json!(["q_proj", "lm_head"]), "lm_head"),
            ("r", json!(0), "rank 0"),
            ("r", json!("eight"), "\"r\""),
        ] {
            let e = with(key, value).unwrap_err();
            assert!(e.contains(needle), "{key}: {e}");
        }
    }

    #[test]
    fn a_missing_or_misshapen_tensor_names_the_file_and_tensor() {
        let cfg = tiny();
        let lora = LoraConfig::new(2, 4.0, false, 0.0, vec![Target::Q]).unwrap();
        let adapter = Adapter::init(&cfg, lora, 1);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a");
        save(&dir, &adapter, "b").unwrap();
        // Another rank in the config than in the tensors.
        let cfg_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&cfg_path)
            .unwrap()
            .replace("\"r\": 2", "\"r\": 4");
        std::fs::write(&cfg_path, text).unwrap();
        let e = load(&dir, &cfg).unwrap_err().to_string();
        assert!(
            e.contains(WEIGHTS_FILE) && e.contains("lora_A") && e.contains("shape"),
            "{e}"
        );
        // A model with more layers than the adapter holds.
        let text = std::fs::read_to_string(&cfg_path)
            .unwrap()
            .replace("\"r\": 4", "\"r\": 2");
        std::fs::write(&cfg_path, text).unwrap();
        let mut deeper = tiny();
        deeper.num_hidden_layers = 3;
        let e = load(&dir, &deeper).unwrap_err().to_string();
        assert!(e.contains("layers.2.self_attn.q_proj.lora_A"), "{e}");
        // A model with fewer: the adapter's extra tensors are named.
        let mut shallower = tiny();
        shallower.num_hidden_layers = 1;
        let e = load(&dir, &shallower).unwrap_err().to_string();
        assert!(e.contains("layers.1."), "{e}");
        std::fs::remove_file(dir.join(WEIGHTS_FILE)).unwrap();
        let e = load(&dir, &cfg).unwrap_err().to_string();
        assert!(e.contains("cannot read") && e.contains(WEIGHTS_FILE), "{e}");
    }
}
