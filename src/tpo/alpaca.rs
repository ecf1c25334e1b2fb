//! AlpacaEval's model-outputs file: one JSON list of `{"instruction", "output",
//! "generator"}`, plus the prompt line's other fields (AlpacaEval's own set carries
//! "dataset"), which `alpaca_eval --model_outputs FILE` reads. For thought-prompted answers
//! the output is the response alone, as the paper evaluates.

use super::prompts::instruction;
use anyhow::Result;
use serde_json::{Map, Value};
use std::path::Path;

/// The entry of one answer to the prompt line `source`.
pub fn entry(source: &Map<String, Value>, output: &str, generator: &str) -> Result<Value> {
    let mut e = Map::new();
    e.insert("instruction".into(), Value::String(instruction(source)?));
    e.insert("output".into(), Value::String(output.to_string()));
    e.insert("generator".into(), Value::String(generator.to_string()));
    for (k, v) in source {
        if !matches!(k.as_str(), "prompt" | "messages") && !e.contains_key(k) {
            e.insert(k.clone(), v.clone());
        }
    }
    Ok(Value::Object(e))
}

/// Writes the entries as one JSON list, atomically.
pub fn write(path: &Path, entries: Vec<Value>) -> Result<()> {
    let text = serde_json::to_string_pretty(&Value::Array(entries))? + "\n";
    crate::io::write_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entries_carry_the_instruction_and_the_other_fields() {
        let chat = json!({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Name a river."}], "dataset": "helpful_base"});
        let e = entry(chat.as_object().unwrap(), "The Nile.", "m").unwrap();
        assert_eq!(
            e,
            json!({"instruction": "Name a river.", "output": "The Nile.", "generator": "m", "dataset": "helpful_base"})
        );
        // A field of the prompt line named like one of ours does not replace it.
        let p = json!({"prompt": "Add 2 and 3.", "output": "old", "answer": 5});
        let e = entry(p.as_object().unwrap(), "5", "m").unwrap();
        assert_eq!(e["output"], "5");
        assert_eq!(e["answer"], 5);
        assert!(e.get("prompt").is_none());
    }
}
