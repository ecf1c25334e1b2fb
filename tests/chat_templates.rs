//! Chat templates rendered as transformers renders them: the cases of
//! tests/fixtures/templates/cases.json (made by scripts/make-template-fixtures.py with
//! transformers' apply_chat_template) through our tokenizer, and `strftime_now` against
//! Python's `datetime.now().strftime`.

mod common;

use common::chat_fixture;
use serde_json::Value;
use std::path::{Path, PathBuf};
use tpo_engine::tokenizer::Tokenizer;

/// A copy of the chat fixture's tokenizer whose chat template is `template`.
fn tokenizer_with(dir: &Path, template: &str) -> Tokenizer {
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(chat_fixture().join(f), dir.join(f)).unwrap();
    }
    let path = dir.join("tokenizer_config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["chat_template"] = Value::String(template.to_string());
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
    Tokenizer::load(dir).unwrap()
}

fn cases() -> Vec<Value> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/templates/cases.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn templates_render_as_transformers_renders_them() {
    let cases = cases();
    assert!(cases.len() >= 4);
    for case in cases {
        let tmp = tempfile::tempdir().unwrap();
        let tok = tokenizer_with(tmp.path(), case["template"].as_str().unwrap());
        let got = tok
            .render_messages(
                &case["messages"],
                case["add_generation_prompt"].as_bool().unwrap(),
            )
            .unwrap();
        assert_eq!(got, case["text"].as_str().unwrap(), "{}", case["name"]);
    }
}

/// What Python's `datetime.now().strftime(format)` gives now, from python3.
fn python_strftime(format: &str) -> String {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import datetime, sys; sys.stdout.write(datetime.datetime.now().strftime(sys.argv[1]))",
            format,
        ])
        .output()
        .expect("python3 runs");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn strftime_now_is_pythons() {
    let tmp = tempfile::tempdir().unwrap();
    // Day-grained formats (a render straddling midnight is retried once), the directives
    // Python handles itself (%z, %Z of a naive datetime: empty) and a literal percent.
    let formats = [
        "%d %b %Y",
        "%Y-%m-%d %A %B %j %a %y",
        "[%z][%Z] 100%%",
        "%x",
    ];
    let template = formats
        .iter()
        .map(|f| format!("{{{{ strftime_now({f:?}) }}}}"))
        .collect::<Vec<_>>()
        .join("|");
    let tok = tokenizer_with(tmp.path(), &template);
    let messages = serde_json::json!([{"role": "user", "content": "hi"}]);
    let python = || formats.map(python_strftime).join("|");
    let (before, ours) = (python(), tok.render_messages(&messages, true).unwrap());
    assert!(
        ours == before || ours == python(),
        "ours {ours:?}, Python {before:?}"
    );
    // Microseconds are six digits, as Python writes them.
    let tok = tokenizer_with(tmp.path(), "{{ strftime_now('%f') }}");
    let micros = tok.render_messages(&messages, true).unwrap();
    assert!(
        micros.len() == 6 && micros.chars().all(|c| c.is_ascii_digit()),
        "{micros}"
    );
}
