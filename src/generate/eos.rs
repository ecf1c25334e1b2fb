//! The tokens that end a completion: where generation stops, and what training appends.

use crate::model::config::token_ids;
use crate::model::ModelConfig;
use crate::tokenizer::Tokenizer;
use anyhow::{Context, Result};
use serde_json::Value;
use std::path::Path;

/// EOS ids: generation_config.json, else config.json, else the tokenizer's eos_token.
pub fn eos_ids(dir: &Path, config: &ModelConfig, tokenizer: &Tokenizer) -> Result<Vec<u32>> {
    let path = dir.join("generation_config.json");
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let value: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", path.display()))?;
        let ids = token_ids(value.get("eos_token_id"))
            .with_context(|| format!("{}: field `eos_token_id`", path.display()))?;
        if !ids.is_empty() {
            return in_vocab(ids, config, &path);
        }
    }
    if !config.eos_token_ids.is_empty() {
        return in_vocab(
            config.eos_token_ids.clone(),
            config,
            &dir.join("config.json"),
        );
    }
    Ok(tokenizer
        .eos_token()
        .and_then(|t| tokenizer.token_id(t))
        .into_iter()
        .collect())
}

/// `ids`, unless one is beyond the vocabulary (generation would never stop on it).
fn in_vocab(ids: Vec<u32>, config: &ModelConfig, file: &Path) -> Result<Vec<u32>> {
    if let Some(bad) = ids.iter().find(|&&id| id as usize >= config.vocab_size) {
        anyhow::bail!(
            "{}: field `eos_token_id`: token id {bad} is beyond the model's vocab_size {}, so generation would never stop on it",
            file.display(),
            config.vocab_size
        );
    }
    Ok(ids)
}

/// The token that ends an assistant turn in training data: the tokenizer's EOS, else
/// generation's first EOS id.
pub fn end_token(dir: &Path, config: &ModelConfig, tokenizer: &Tokenizer) -> Result<u32> {
    match tokenizer.eos_token().and_then(|t| tokenizer.token_id(t)) {
        Some(id) => Ok(id),
        None => eos_ids(dir, config, tokenizer)?.first().copied().with_context(|| {
            format!(
                "{}: no end-of-sequence token (tokenizer_config.json eos_token, or eos_token_id in generation_config.json or config.json); completions need one to end on",
                dir.display()
            )
        }),
    }
}
