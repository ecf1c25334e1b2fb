//! Training data files: preference pairs (`prompt`, `chosen`, `rejected`) and prompt /
//! completion examples, read, tokenized and checked up front so that bad input fails with
//! `file:line` before any work is done.
//!
//! A completion is the text after the prompt: it is tokenized on its own and followed by
//! the end-of-turn token, so the model learns where to stop. The prompt goes through the
//! chat template (with the assistant's header) unless the mode is Raw.

use crate::generate::prompts::render_prompt;
use crate::generate::PromptMode;
use crate::io::lines::for_each_line;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};
use std::path::Path;

/// Turns the text fields of an example into checked token ids.
pub struct TextEncoder<'a> {
    pub tokenizer: &'a Tokenizer,
    pub mode: PromptMode,
    /// Appended to every completion.
    pub end_token: u32,
    pub vocab_size: usize,
    pub max_context: usize,
}

/// One preference pair; `reference` holds the reference model's summed log-probs of the
/// chosen and rejected completions when the file supplies them.
#[derive(Clone, Debug)]
pub struct PairExample {
    pub line: usize,
    pub source: Value,
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
    pub reference: Option<(f64, f64)>,
}

#[derive(Clone, Debug)]
pub struct CompletionExample {
    pub line: usize,
    pub source: Value,
    pub prompt: Vec<u32>,
    pub completion: Vec<u32>,
}

/// The fields of a pairs file that carry reference log-probs.
pub const REF_CHOSEN: &str = "ref_chosen_logps";
pub const REF_REJECTED: &str = "ref_rejected_logps";

impl TextEncoder<'_> {
    fn prompt(&self, obj: &Map<String, Value>) -> Result<Vec<u32>> {
        let (_, ids) = render_prompt(obj, self.tokenizer, self.mode)?;
        self.check_vocab(&ids)?;
        Ok(ids)
    }

    fn completion(
        &self,
        obj: &Map<String, Value>,
        field: &str,
        prompt: &[u32],
    ) -> Result<Vec<u32>> {
        let text = match obj.get(field) {
            Some(Value::String(s)) => s,
            Some(other) => bail!("\"{field}\" must be a string, found {other}"),
            None => bail!("missing field \"{field}\""),
        };
        if text.trim().is_empty() {
            bail!("empty \"{field}\"");
        }
        let mut ids = self.tokenizer.encode(text, false)?;
        ids.push(self.end_token);
        self.check_vocab(&ids)?;
        let total = prompt.len() + ids.len();
        if total > self.max_context {
            bail!(
                "prompt + \"{field}\" is {total} tokens ({} + {}); the model's context is {}",
                prompt.len(),
                ids.len(),
                self.max_context
            );
        }
        Ok(ids)
    }

    fn check_vocab(&self, ids: &[u32]) -> Result<()> {
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= self.vocab_size) {
            bail!(
                "token id {bad} is beyond the model's vocab_size {}: tokenizer and model do not match",
                self.vocab_size
            );
        }
        Ok(())
    }
}

/// Reads a pairs JSONL file. Reference log-probs must be given on every line or on none.
pub fn read_pairs(path: &Path, enc: &TextEncoder) -> Result<Vec<PairExample>> {
    let pairs = read_jsonl(path, "pairs", enc, |line, source, obj| {
        let prompt = enc.prompt(obj)?;
        let chosen = enc.completion(obj, "chosen", &prompt)?;
        let rejected = enc.completion(obj, "rejected", &prompt)?;
        if chosen == rejected {
            bail!("\"chosen\" and \"rejected\" are the same text: the pair prefers nothing");
        }
        let reference = match (obj.get(REF_CHOSEN), obj.get(REF_REJECTED)) {
            (None, None) => None,
            (Some(c), Some(r)) => Some((log_prob(REF_CHOSEN, c)?, log_prob(REF_REJECTED, r)?)),
            _ => bail!("give both \"{REF_CHOSEN}\" and \"{REF_REJECTED}\", or neither"),
        };
        Ok(PairExample {
            line,
            source,
            prompt,
            chosen,
            rejected,
            reference,
        })
    })?;
    let given = pairs.iter().filter(|p| p.reference.is_some()).count();
    if given != 0 && given != pairs.len() {
        let missing = pairs
            .iter()
            .find(|p| p.reference.is_none())
            .expect("some lack");
        bail!(
            "{}:{}: no reference log-probs, though other lines have them; give them on every line or on none",
            path.display(),
            missing.line
        );
    }
    Ok(pairs)
}

/// Reads a JSONL file of `prompt` (or `messages`) and `completion`.
pub fn read_completions(path: &Path, enc: &TextEncoder) -> Result<Vec<CompletionExample>> {
    read_jsonl(path, "examples", enc, |line, source, obj| {
        let prompt = enc.prompt(obj)?;
        let completion = enc.completion(obj, "completion", &prompt)?;
        Ok(CompletionExample {
            line,
            source,
            prompt,
            completion,
        })
    })
}

fn log_prob(field: &str, v: &Value) -> Result<f64> {
    match v.as_f64() {
        Some(x) if x.is_finite() && x <= 0.0 => Ok(x),
        _ => bail!("\"{field}\" must be a log-probability: a finite number <= 0, found {v}"),
    }
}

/// Parses each non-blank line of a JSONL file as an object and hands it to `parse` with its
/// 1-based line number; errors name `file:line`. Lines are read one at a time, each bounded
/// by what `enc`'s model could take.
fn read_jsonl<T>(
    path: &Path,
    what: &str,
    enc: &TextEncoder,
    parse: impl Fn(usize, Value, &Map<String, Value>) -> Result<T>,
) -> Result<Vec<T>> {
    let mut out = vec![];
    let limit = enc.tokenizer.input_line_limit(enc.max_context);
    for_each_line(path, what, limit, |number, line| {
        let source: Value = serde_json::from_str(line).context("not valid JSON")?;
        let obj = source.as_object().cloned();
        let obj = obj.context("expected a JSON object")?;
        out.push(parse(number, source, &obj)?);
        Ok(())
    })?;
    if out.is_empty() {
        bail!(
            "{}: no {what} (the file has no JSONL lines)",
            path.display()
        );
    }
    Ok(out)
}
