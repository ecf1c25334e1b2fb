//! Text to token ids and back (tokenizer.json through the tokenizers crate), and chat
//! messages to prompt text (the Jinja chat template of tokenizer_config.json).

use crate::chat_compat;
use anyhow::{anyhow, bail, Context, Result};
use minijinja::{Environment, ErrorKind};
use serde_json::Value;
use std::path::{Path, PathBuf};

#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    chat: Option<Environment<'static>>,
    /// The file the chat template came from, for errors met while rendering it.
    template_file: PathBuf,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

const TEMPLATE: &str = "chat";

impl Tokenizer {
    /// Loads tokenizer.json, and the chat template from tokenizer_config.json (or
    /// chat_template.jinja beside it) when the model has one.
    pub fn load(dir: &Path) -> Result<Tokenizer> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            bail!("{}: tokenizer file not found", path.display());
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| anyhow!("{}: cannot load tokenizer: {e}", path.display()))?;
        let config_path = dir.join("tokenizer_config.json");
        let config: Value = if config_path.exists() {
            let text = std::fs::read_to_string(&config_path)
                .with_context(|| format!("cannot read {}", config_path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{}: not valid JSON", config_path.display()))?
        } else {
            Value::Null
        };
        let special = |name: &str| match config.get(name) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).map(str::to_owned),
            _ => None,
        };
        let jinja_path = dir.join("chat_template.jinja");
        let (source, template_file) = if jinja_path.exists() {
            let text = std::fs::read_to_string(&jinja_path)
                .with_context(|| format!("cannot read {}", jinja_path.display()))?;
            (Some(text), jinja_path)
        } else {
            let source = match config.get("chat_template") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Array(list)) => Some(
                    list.iter()
                        .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                        .or(list.first())
                        .and_then(|t| t.get("template"))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .with_context(|| {
                            format!(
                                "{}: field `chat_template`: a list needs {{\"name\", \"template\"}} entries with a template string",
                                config_path.display()
                            )
                        })?,
                ),
                Some(other) => bail!(
                    "{}: field `chat_template`: expected a template string or a list of {{\"name\", \"template\"}}, found {other}",
                    config_path.display()
                ),
            };
            (source, config_path.clone())
        };
        let chat = match source {
            Some(src) => Some(chat_environment(src).with_context(|| {
                format!(
                    "{}: the chat template does not compile",
                    template_file.display()
                )
            })?),
            None => None,
        };
        Ok(Tokenizer {
            inner,
            chat,
            template_file,
            bos_token: special("bos_token"),
            eos_token: special("eos_token"),
        })
    }

    pub fn has_chat_template(&self) -> bool {
        self.chat.is_some()
    }

    /// Renders chat messages ([{"role", "content"}, ...]) into the text that precedes the
    /// assistant's reply.
    pub fn render_chat(&self, messages: &Value) -> Result<String> {
        self.render_messages(messages, true)
    }

    /// Renders chat messages as they are, with the generation prompt (the opening of an
    /// assistant turn) after them or not: a finished conversation, for a reward model, has
    /// none.
    pub fn render_messages(&self, messages: &Value, add_generation_prompt: bool) -> Result<String> {
        let env = self
            .chat
            .as_ref()
            .context("the model has no chat template")?;
        let template = env.get_template(TEMPLATE)?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        };
        template.render(ctx).map_err(|e| {
            anyhow!(
                "the chat template of {}: {e:#}",
                self.template_file.display()
            )
        })
    }

    /// Token ids of `text`; `add_special_tokens` adds what the tokenizer's post-processor
    /// adds (a BOS, usually), as transformers does for raw text but not for chat text.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| anyhow!("tokenizer: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| anyhow!("tokenizer: {e}"))
    }

    /// Text of `ids` with special tokens kept (for matching stop strings such as "<|end|>").
    pub fn decode_with_special(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| anyhow!("tokenizer: {e}"))
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// An upper bound of the text bytes one token stands for: the longest token string in
    /// the vocabulary (a byte-level token's string is never shorter than its bytes), and at
    /// least 16.
    pub fn max_token_bytes(&self) -> usize {
        let longest = self.inner.get_vocab(true).keys().map(String::len).max();
        longest.unwrap_or(0).max(16)
    }

    /// The longest JSONL input line worth reading for a model of `context` tokens (see
    /// `line_limit`).
    pub fn input_line_limit(&self, context: usize) -> usize {
        crate::io::lines::line_limit(context, self.max_token_bytes())
    }
}

/// A Jinja environment configured as transformers renders chat templates (its additions in
/// `chat_compat`).
fn chat_environment(source: String) -> Result<Environment<'static>> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(chat_compat::unknown_method);
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_function("strftime_now", chat_compat::strftime_now);
    env.add_filter("tojson", chat_compat::tojson);
    env.add_filter("trim", chat_compat::trim);
    env.add_template_owned(TEMPLATE, source)?;
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn templates_render_with_python_methods_and_trimmed_blocks() {
        let src = "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system') }}{% endif %}\n<{{ m.role }}>{{ m.content.strip() }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";
        let env = chat_environment(src.to_string()).unwrap();
        let t = env.get_template(TEMPLATE).unwrap();
        let out = t
            .render(minijinja::context! { messages => json!([{"role": "user", "content": "  hi "}]), add_generation_prompt => true })
            .unwrap();
        assert_eq!(out, "<user>hi\n<assistant>");
        let err = t
            .render(minijinja::context! { messages => json!([{"role": "system", "content": "x"}]), add_generation_prompt => true })
            .unwrap_err();
        assert!(format!("{err:#}").contains("no system"));
    }
}
