//! Replays every input kept under fuzz/seeds/TARGET/ and fuzz/regressions/TARGET/ (crash
//! inputs the fuzzers found, after the fix) through the code its fuzz target drives, with
//! the target's checks, on the stable toolchain: a fixed crash stays fixed.

mod common;

use std::path::{Path, PathBuf};
use tpo_engine::generate::prompts::read_prompts;
use tpo_engine::generate::PromptMode;
use tpo_engine::model::config::ModelConfig;
use tpo_engine::model::weights::parse_header;
use tpo_engine::tokenizer::Tokenizer;
use tpo_engine::tpo::judge::command::{parse_preferences, parse_scores};
use tpo_engine::tpo::prompts::read_prompt_file;
use tpo_engine::tpo::thought::{Parsed, ThoughtPrompt};
use tpo_engine::train::data::{read_completions, read_pairs, TextEncoder};

/// Every kept input of `target`, with its path.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut all = vec![];
    for kind in ["seeds", "regressions"] {
        let Ok(dir) = std::fs::read_dir(root.join(kind).join(target)) else {
            continue;
        };
        for entry in dir {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            all.push((path, bytes));
        }
    }
    assert!(!all.is_empty(), "no kept inputs for {target}");
    all
}

#[test]
fn safetensors_header() {
    for (path, data) in inputs("safetensors_header") {
        let parsed = parse_header(std::io::Cursor::new(&data[..]), data.len() as u64);
        if let Ok(tensors) = &parsed {
            assert!(tensors.iter().all(|(name, _, _)| name != "__metadata__"));
        }
        let _ = parse_header(std::io::Cursor::new(&data[..]), u64::MAX);
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&data) {
            if let Ok(cfg) = ModelConfig::from_json(&value) {
                assert!(cfg.parameter_count().is_some(), "{}", path.display());
            }
        }
    }
}

#[test]
fn jsonl_inputs() {
    let tokenizer = Tokenizer::load(&common::chat_fixture()).unwrap();
    let tmp = tempfile::TempDir::new().unwrap();
    let file = tmp.path().join("input.jsonl");
    for (path, data) in inputs("jsonl_inputs") {
        std::fs::write(&file, &data).unwrap();
        let (vocab, context) = (tokenizer.vocab_size(), 128);
        for mode in [PromptMode::Chat, PromptMode::Raw] {
            if let Ok(prompts) = read_prompts(&file, &tokenizer, mode, vocab, context) {
                assert!(prompts.iter().all(|p| p.token_ids.len() < context));
            }
            let enc = TextEncoder {
                tokenizer: &tokenizer,
                mode,
                end_token: 0,
                vocab_size: vocab,
                max_context: context,
            };
            if let Err(e) = read_pairs(&file, &enc) {
                assert!(
                    format!("{e:#}").contains("input.jsonl"),
                    "{}",
                    path.display()
                );
            }
            let _ = read_completions(&file, &enc);
        }
        let _ = read_prompt_file(&file, 1 << 20);
    }
}

#[test]
fn thought_parser() {
    for (_, data) in inputs("thought_parser") {
        let Ok(text) = std::str::from_utf8(&data) else {
            continue;
        };
        for name in ["generic", "specific"] {
            let prompt = ThoughtPrompt::resolve(name).unwrap();
            for prefilled in [false, true] {
                if let Parsed::Ok { thought, response } = prompt.parse(text, prefilled) {
                    assert!(!response.trim().is_empty());
                    assert!(text.contains(thought) && text.contains(response));
                }
                let _ = prompt.phase(text, prefilled);
            }
        }
    }
}

#[test]
fn chat_template() {
    let tokenizer = Tokenizer::load(&common::chat_fixture()).unwrap();
    for (path, data) in inputs("chat_template") {
        let Ok(messages) = serde_json::from_slice::<serde_json::Value>(&data) else {
            continue;
        };
        let rendered = tokenizer.render_chat(&messages);
        if path.starts_with(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds")) {
            assert!(rendered.is_ok(), "{}: {rendered:?}", path.display());
        }
        let _ = tokenizer.render_messages(&messages, false);
    }
}

#[test]
fn judge_answers() {
    for (path, data) in inputs("judge_answers") {
        let Some((&first, stdout)) = data.split_first() else {
            continue;
        };
        let n = 1 + usize::from(first % 4);
        if let Ok(scores) = parse_scores(stdout, n) {
            assert_eq!(scores.len(), n, "{}", path.display());
            assert!(scores.iter().all(|s| s.is_finite()));
        }
        if let Ok(prefs) = parse_preferences(stdout, n) {
            assert_eq!(prefs.len(), n, "{}", path.display());
        }
    }
}
