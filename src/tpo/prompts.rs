//! The prompts of a TPO run: JSONL objects with "prompt" text or chat "messages" (plus any
//! task fields a judge reads), the instruction a judge sees, and the thought-prompt wrapping.

use super::thought::ThoughtPrompt;
use crate::generate::prompts::render_prompt;
use crate::generate::PromptMode;
use crate::io::lines::for_each_line;
use crate::model::config::ModelConfig;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};
use std::path::Path;

/// Reads a prompts file: one JSON object per line, blank lines skipped, each line at most
/// `max_line` bytes (`prompt_line_limit`). Errors name the line.
pub fn read_prompt_file(path: &Path, max_line: usize) -> Result<Vec<Map<String, Value>>> {
    let mut out = vec![];
    for_each_line(path, "prompts", max_line, |_, line| {
        let obj = match serde_json::from_str::<Value>(line)? {
            Value::Object(obj) => obj,
            other => bail!("expected a JSON object, found {other}"),
        };
        instruction(&obj)?;
        out.push(obj);
        Ok(())
    })?;
    if out.is_empty() {
        bail!(
            "{}: no prompts (expected JSONL lines like {{\"prompt\": \"...\"}})",
            path.display()
        );
    }
    Ok(out)
}

/// The longest prompt line worth reading for the model in `model_dir`: what its context
/// could take (`Tokenizer::input_line_limit`).
pub fn prompt_line_limit(model_dir: &Path) -> Result<usize> {
    let config = ModelConfig::load(&model_dir.join("config.json"))?;
    let tokenizer = Tokenizer::load(model_dir)?;
    Ok(tokenizer.input_line_limit(config.max_context))
}

/// The instruction as a judge sees it: the "prompt" text, or the last user message.
pub fn instruction(obj: &Map<String, Value>) -> Result<String> {
    match (obj.get("prompt"), obj.get("messages")) {
        (Some(Value::String(p)), None) if !p.trim().is_empty() => Ok(p.clone()),
        (None, Some(Value::Array(messages))) => last_user(messages)
            .map(|i| {
                messages[i]["content"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .context("\"messages\" has no user message with string content"),
        (Some(Value::String(_)), None) => bail!("empty prompt"),
        (Some(_), Some(_)) => bail!("give either \"prompt\" or \"messages\", not both"),
        (Some(p), None) => bail!("\"prompt\" must be a string, found {p}"),
        (None, Some(m)) => bail!("\"messages\" must be a list, found {m}"),
        (None, None) => bail!("expected a \"prompt\" or \"messages\" field"),
    }
}

fn last_user(messages: &[Value]) -> Option<usize> {
    messages
        .iter()
        .rposition(|m| m["role"] == "user" && m["content"].is_string())
}

/// The prompt object with its instruction wrapped in the thought prompt (the last user
/// message, for chat messages); unchanged for the direct baseline.
pub fn wrap(obj: &Map<String, Value>, thought: Option<&ThoughtPrompt>) -> Map<String, Value> {
    let mut out = obj.clone();
    let Some(t) = thought else { return out };
    if let Some(Value::String(p)) = out.get_mut("prompt") {
        *p = t.wrap(p);
    } else if let Some(Value::Array(messages)) = out.get_mut("messages") {
        if let Some(i) = last_user(messages) {
            let wrapped = t.wrap(messages[i]["content"].as_str().unwrap_or_default());
            messages[i]["content"] = Value::String(wrapped);
        }
    }
    out
}

/// Token ids of the (wrapped) prompt, checked against the model's vocabulary and against
/// its context, which must leave room for at least one generated token.
pub fn render(
    obj: &Map<String, Value>,
    tokenizer: &Tokenizer,
    mode: PromptMode,
    vocab_size: usize,
    max_context: usize,
) -> Result<Vec<u32>> {
    let (_, ids) = render_prompt(obj, tokenizer, mode)?;
    if let Some(&bad) = ids.iter().find(|&&t| t as usize >= vocab_size) {
        bail!("token id {bad} is outside the model's vocabulary of {vocab_size}");
    }
    if ids.len() >= max_context {
        bail!(
            "the prompt is {} tokens, and the model's context is {max_context}",
            ids.len()
        );
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn instructions_and_wrapping() {
        let t = ThoughtPrompt::resolve("generic").unwrap();
        let p = obj(json!({"prompt": "Add 2 and 3.", "answer": "5"}));
        assert_eq!(instruction(&p).unwrap(), "Add 2 and 3.");
        let w = wrap(&p, Some(&t));
        assert_eq!(w["prompt"], t.wrap("Add 2 and 3."));
        assert_eq!(w["answer"], "5");
        assert_eq!(wrap(&p, None), p);

        let m = obj(json!({"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Add 2 and 3."}
        ]}));
        assert_eq!(instruction(&m).unwrap(), "Add 2 and 3.");
        let w = wrap(&m, Some(&t));
        assert_eq!(w["messages"][3]["content"], t.wrap("Add 2 and 3."));
        assert_eq!(w["messages"][1]["content"], "Hi");
        assert_eq!(w["messages"][0]["content"], "Be brief.");
    }

    #[test]
    fn bad_prompt_lines_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.jsonl");
        let cases = [
            (
                "{\"prompt\": \"ok\"}\n[1]\n",
                "p.jsonl:2",
                "expected a JSON object",
            ),
            (
                "{\"prompt\": \"ok\"}\n\n{\"prompt\": \" \"}\n",
                "p.jsonl:3",
                "empty prompt",
            ),
            (
                "{\"messages\": [{\"role\": \"system\", \"content\": \"x\"}]}\n",
                "p.jsonl:1",
                "no user message",
            ),
            (
                "{\"text\": \"x\"}\n",
                "p.jsonl:1",
                "\"prompt\" or \"messages\"",
            ),
            ("{\"prompt\": \"x\"\n", "p.jsonl:1", "EOF"),
            ("\n\n", "p.jsonl", "no prompts"),
        ];
        for (text, at, why) in cases {
            std::fs::write(&path, text).unwrap();
            let err = format!("{:#}", read_prompt_file(&path, 1 << 20).unwrap_err());
            assert!(err.contains(at) && err.contains(why), "{text:?}: {err}");
        }
    }
}
