//! The seed checkpoint the demonstration starts from, embedded in the binary.

use crate::io::{create_dir_atomic, write_atomic};
use anyhow::Result;
use std::path::Path;

/// The seed checkpoint, made by `scripts/make-seed.sh` and embedded in the binary.
const SEED_FILES: [(&str, &[u8]); 5] = [
    (
        "config.json",
        include_bytes!("../../../assets/seed/config.json"),
    ),
    (
        "generation_config.json",
        include_bytes!("../../../assets/seed/generation_config.json"),
    ),
    (
        "tokenizer.json",
        include_bytes!("../../../assets/seed/tokenizer.json"),
    ),
    (
        "tokenizer_config.json",
        include_bytes!("../../../assets/seed/tokenizer_config.json"),
    ),
    (
        "model.safetensors",
        include_bytes!("../../../assets/seed/model.safetensors"),
    ),
];

/// Writes the embedded seed checkpoint to `dir`, which must not exist yet.
pub fn write_seed(dir: &Path) -> Result<()> {
    create_dir_atomic(dir, |tmp| {
        for (name, bytes) in SEED_FILES {
            write_atomic(&tmp.join(name), bytes)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_seed_writes_a_loadable_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("seed");
        write_seed(&dir).unwrap();
        let model = crate::model::Model::load(&dir).unwrap();
        let tokenizer = crate::tokenizer::Tokenizer::load(&dir).unwrap();
        assert_eq!(model.config.vocab_size, tokenizer.vocab_size());
        assert!(tokenizer.has_chat_template());
        // The task's text tokenizes with every digit its own token.
        let ids = tokenizer.encode("A=37", false).unwrap();
        assert_eq!(ids.len(), 4, "{ids:?}");
        // The directory must not exist yet.
        assert!(write_seed(&dir).is_err());
    }
}
