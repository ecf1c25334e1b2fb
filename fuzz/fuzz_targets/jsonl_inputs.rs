//! The JSONL readers (prompts for generate and train, DPO pairs, SFT examples) on arbitrary
//! file contents, with the small test checkpoint's tokenizer and chat template: errors
//! naming file and line, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;
use tpo_engine::generate::prompts::read_prompts;
use tpo_engine::generate::PromptMode;
use tpo_engine::tokenizer::Tokenizer;
use tpo_engine::tpo::prompts::read_prompt_file;
use tpo_engine::train::data::{read_completions, read_pairs, TextEncoder};

struct Fixture {
    tokenizer: Tokenizer,
    dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/chat");
        Fixture {
            tokenizer: Tokenizer::load(&model).expect("the chat fixture's tokenizer"),
            dir: tempfile::TempDir::new().unwrap(),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let path = f.dir.path().join("input.jsonl");
    std::fs::write(&path, data).unwrap();
    let (vocab, context) = (f.tokenizer.vocab_size(), 128);
    for mode in [PromptMode::Chat, PromptMode::Raw] {
        let _ = read_prompts(&path, &f.tokenizer, mode, vocab, context);
        let enc = TextEncoder {
            tokenizer: &f.tokenizer,
            mode,
            end_token: 0,
            vocab_size: vocab,
            max_context: context,
        };
        let _ = read_pairs(&path, &enc);
        let _ = read_completions(&path, &enc);
    }
    let _ = read_prompt_file(&path, 1 << 20);
});
