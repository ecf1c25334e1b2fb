//! What the criterion benches share: the benchmark model.

use serde_json::json;
use tpo_engine::backend::rng::Rng;
use tpo_engine::model::weights::StorageDtype;
use tpo_engine::model::{Model, ModelConfig, ParamLayout};

pub const VOCAB: usize = 8192;

/// The benchmark config (the `tiny` defaults: Llama, hidden 256, 4 layers, 8 heads, 4 KV
/// heads, intermediate 688, vocab 8192) with random weights, norms included.
pub fn bench_model() -> Model {
    let config = ModelConfig::from_json(&json!({
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 256,
        "intermediate_size": 688,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "vocab_size": VOCAB,
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
    }))
    .expect("the benchmark config is valid");
    let mut rng = Rng::new(3);
    let params = (0..ParamLayout::new(&config).len)
        .map(|_| 0.02 * rng.normal())
        .collect();
    Model::from_params(config, params, StorageDtype::F32)
}
