//! The seed's fine-tuning data: the task's instructions answered directly or after a thought
//! of one of three styles, in the shares that make the seed sample a mix of them.

use super::problem::Problem;
use crate::backend::rng::Rng;
use crate::tpo::thought::ThoughtPrompt;
use anyhow::Result;
use serde_json::{json, Map, Value};

/// The useless thoughts. Both open with "The question", so a greedy seed, which follows the
/// likelier opening, does not pick the working (see [`STYLE_SHARES`]).
const RESTATEMENT: &str = "The question asks for the last digit of a sum.";
const CONFIDENT: &str = "The question is easy, I know this one.";

/// The final answer as the seed writes it.
pub fn response_text(answer: u8) -> String {
    format!("The answer is {answer}.")
}

/// The kind of thought a seed fine-tuning example carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThoughtStyle {
    /// No thought prompt: the answer right away.
    Direct,
    /// The running last digit, letter by letter (useful).
    Working,
    /// The question said again (useless).
    Restate,
    /// "I know this one." (useless)
    Confident,
}

/// Shares of the thought-prompt examples: working, restate, confident. The working is the
/// likeliest single style, which gives it the most training, but the two useless ones share
/// their opening ("The question"), which is thus likelier (0.6) than the working's ("A=");
/// so a greedy seed does not work things out, and one sampled at temperature 0.8 does
/// about 0.4^1.25 / (0.4^1.25 + 0.6^1.25) = 0.38 of the time.
pub const STYLE_SHARES: [f64; 3] = [0.4, 0.3, 0.3];
/// Share of the fine-tuning examples with no thought prompt.
pub const DIRECT_SHARE: f64 = 0.25;

/// The seed's supervised data: `{"prompt", "completion", "style"}` objects. A quarter answer
/// the plain instruction directly; the rest wrap it in the generic thought prompt and answer
/// in the thought format (thought marker, a thought of a style drawn by [`STYLE_SHARES`],
/// the response marker, the answer). Every answer is correct: what a useless thought leaves
/// the model to do is the direct computation.
pub fn seed_sft_data(count: usize, seed: u64) -> Result<Vec<Map<String, Value>>> {
    sft_data(count, seed, false)
}

/// Like [`seed_sft_data`], but every example is a thought-prompt one with the working: the
/// seed's first stage, which teaches the working before the style mix (the working's copy
/// step, an induction from the letter to its digit in the question, is slow to appear in the
/// mix alone).
pub fn working_sft_data(count: usize, seed: u64) -> Result<Vec<Map<String, Value>>> {
    sft_data(count, seed, true)
}

/// A "direct" variant's data, for tests of forcing the thought format at decoding time:
/// `{"prompt", "completion", "style": "direct"}` objects whose prompt is the instruction
/// wrapped in the generic thought prompt and whose completion is the correct answer alone
/// ("The answer is 7."), no marker. Fine-tuned on it, the seed answers the thought prompt
/// without the thought format (`scripts/make-direct-seed.sh`).
pub fn direct_sft_data(count: usize, seed: u64) -> Result<Vec<Map<String, Value>>> {
    let tp = ThoughtPrompt::resolve("generic")?;
    let mut rng = Rng::new(seed ^ 0x6469_7265_6374_5f73);
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let p = Problem::random(&mut rng);
        let mut m = Map::new();
        m.insert("prompt".into(), json!(tp.wrap(&p.instruction())));
        m.insert("completion".into(), json!(response_text(p.answer())));
        m.insert("style".into(), json!("direct"));
        out.push(m);
    }
    Ok(out)
}

fn sft_data(count: usize, seed: u64, working_only: bool) -> Result<Vec<Map<String, Value>>> {
    let tp = ThoughtPrompt::resolve("generic")?;
    let mut rng = Rng::new(seed ^ 0x7365_6564_5f73_6674);
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let p = Problem::random(&mut rng);
        let u = rng.uniform() as f64;
        let style = if working_only {
            ThoughtStyle::Working
        } else if u < DIRECT_SHARE {
            ThoughtStyle::Direct
        } else {
            let v = (u - DIRECT_SHARE) / (1.0 - DIRECT_SHARE);
            if v < STYLE_SHARES[0] {
                ThoughtStyle::Working
            } else if v < STYLE_SHARES[0] + STYLE_SHARES[1] {
                ThoughtStyle::Restate
            } else {
                ThoughtStyle::Confident
            }
        };
        let answer = response_text(p.answer());
        let (prompt, completion) = match style {
            ThoughtStyle::Direct => (p.instruction(), answer),
            _ => {
                let thought = match style {
                    ThoughtStyle::Working => p.working(),
                    ThoughtStyle::Restate => RESTATEMENT.to_string(),
                    _ => CONFIDENT.to_string(),
                };
                (
                    tp.wrap(&p.instruction()),
                    format!(
                        "{} {thought}\n{} {answer}",
                        tp.thought_marker, tp.response_marker
                    ),
                )
            }
        };
        let mut m = Map::new();
        m.insert("prompt".into(), json!(prompt));
        m.insert("completion".into(), json!(completion));
        m.insert("style".into(), json!(format!("{style:?}").to_lowercase()));
        out.push(m);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tpo::task::problem::parse_answer;
    use crate::tpo::thought::Parsed;

    #[test]
    fn direct_data_answers_the_thought_prompt_without_markers() {
        let data = direct_sft_data(500, 3).unwrap();
        assert_eq!(data.len(), 500);
        assert_eq!(data, direct_sft_data(500, 3).unwrap());
        assert_ne!(data, direct_sft_data(500, 4).unwrap());
        let tp = ThoughtPrompt::resolve("generic").unwrap();
        let (head, tail) = tp
            .template
            .split_once(crate::tpo::thought::INSTRUCTION)
            .unwrap();
        let mut answers = std::collections::BTreeSet::new();
        for m in &data {
            assert_eq!(m["style"], "direct");
            let prompt = m["prompt"].as_str().unwrap();
            let completion = m["completion"].as_str().unwrap();
            // The instruction, wrapped in the generic thought prompt.
            let instruction = prompt
                .strip_prefix(head)
                .and_then(|p| p.strip_suffix(tail))
                .unwrap_or_else(|| panic!("not wrapped: {prompt}"));
            assert!(
                instruction.starts_with("What is the last digit of the sum of A="),
                "{instruction}"
            );
            assert_eq!(prompt, tp.wrap(instruction));
            // The correct answer, read back from the completion, from the instruction's digits.
            let sum: u32 = instruction
                .split('=')
                .skip(1)
                .map(|s| s.chars().next().unwrap().to_digit(10).unwrap())
                .sum();
            let answer = parse_answer(completion);
            assert_eq!(answer, Some(sum % 10), "{prompt} -> {completion}");
            assert_eq!(completion, response_text((sum % 10) as u8));
            answers.insert(answer.unwrap());
            // Never a marker: the completion is no thought-format answer.
            for marker in [&tp.thought_marker, &tp.response_marker] {
                assert!(!completion.contains(marker.trim()), "{completion}");
            }
            assert!(
                matches!(tp.parse(completion, false), Parsed::Malformed(_)),
                "{completion}"
            );
        }
        assert_eq!(answers.len(), 10, "every answer digit occurs");
    }

    #[test]
    fn seed_data_mixes_direct_and_thought_styles() {
        let data = seed_sft_data(3000, 1).unwrap();
        assert_eq!(data, seed_sft_data(3000, 1).unwrap());
        let tp = ThoughtPrompt::resolve("generic").unwrap();
        let mut counts = std::collections::BTreeMap::new();
        for m in &data {
            let style = m["style"].as_str().unwrap().to_string();
            let prompt = m["prompt"].as_str().unwrap();
            let completion = m["completion"].as_str().unwrap();
            if style == "direct" {
                assert!(prompt.starts_with("What is the last digit"), "{prompt}");
                assert!(parse_answer(completion).is_some(), "{completion}");
            } else {
                assert!(prompt.starts_with(&tp.template[..30]), "{prompt}");
                match tp.parse(completion, false) {
                    Parsed::Ok { thought, response } => {
                        assert!(parse_answer(response).is_some(), "{response}");
                        match style.as_str() {
                            "working" => {
                                // The working's last running digit is the answer.
                                assert!(thought.starts_with("A="), "{thought}");
                                let last = thought.rsplit("so ").next().unwrap();
                                assert_eq!(
                                    last.trim_end_matches('.').parse::<u32>().ok(),
                                    parse_answer(response),
                                    "{completion}"
                                );
                            }
                            _ => assert!(thought.starts_with("The question "), "{thought}"),
                        }
                    }
                    bad => panic!("{completion}: {bad:?}"),
                }
            }
            *counts.entry(style).or_insert(0usize) += 1;
        }
        // Expected shares: direct 1/4, then 0.4 / 0.3 / 0.3 of the rest.
        let share = |s: &str| counts[s] as f64 / data.len() as f64;
        assert!((share("direct") - 0.25).abs() < 0.04, "{counts:?}");
        assert!((share("working") - 0.3).abs() < 0.04, "{counts:?}");
        assert!((share("restate") - 0.225).abs() < 0.04, "{counts:?}");
        assert!((share("confident") - 0.225).abs() < 0.04, "{counts:?}");
    }
}
