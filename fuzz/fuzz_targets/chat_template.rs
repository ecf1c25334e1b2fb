//! Chat-template rendering of arbitrary message lists (any JSON) through the templates of
//! the test checkpoints (Llama, Mistral, Qwen2 and the small chat model): a text or an
//! error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;
use tpo_engine::tokenizer::Tokenizer;

fn tokenizers() -> &'static Vec<Tokenizer> {
    static T: OnceLock<Vec<Tokenizer>> = OnceLock::new();
    T.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        ["chat", "llama", "mistral", "qwen2"]
            .iter()
            .filter_map(|name| Tokenizer::load(&root.join(name)).ok())
            .filter(Tokenizer::has_chat_template)
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(messages) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    for t in tokenizers() {
        let _ = t.render_chat(&messages);
        let _ = t.render_messages(&messages, false);
    }
});
