//! The built-in task's programmatic judge (`--judge builtin:last-digit`): it checks a
//! response's final digit against the answer stored with the prompt.

use super::{Judge, JudgeGroup};
use crate::tpo::task::problem::parse_answer;
use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The judge's name: `--judge builtin:last-digit`.
pub const JUDGE_NAME: &str = "last-digit";

/// `builtin:last-digit`: 1 for a response whose number is the prompt's "answer", else 0.
struct LastDigitJudge;

impl Judge for LastDigitJudge {
    fn describe(&self) -> String {
        format!("builtin:{JUDGE_NAME} (1 for the right final digit, 0 otherwise)")
    }

    fn score(&mut self, groups: &[JudgeGroup], progress: &dyn Fn(usize)) -> Result<Vec<Vec<f64>>> {
        groups
            .iter()
            .map(|g| {
                let answer = g
                    .source
                    .get("answer")
                    .and_then(Value::as_u64)
                    .with_context(|| {
                        format!(
                            "builtin:{JUDGE_NAME}: the prompt \"{}\" has no integer \"answer\" field",
                            g.instruction
                        )
                    })?;
                let scores = g
                    .responses
                    .iter()
                    .map(|r| f64::from(parse_answer(r).map(u64::from) == Some(answer)))
                    .collect();
                progress(g.responses.len());
                Ok(scores)
            })
            .collect()
    }
}

/// The programmatic judge called NAME (`--judge builtin:NAME`).
pub fn builtin_judge(name: &str) -> Result<Box<dyn Judge>> {
    match name {
        JUDGE_NAME => Ok(Box::new(LastDigitJudge)),
        _ => bail!("--judge builtin:{name}: no such built-in judge (expected {JUDGE_NAME})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map};

    #[test]
    fn the_judge_reads_the_final_digit() {
        let mut judge = builtin_judge("last-digit").unwrap();
        let mut source = Map::new();
        source.insert("prompt".into(), json!("What is the last digit of ..."));
        source.insert("answer".into(), json!(4));
        let responses = vec![
            "The answer is 4.",
            "  the answer is 4  ",
            "4",
            "The answer is 5.",
            "The answer is 14.",
            "The answer is",
            "",
            "4 or 5",
            "A 3, B 4. The answer is 4.",
            "The answer is 4.4",
            "fish",
        ];
        let expected = [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let groups = [JudgeGroup {
            source: &source,
            instruction: "What is the last digit of ...",
            responses,
        }];
        let seen = std::cell::Cell::new(0);
        let scores = judge.score(&groups, &|n| seen.set(seen.get() + n)).unwrap();
        assert_eq!(scores, vec![expected.to_vec()]);
        assert_eq!(seen.get(), 11);

        source.remove("answer");
        let groups = [JudgeGroup {
            source: &source,
            instruction: "q",
            responses: vec!["4"],
        }];
        let err = judge.score(&groups, &|_| {}).unwrap_err().to_string();
        assert!(err.contains("answer"), "{err}");
        assert!(builtin_judge("nope").is_err());
    }
}
