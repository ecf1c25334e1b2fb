//! config.json of LlamaForCausalLM, MistralForCausalLM and Qwen2ForCausalLM, and of the
//! reward models LlamaForSequenceClassification and Qwen2ForSequenceClassification.

use crate::backend::rope_table::RopeScaling;
use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
}

impl Architecture {
    /// The class name transformers writes in `architectures`.
    pub fn class_name(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Mistral => "MistralForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
        }
    }
}

/// What sits on the decoder's final norm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// `...ForCausalLM`: the LM head, lm_head.weight (V, C) or the tied embeddings.
    CausalLm,
    /// `...ForSequenceClassification`: score.weight (num_labels, C), no bias, read at the last
    /// token that is not pad_token_id. A reward model has one label.
    SequenceClassification { num_labels: usize },
}

/// The hyper-parameters of a model, with the defaults transformers applies.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub head: Head,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (always in Qwen2; `attention_bias` in Llama).
    pub attention_bias: bool,
    /// The longest sequence the model attends over (the sliding window, where smaller).
    pub max_context: usize,
    /// eos_token_id of config.json (an int or a list), used when generation_config.json has none.
    pub eos_token_ids: Vec<u32>,
    /// pad_token_id of a sequence classifier's config.json: it reads its score at the last
    /// token that is not this one. None for a causal LM.
    pub pad_token_id: Option<u32>,
}

impl ModelConfig {
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// The class name transformers writes in `architectures`.
    pub fn class_name(&self) -> &'static str {
        match (self.head, self.architecture) {
            (Head::CausalLm, arch) => arch.class_name(),
            (Head::SequenceClassification { .. }, Architecture::Llama) => {
                "LlamaForSequenceClassification"
            }
            (Head::SequenceClassification { .. }, Architecture::Mistral) => {
                "MistralForSequenceClassification"
            }
            (Head::SequenceClassification { .. }, Architecture::Qwen2) => {
                "Qwen2ForSequenceClassification"
            }
        }
    }

    pub fn load(path: &Path) -> Result<ModelConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read model config {}", path.display()))?;
        let value: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", path.display()))?;
        ModelConfig::from_json(&value)
            .with_context(|| format!("{}: invalid model config", path.display()))
    }

    pub fn from_json(value: &Value) -> Result<ModelConfig> {
        let obj = value.as_object().context("expected a JSON object")?;
        let (architecture, head) = architecture(obj)?;
        let usize_field = |name: &str| -> Result<Option<usize>> {
            match obj.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => match v.as_u64() {
                    Some(n) if n > 0 => Ok(Some(n as usize)),
                    _ => bail!("field `{name}`: expected a positive integer, found {v}"),
                },
            }
        };
        let required = |name: &str| -> Result<usize> {
            usize_field(name)?.with_context(|| format!("missing field `{name}`"))
        };
        let float_field = |o: &Map<String, Value>, name: &str| -> Result<Option<f64>> {
            match o.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_f64()
                    .map(Some)
                    .with_context(|| format!("field `{name}`: expected a number, found {v}")),
            }
        };
        let bool_field = |name: &str, default: bool| -> Result<bool> {
            match obj.get(name) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v
                    .as_bool()
                    .with_context(|| format!("field `{name}`: expected true or false, found {v}")),
            }
        };

        let hidden_size = required("hidden_size")?;
        let num_attention_heads = required("num_attention_heads")?;
        let num_key_value_heads =
            usize_field("num_key_value_heads")?.unwrap_or(num_attention_heads);
        if num_attention_heads % num_key_value_heads != 0 {
            bail!("num_attention_heads ({num_attention_heads}) is not a multiple of num_key_value_heads ({num_key_value_heads})");
        }
        let head_dim = match usize_field("head_dim")? {
            Some(d) => d,
            None if hidden_size % num_attention_heads == 0 => hidden_size / num_attention_heads,
            None => bail!("hidden_size ({hidden_size}) is not a multiple of num_attention_heads ({num_attention_heads})"),
        };
        if head_dim % 2 != 0 {
            bail!("head_dim ({head_dim}) must be even for rotary embeddings");
        }
        if let Some(act) = obj.get("hidden_act").and_then(Value::as_str) {
            if act != "silu" {
                bail!("field `hidden_act`: only \"silu\" is supported, found \"{act}\"");
            }
        }
        if bool_field("mlp_bias", false)? {
            bail!("field `mlp_bias`: MLP biases are not supported");
        }

        // transformers 5 writes rope_parameters; older checkpoints rope_theta + rope_scaling.
        let rope_params = obj.get("rope_parameters").and_then(Value::as_object);
        let rope_theta = match rope_params {
            Some(p) => float_field(p, "rope_theta")?,
            None => None,
        }
        .or(float_field(obj, "rope_theta")?)
        .unwrap_or(10000.0);
        let scaling_obj = match obj.get("rope_scaling") {
            Some(Value::Object(s)) => Some(s),
            _ => rope_params,
        };
        let rope_scaling = match scaling_obj {
            None => RopeScaling::None,
            Some(s) => rope_scaling(s, float_field)?,
        };

        let mut max_context = usize_field("max_position_embeddings")?.unwrap_or(2048);
        let sliding = match architecture {
            // transformers' MistralConfig defaults to a 4096 window; an explicit null means none.
            Architecture::Mistral if !obj.contains_key("sliding_window") => Some(4096),
            Architecture::Mistral => usize_field("sliding_window")?,
            Architecture::Qwen2 if bool_field("use_sliding_window", false)? => {
                usize_field("sliding_window")?
            }
            _ => None,
        };
        if let Some(window) = sliding {
            max_context = max_context.min(window);
        }
        let eos_token_ids = token_ids(obj.get("eos_token_id")).context("field `eos_token_id`")?;
        // Only a classifier reads pad_token_id, so a causal LM's is left unchecked.
        let pad_token_id = match head {
            Head::SequenceClassification { .. } => pad_token_id(obj)?,
            Head::CausalLm => None,
        };

        let rms_norm_eps = float_field(obj, "rms_norm_eps")?.unwrap_or(1e-6);
        if !(rms_norm_eps > 0.0 && rms_norm_eps.is_finite()) {
            bail!("field `rms_norm_eps`: expected a positive number, found {rms_norm_eps}");
        }
        if !(rope_theta > 0.0 && rope_theta.is_finite()) {
            bail!("rope_theta: expected a positive number, found {rope_theta}");
        }
        let cfg = ModelConfig {
            architecture,
            head,
            hidden_size,
            intermediate_size: required("intermediate_size")?,
            num_hidden_layers: required("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size: required("vocab_size")?,
            rms_norm_eps: rms_norm_eps as f32,
            rope_theta,
            rope_scaling,
            tie_word_embeddings: bool_field("tie_word_embeddings", false)?,
            attention_bias: architecture == Architecture::Qwen2
                || bool_field("attention_bias", false)?,
            max_context,
            eos_token_ids,
            pad_token_id,
        };
        cfg.parameter_count()
            .context("the model's sizes overflow: is the config corrupt?")?;
        Ok(cfg)
    }

    /// Parameters in the model, or None when the sizes overflow.
    pub fn parameter_count(&self) -> Option<usize> {
        let (c, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let (qd, kvd) = (self.q_dim(), self.kv_dim());
        let attn = qd
            .checked_add(kvd.checked_mul(2)?)?
            .checked_mul(c.checked_add(1)?)?;
        let mlp = i.checked_mul(c)?.checked_mul(3)?;
        let per_layer = attn.checked_add(c.checked_mul(qd)?)?.checked_add(mlp)?;
        let head = match self.head {
            Head::CausalLm if self.tie_word_embeddings => 0,
            Head::CausalLm => v.checked_mul(c)?,
            Head::SequenceClassification { num_labels } => num_labels.checked_mul(c)?,
        };
        per_layer
            .checked_add(c.checked_mul(2)?)?
            .checked_mul(self.num_hidden_layers)?
            .checked_add(v.checked_mul(c)?)?
            .checked_add(head)?
            .checked_add(c)
    }
}

/// The architecture and head that `architectures` (or, failing that, `model_type`) names.
fn architecture(obj: &Map<String, Value>) -> Result<(Architecture, Head)> {
    // (architecture, whether it is a sequence classifier)
    let from_name = |name: &str| match name {
        "LlamaForCausalLM" | "llama" => Some((Architecture::Llama, false)),
        "MistralForCausalLM" | "mistral" => Some((Architecture::Mistral, false)),
        "Qwen2ForCausalLM" | "qwen2" => Some((Architecture::Qwen2, false)),
        "LlamaForSequenceClassification" => Some((Architecture::Llama, true)),
        "Qwen2ForSequenceClassification" => Some((Architecture::Qwen2, true)),
        _ => None,
    };
    let arch = obj
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str);
    let model_type = obj.get("model_type").and_then(Value::as_str);
    let (architecture, classifier) = match (arch, model_type) {
        (Some(a), _) => from_name(a).with_context(|| {
            format!("unknown architecture \"{a}\": supported are LlamaForCausalLM, MistralForCausalLM and Qwen2ForCausalLM, and the reward models LlamaForSequenceClassification and Qwen2ForSequenceClassification")
        }),
        (None, Some(t)) => from_name(t)
            .with_context(|| format!("unknown model_type \"{t}\": supported are llama, mistral and qwen2")),
        (None, None) => bail!("neither `architectures` nor `model_type` names the model"),
    }?;
    let head = if classifier {
        Head::SequenceClassification {
            num_labels: num_labels(obj)?,
        }
    } else {
        Head::CausalLm
    };
    Ok((architecture, head))
}

fn rope_scaling(
    s: &Map<String, Value>,
    float_field: impl Fn(&Map<String, Value>, &str) -> Result<Option<f64>>,
) -> Result<RopeScaling> {
    let kind = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let need = |name: &str| -> Result<f64> {
        float_field(s, name)?.with_context(|| format!("rope scaling \"{kind}\" needs `{name}`"))
    };
    let positive = |name: &str| -> Result<f64> {
        let x = need(name)?;
        if x > 0.0 && x.is_finite() {
            Ok(x)
        } else {
            bail!("rope scaling `{name}`: expected a positive number, found {x}")
        }
    };
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: positive("factor")?,
        },
        "llama3" => {
            let (low, high) = (positive("low_freq_factor")?, positive("high_freq_factor")?);
            if high <= low {
                bail!(
                    "rope scaling: high_freq_factor ({high}) must exceed low_freq_factor ({low})"
                );
            }
            RopeScaling::Llama3 {
                factor: positive("factor")?,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: positive("original_max_position_embeddings")?,
            }
        }
        other => {
            bail!("rope scaling type \"{other}\" is not supported (default, linear and llama3 are)")
        }
    })
}

/// A classifier's label count as transformers derives it: the size of `id2label` when the
/// config has one, else `num_labels`, else 2 (the default, which older configs left unsaved).
fn num_labels(obj: &Map<String, Value>) -> Result<usize> {
    match (obj.get("id2label"), obj.get("num_labels")) {
        (Some(Value::Object(labels)), _) if !labels.is_empty() => Ok(labels.len()),
        (Some(v), _) if !v.is_null() => {
            bail!("field `id2label`: expected an object of labels, found {v}")
        }
        (_, None | Some(Value::Null)) => Ok(2),
        (_, Some(v)) => match v.as_u64() {
            Some(n) if n > 0 => Ok(n as usize),
            _ => bail!("field `num_labels`: expected a positive integer, found {v}"),
        },
    }
}

/// `pad_token_id`: absent, null or an integer. A negative one (some configs write -1) matches
/// no token, as in transformers, so it counts as none.
fn pad_token_id(obj: &Map<String, Value>) -> Result<Option<u32>> {
    match obj.get("pad_token_id") {
        None | Some(Value::Null) => Ok(None),
        Some(v) if v.as_i64().is_some_and(|n| n < 0) => Ok(None),
        Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(id) => Ok(Some(id)),
            None => bail!("field `pad_token_id`: expected a token id, found {v}"),
        },
    }
}

/// An `eos_token_id`-style field: absent, an integer, or a list of integers.
pub fn token_ids(value: Option<&Value>) -> Result<Vec<u32>> {
    let one = |v: &Value| -> Result<u32> {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .with_context(|| format!("expected a token id, found {v}"))
    };
    match value {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(items)) => items.iter().map(one).collect(),
        Some(v) => Ok(vec![one(v)?]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_both_rope_layouts() {
        let old = json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 96,
            "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100, "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}, "eos_token_id": [5, 7]});
        let c = ModelConfig::from_json(&old).unwrap();
        assert_eq!(
            (c.num_key_value_heads, c.head_dim, c.rope_theta),
            (4, 16, 500000.0)
        );
        assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
        assert_eq!(c.eos_token_ids, vec![5, 7]);
        let new = json!({"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 96,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000.0}});
        let c = ModelConfig::from_json(&new).unwrap();
        assert_eq!(
            (c.architecture, c.attention_bias, c.rope_theta),
            (Architecture::Qwen2, true, 1000.0)
        );
        assert_eq!(c.rope_scaling, RopeScaling::None);
    }

    #[test]
    fn classifier_labels_and_pad_token_as_transformers_reads_them() {
        let base = json!({"architectures": ["Qwen2ForSequenceClassification"], "hidden_size": 64,
            "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100,
            "pad_token_id": 7});
        let with = |field: &str, value: Value| {
            let mut cfg = base.clone();
            cfg[field] = value;
            ModelConfig::from_json(&cfg)
        };
        let labels = |c: ModelConfig| match c.head {
            Head::SequenceClassification { num_labels } => num_labels,
            Head::CausalLm => panic!("not a classifier"),
        };
        let c = ModelConfig::from_json(&base).unwrap();
        assert_eq!(
            (c.architecture, c.pad_token_id),
            (Architecture::Qwen2, Some(7))
        );
        assert_eq!(c.class_name(), "Qwen2ForSequenceClassification");
        assert_eq!(labels(c), 2, "transformers' default");
        assert_eq!(labels(with("num_labels", json!(1)).unwrap()), 1);
        let id2label = json!({"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"});
        assert_eq!(labels(with("id2label", id2label).unwrap()), 3);
        assert_eq!(with("pad_token_id", json!(-1)).unwrap().pad_token_id, None);
        assert_eq!(
            with("pad_token_id", Value::Null).unwrap().pad_token_id,
            None
        );
        let err = with("pad_token_id", json!("x")).unwrap_err();
        assert!(err.to_string().contains("pad_token_id"), "{err}");
        // A causal LM ignores pad_token_id, as before.
        let c = with("architectures", json!(["LlamaForCausalLM"])).unwrap();
        assert_eq!((c.head, c.pad_token_id), (Head::CausalLm, None));
        let c = with("architectures", json!(["Qwen2ForCausalLM"]));
        assert_eq!(c.unwrap().class_name(), "Qwen2ForCausalLM");
    }

    #[test]
    fn rejects_unknown_architecture_and_bad_fields() {
        let err =
            ModelConfig::from_json(&json!({"architectures": ["GPT2LMHeadModel"]})).unwrap_err();
        assert!(err.to_string().contains("GPT2LMHeadModel"), "{err}");
        let err = ModelConfig::from_json(&json!({"model_type": "llama", "hidden_size": "big"}))
            .unwrap_err();
        assert!(err.to_string().contains("hidden_size"), "{err}");
        let err = ModelConfig::from_json(&json!({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
            "num_key_value_heads": 3, "intermediate_size": 8, "num_hidden_layers": 1, "vocab_size": 9})).unwrap_err();
        assert!(err.to_string().contains("num_key_value_heads"), "{err}");
        let base = json!({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
            "intermediate_size": 8, "num_hidden_layers": 1, "vocab_size": 9});
        let bad = [
            ("rms_norm_eps", json!(-1.0), "rms_norm_eps"),
            ("rope_theta", json!(0.0), "rope_theta"),
            ("vocab_size", json!(1u64 << 62), "overflow"),
        ];
        for (field, value, needle) in bad {
            let mut cfg = base.clone();
            cfg[field] = value;
            let err = ModelConfig::from_json(&cfg).unwrap_err();
            assert!(format!("{err:#}").contains(needle), "{field}: {err:#}");
        }
    }
}
