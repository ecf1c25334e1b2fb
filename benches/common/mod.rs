//! What the criterion benches share: the benchmark model, at the shape `TPO_BENCH_SHAPE`
//! names: `7m` (the default: the `tiny` defaults, Llama, hidden 256, 4 layers, 8 heads, 4 KV
//! heads, intermediate 688, vocab 8192) or `135m` (a real small checkpoint's shape: hidden
//! 576, 30 layers, 9 heads, 3 KV heads, head dim 64, intermediate 1536, vocab 49152, tied
//! embeddings). Random weights: speed does not depend on them.

use serde_json::json;
use tpo_engine::backend::rng::Rng;
use tpo_engine::model::weights::StorageDtype;
use tpo_engine::model::{Model, ModelConfig, ParamLayout};

/// The vocabulary of the 7m shape.
pub const VOCAB: usize = 8192;

/// The shape's name and its config.json.
pub fn bench_shape() -> (String, serde_json::Value) {
    let name = std::env::var("TPO_BENCH_SHAPE").unwrap_or_else(|_| "7m".into());
    let config = match name.as_str() {
        "7m" => json!({
            "architectures": ["LlamaForCausalLM"], "hidden_size": 256, "intermediate_size": 688,
            "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 4,
            "vocab_size": VOCAB, "max_position_embeddings": 1024, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
        }),
        "135m" => json!({
            "architectures": ["LlamaForCausalLM"], "hidden_size": 576, "intermediate_size": 1536,
            "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
            "vocab_size": 49152, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
            "rope_theta": 100000.0, "tie_word_embeddings": true,
        }),
        other => panic!("TPO_BENCH_SHAPE={other}: expected 7m or 135m"),
    };
    (name, config)
}

/// The benchmark model of `bench_shape` with random weights, norms included.
pub fn bench_model() -> Model {
    let (_, config) = bench_shape();
    let config = ModelConfig::from_json(&config).expect("the benchmark config is valid");
    let mut rng = Rng::new(3);
    let params = (0..ParamLayout::new(&config).len)
        .map(|_| 0.02 * rng.normal())
        .collect();
    Model::from_params(config, params, StorageDtype::F32)
}
