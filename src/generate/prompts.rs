//! Reading a prompts JSONL file: one `{"prompt": "..."}` or `{"messages": [...]}` per line,
//! rendered and tokenized up front so bad input fails before any work is done.

use crate::io::lines::for_each_line;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;

/// How prompt text reaches the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptMode {
    /// Through the model's chat template (plain text when the model has none).
    Chat,
    /// The prompt text as it is (`--no-chat-template`).
    Raw,
}

#[derive(Clone, Debug)]
pub struct Prompt {
    /// 1-based line number in the file.
    pub line: usize,
    /// The line's JSON object, echoed into the output.
    pub source: Value,
    /// The text given to the tokenizer.
    pub text: String,
    pub token_ids: Vec<u32>,
}

/// Reads, renders and tokenizes every prompt, checking each against the model's vocabulary
/// size and context length. Blank lines are skipped.
pub fn read_prompts(
    path: &Path,
    tokenizer: &Tokenizer,
    mode: PromptMode,
    vocab_size: usize,
    max_context: usize,
) -> Result<Vec<Prompt>> {
    let mut prompts = vec![];
    let limit = tokenizer.input_line_limit(max_context);
    for_each_line(path, "prompts", limit, |number, line| {
        prompts.push(parse_line(
            line,
            tokenizer,
            mode,
            vocab_size,
            max_context,
            number,
        )?);
        Ok(())
    })?;
    if prompts.is_empty() {
        bail!(
            "{}: no prompts (expected JSONL lines like {{\"prompt\": \"...\"}})",
            path.display()
        );
    }
    Ok(prompts)
}

fn parse_line(
    line: &str,
    tokenizer: &Tokenizer,
    mode: PromptMode,
    vocab_size: usize,
    max_context: usize,
    number: usize,
) -> Result<Prompt> {
    let source: Value = serde_json::from_str(line).context("not valid JSON")?;
    let obj = source
        .as_object()
        .context("expected a JSON object with \"prompt\" or \"messages\"")?;
    let (text, token_ids) = render_prompt(obj, tokenizer, mode)?;
    if let Some(bad) = token_ids.iter().find(|&&t| t as usize >= vocab_size) {
        bail!("token id {bad} is beyond the model's vocab_size {vocab_size}: tokenizer and model do not match");
    }
    if token_ids.len() >= max_context {
        bail!(
            "the prompt is {} tokens; the model's context is {max_context}, leaving no room to generate",
            token_ids.len()
        );
    }
    Ok(Prompt {
        line: number,
        source,
        text,
        token_ids,
    })
}

/// The prompt of a JSONL object (`prompt` text or chat `messages`) as the model sees it:
/// rendered through the chat template unless `mode` is Raw, and tokenized. Callers check
/// the ids against the model's vocabulary and context.
pub fn render_prompt(
    obj: &serde_json::Map<String, Value>,
    tokenizer: &Tokenizer,
    mode: PromptMode,
) -> Result<(String, Vec<u32>)> {
    let use_template = mode == PromptMode::Chat && tokenizer.has_chat_template();
    let text = match (obj.get("prompt"), obj.get("messages")) {
        (Some(Value::String(p)), None) => {
            if p.trim().is_empty() {
                bail!("empty prompt");
            }
            if use_template {
                tokenizer.render_chat(&serde_json::json!([{"role": "user", "content": p}]))?
            } else {
                p.clone()
            }
        }
        (None, Some(Value::Array(messages))) => {
            check_messages(messages)?;
            if !use_template {
                bail!(
                    "\"messages\" need a chat template, and {}",
                    match mode {
                        PromptMode::Raw => "--no-chat-template was given",
                        PromptMode::Chat => "the model has none",
                    }
                );
            }
            tokenizer.render_chat(&Value::Array(messages.clone()))?
        }
        (Some(_), Some(_)) => bail!("give either \"prompt\" or \"messages\", not both"),
        (Some(p), None) => bail!("\"prompt\" must be a string, found {p}"),
        (None, Some(m)) => bail!("\"messages\" must be a list, found {m}"),
        (None, None) => bail!("expected a \"prompt\" or \"messages\" field"),
    };
    // Chat text carries its own special tokens; raw text gets the tokenizer's (a BOS).
    let token_ids = tokenizer.encode(&text, !use_template)?;
    if token_ids.is_empty() {
        bail!("the prompt has no tokens");
    }
    Ok((text, token_ids))
}

fn check_messages(messages: &[Value]) -> Result<()> {
    if messages.is_empty() {
        bail!("empty \"messages\" list");
    }
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str);
        let content = m.get("content").and_then(Value::as_str);
        match (role, content) {
            (Some(_), Some(c)) if !c.trim().is_empty() => {}
            (Some(_), Some(_)) => bail!("messages[{i}] has empty content"),
            _ => bail!("messages[{i}] needs string fields \"role\" and \"content\""),
        }
    }
    Ok(())
}
