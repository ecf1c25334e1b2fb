//! Makes a small Llama checkpoint with random weights and a byte-level BPE tokenizer trained
//! on generated text: a normal Hugging Face checkpoint directory, made with no downloads.

use crate::backend::rng::Rng;
use crate::checkpoint::save_safetensors;
use crate::io::{create_dir_atomic, write_atomic};
use crate::model::weights::StorageDtype;
use crate::model::{ModelConfig, ParamLayout};
use anyhow::{anyhow, Context, Result};
use serde_json::json;
use std::path::Path;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::AddedToken;

/// The shape of the model to make. The defaults are the benchmark config (about 7M params).
#[derive(Clone, Debug, clap::Args)]
pub struct TinySpec {
    #[arg(long, default_value_t = 256)]
    pub hidden: usize,
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    #[arg(long, default_value_t = 8)]
    pub heads: usize,
    #[arg(long, default_value_t = 4)]
    pub kv_heads: usize,
    #[arg(long, default_value_t = 688)]
    pub intermediate: usize,
    /// Vocabulary size, special and reserved tokens included.
    #[arg(long, default_value_t = 8192)]
    pub vocab: usize,
    #[arg(long, default_value_t = 1024)]
    pub max_positions: usize,
    #[arg(long)]
    pub tie_embeddings: bool,
    /// Storage dtype of the weights: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Train the tokenizer's merges on this text file (one example a line) instead of the
    /// generated text.
    #[arg(long)]
    pub corpus: Option<std::path::PathBuf>,
    /// Make every digit its own token (a Digits pre-tokenizer before the byte-level one).
    #[arg(long)]
    pub split_digits: bool,
}

const SPECIAL: [&str; 6] = [
    "<|bos|>",
    "<|eos|>",
    "<|end|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
];
const CHAT_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}";

/// Writes the checkpoint to `dir`, which must not exist yet.
pub fn make_tiny_model(dir: &Path, spec: &TinySpec) -> Result<()> {
    let dtype = StorageDtype::parse(&spec.dtype)
        .with_context(|| format!("--dtype {}: expected f32, bf16 or f16", spec.dtype))?;
    let limits = [
        ("--hidden", spec.hidden, 1 << 14),
        ("--layers", spec.layers, 256),
        ("--heads", spec.heads, 1024),
        ("--kv-heads", spec.kv_heads, 1024),
        ("--intermediate", spec.intermediate, 1 << 16),
        ("--vocab", spec.vocab, 1 << 20),
        ("--max-positions", spec.max_positions, 1 << 20),
    ];
    for (flag, value, max) in limits {
        if value == 0 || value > max {
            anyhow::bail!("{flag} {value}: expected 1 to {max} for a generated test model");
        }
    }
    if spec.vocab < 512 {
        anyhow::bail!(
            "--vocab {}: at least 512 (256 bytes, special tokens and merges)",
            spec.vocab
        );
    }
    let lines = match &spec.corpus {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("--corpus {}: cannot read it", path.display()))?
            .lines()
            .map(str::to_string)
            .collect(),
        None => corpus(spec.seed),
    };
    let tokenizer = train_tokenizer(spec.vocab, lines, spec.split_digits)?;
    let id = |t: &str| {
        tokenizer
            .token_to_id(t)
            .expect("special tokens are in the vocabulary")
    };
    let config_json = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": spec.hidden,
        "intermediate_size": spec.intermediate,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "vocab_size": spec.vocab,
        "max_position_embeddings": spec.max_positions,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": spec.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": false,
        "bos_token_id": id("<|bos|>"),
        "eos_token_id": id("<|eos|>"),
        "torch_dtype": dtype.torch_name(),
    });
    let cfg =
        ModelConfig::from_json(&config_json).context("the requested shape is not a valid model")?;
    crate::memory::checkpoint(&cfg, dtype.safetensors().bitsize() as u64 / 8)
        .check("init-model")?;
    let layout = ParamLayout::new(&cfg);
    let mut rng = Rng::new(spec.seed);
    let mut params: Vec<f32> = (0..layout.len).map(|_| 0.02 * rng.normal()).collect();
    let norms = layout.layers.iter().flat_map(|l| {
        [
            l.input_layernorm.clone(),
            l.post_attention_layernorm.clone(),
        ]
    });
    for r in norms.chain([layout.norm.clone()]) {
        params[r].fill(1.0);
    }
    let tokenizer_config = json!({
        "bos_token": "<|bos|>",
        "eos_token": "<|eos|>",
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": spec.max_positions,
    });
    let generation_config = json!({
        "bos_token_id": id("<|bos|>"),
        "eos_token_id": [id("<|eos|>"), id("<|end|>")],
    });
    create_dir_atomic(dir, |tmp| {
        let pretty =
            |v: &serde_json::Value| serde_json::to_vec_pretty(v).expect("JSON values serialize");
        write_atomic(&tmp.join("config.json"), &pretty(&config_json))?;
        write_atomic(
            &tmp.join("tokenizer_config.json"),
            &pretty(&tokenizer_config),
        )?;
        write_atomic(
            &tmp.join("generation_config.json"),
            &pretty(&generation_config),
        )?;
        tokenizer
            .save(tmp.join("tokenizer.json"), false)
            .map_err(|e| anyhow!("cannot write tokenizer.json: {e}"))?;
        save_safetensors(
            &tmp.join("model.safetensors"),
            &cfg,
            &layout,
            &params,
            dtype,
        )
    })
}

/// A byte-level BPE of exactly `vocab` tokens, trained on `lines`; reserved special tokens
/// fill what the merges leave. With `split_digits`, digits are split apart before the
/// byte-level step, so each digit is one token wherever it stands.
fn train_tokenizer(
    vocab: usize,
    lines: Vec<String>,
    split_digits: bool,
) -> Result<tokenizers::Tokenizer> {
    let byte_level = ByteLevel::new(false, true, true);
    let mut tokenizer = tokenizers::Tokenizer::new(BPE::default());
    if split_digits {
        tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
            Digits::new(true).into(),
            byte_level.into(),
        ])));
    } else {
        tokenizer.with_pre_tokenizer(Some(byte_level));
    }
    tokenizer.with_decoder(Some(byte_level));
    let specials: Vec<AddedToken> = SPECIAL.iter().map(|t| AddedToken::from(*t, true)).collect();
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut trainer = TrainerWrapper::BpeTrainer(trainer);
    tokenizer
        .train(&mut trainer, lines.into_iter())
        .map_err(|e| anyhow!("training the tokenizer: {e}"))?;
    let have = tokenizer.get_vocab_size(true);
    let reserved: Vec<AddedToken> = (0..vocab.saturating_sub(have))
        .map(|i| AddedToken::from(format!("<|reserved_{i}|>"), true))
        .collect();
    tokenizer.add_special_tokens(&reserved);
    let bos = tokenizer
        .token_to_id("<|bos|>")
        .expect("trained with the special tokens");
    let processor = TemplateProcessing::builder()
        .try_single("<|bos|> $A")
        .map_err(|e| anyhow!("tokenizer template: {e}"))?
        .special_tokens(vec![("<|bos|>", bos)])
        .build()
        .map_err(|e| anyhow!("tokenizer template: {e}"))?;
    tokenizer.with_post_processor(Some(processor));
    Ok(tokenizer)
}

/// Generated training text for the tokenizer: made-up words with a Zipf-like frequency,
/// sentences, numbers and arithmetic, so merges cover words, digits and punctuation.
fn corpus(seed: u64) -> Vec<String> {
    const ONSETS: [&str; 20] = [
        "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st", "th",
        "ch", "pr",
    ];
    const VOWELS: [&str; 8] = ["a", "e", "i", "o", "u", "ea", "ou", "ai"];
    const CODAS: [&str; 6] = ["", "n", "r", "s", "t", "ng"];
    let mut rng = Rng::new(seed ^ 0x746f6b);
    let mut pick = |n: usize| (rng.next_u64() % n as u64) as usize;
    let lexicon: Vec<String> = (0..6000)
        .map(|_| {
            let syllables = 1 + pick(3);
            (0..syllables)
                .map(|_| format!("{}{}{}", ONSETS[pick(20)], VOWELS[pick(8)], CODAS[pick(6)]))
                .collect()
        })
        .collect();
    let mut lines = Vec::with_capacity(12_000);
    for i in 0..12_000 {
        let mut line = String::new();
        if i % 4 == 0 {
            let (a, b) = (pick(1000), pick(1000));
            line.push_str(&format!("What is {a} plus {b}? The answer is {}. ", a + b));
        }
        let words = 6 + pick(12);
        for w in 0..words {
            // Zipf-like: small indices far more often.
            let r = pick(1 << 20) as f64 / (1u64 << 20) as f64;
            let idx = ((lexicon.len() as f64).powf(r) as usize).min(lexicon.len()) - 1;
            let word = &lexicon[idx];
            if w == 0 {
                let mut c = word.chars();
                let first = c.next().map(|f| f.to_ascii_uppercase()).unwrap_or('A');
                line.push(first);
                line.push_str(c.as_str());
            } else {
                line.push(' ');
                line.push_str(word);
            }
            if w + 1 < words && pick(9) == 0 {
                line.push(',');
            }
        }
        line.push_str([".", "?", "!", "."][pick(4)]);
        lines.push(line);
    }
    lines
}
