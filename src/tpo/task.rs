//! The built-in task: a procedurally generated instruction family whose answers a programmatic
//! judge can check, and on which writing things out in a thought helps.
//!
//! The task is "last digit of a sum": 5 to 8 single digits, named by letters ("What is the
//! last digit of the sum of A=3, B=5, C=7, D=2, E=9?"). Answering directly asks a small
//! transformer to add up to eight digits modulo 10 in one forward pass, which it does little
//! better than chance. Written out as a running last digit ("A=3 so 3. B=5 so 8. C=7 so 5.
//! D=2 so 7. E=9 so 6.") every step is a copy of the question's own "B=5" (each letter occurs
//! there once, and the digit follows it the same way in both places) and one entry of a
//! 10x10 table, from the digit just copied and the previous step's, both at fixed distances
//! back; a small model learns that reliably. The judge (`builtin:last-digit`) reads only the
//! response and scores 1 for the right final digit, 0 otherwise.
//!
//! The seed's fine-tuning data ([`seed_sft_data`]) answers the instruction directly, and,
//! wrapped in the generic thought prompt, after one of three thoughts: the running digits
//! (useful), a restatement of the question, or "I know this one" (useless). The seed thus
//! samples a mix of thought styles, and TPO can learn which of them earn good responses.

use super::judge::{Judge, JudgeGroup};
use super::thought::ThoughtPrompt;
use crate::backend::rng::Rng;
use crate::io::{create_dir_atomic, write_atomic};
use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use std::path::Path;

/// The judge's name: `--judge builtin:last-digit`.
pub const JUDGE_NAME: &str = "last-digit";
/// Fewest and most digits in one instruction.
pub const MIN_TERMS: usize = 5;
pub const MAX_TERMS: usize = 8;

const LETTERS: &[u8] = b"ABCDEFGH";

/// One instruction of the task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub digits: Vec<u8>,
}

impl Problem {
    fn random(rng: &mut Rng) -> Problem {
        let n = MIN_TERMS + (rng.next_u64() % (MAX_TERMS - MIN_TERMS + 1) as u64) as usize;
        Problem {
            digits: (0..n).map(|_| (rng.next_u64() % 10) as u8).collect(),
        }
    }

    fn letter(i: usize) -> char {
        LETTERS[i] as char
    }

    /// "A=3, B=5, C=7": each letter with its digit, as the instruction and the working write
    /// it.
    fn pairs(&self) -> Vec<String> {
        self.digits
            .iter()
            .enumerate()
            .map(|(i, d)| format!("{}={d}", Self::letter(i)))
            .collect()
    }

    pub fn instruction(&self) -> String {
        format!(
            "What is the last digit of the sum of {}?",
            self.pairs().join(", ")
        )
    }

    pub fn answer(&self) -> u8 {
        (self.digits.iter().map(|&d| d as u32).sum::<u32>() % 10) as u8
    }

    /// The useful thought: each letter's "X=d" copied from the question, then the last digit
    /// of the running total ("A=3 so 3. B=5 so 8. C=7 so 5."). Each step is a copy of the
    /// question's own text (the letter occurs there once) and one 10x10 lookup of the digit
    /// just copied and the previous step's digit, both at fixed distances back.
    pub fn working(&self) -> String {
        let mut total = 0u32;
        let steps: Vec<String> = self
            .pairs()
            .into_iter()
            .zip(&self.digits)
            .map(|(pair, &d)| {
                total = (total + d as u32) % 10;
                format!("{pair} so {total}.")
            })
            .collect();
        steps.join(" ")
    }
}

/// The useless thoughts. Both open with "The question", so a greedy seed, which follows the
/// likelier opening, does not pick the working (see [`STYLE_SHARES`]).
const RESTATEMENT: &str = "The question asks for the last digit of a sum.";
const CONFIDENT: &str = "The question is easy, I know this one.";

/// Whether a thought writes out the working: at least one step "X=d so r." (the demo
/// counts these to show how the thoughts change).
pub fn writes_working(thought: &str) -> bool {
    thought.split('.').any(|step| {
        let b = step.trim().as_bytes();
        b.len() == 8
            && LETTERS.contains(&b[0])
            && b[1] == b'='
            && b[2].is_ascii_digit()
            && &b[3..7] == b" so "
            && b[7].is_ascii_digit()
    })
}

/// The final answer as the seed writes it.
pub fn response_text(answer: u8) -> String {
    format!("The answer is {answer}.")
}

/// `count` prompts of the task, deterministic for `seed`: each `{"prompt": instruction,
/// "answer": digit}`. Two seeds draw independently; a prompt repeats across two sets of 128 and
/// 200 prompts with probability about 0.1 (the smallest problems, 5 digits, have 10^5
/// variants and make up a quarter of each set: 128 * 200 / 16 / 10^5 = 0.016 expected shared
/// 5-digit prompts, fewer for longer ones).
pub fn make_prompts(count: usize, seed: u64) -> Vec<Map<String, Value>> {
    let mut rng = Rng::new(seed ^ 0x6c61_7374_6469_6769);
    (0..count)
        .map(|_| {
            let p = Problem::random(&mut rng);
            let mut m = Map::new();
            m.insert("prompt".into(), json!(p.instruction()));
            m.insert("answer".into(), json!(p.answer()));
            m
        })
        .collect()
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

/// The digit a response gives: "7", "7." or "The answer is 7." (case and surrounding
/// whitespace aside); anything else gives none.
pub fn parse_answer(response: &str) -> Option<u32> {
    let mut s = response.trim();
    s = s.strip_suffix('.').unwrap_or(s).trim_end();
    if s.get(..13)
        .is_some_and(|p| p.eq_ignore_ascii_case("the answer is"))
    {
        s = s[13..].trim_start();
    }
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

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

/// The seed checkpoint, made by `scripts/make-seed.sh` and embedded in the binary.
const SEED_FILES: [(&str, &[u8]); 5] = [
    (
        "config.json",
        include_bytes!("../../assets/seed/config.json"),
    ),
    (
        "generation_config.json",
        include_bytes!("../../assets/seed/generation_config.json"),
    ),
    (
        "tokenizer.json",
        include_bytes!("../../assets/seed/tokenizer.json"),
    ),
    (
        "tokenizer_config.json",
        include_bytes!("../../assets/seed/tokenizer_config.json"),
    ),
    (
        "model.safetensors",
        include_bytes!("../../assets/seed/model.safetensors"),
    ),
];

/// Writes the embedded seed checkpoint to `dir`, which must not exist yet.
pub fn write_seed(dir: &Path) -> Result<()> {
    create_dir_atomic(dir, |tmp| {
        for (name, bytes) in SEED_FILES {
            write_atomic(&tmp.join(name), bytes)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_without_tripping_on_other_text() {
        assert_eq!(parse_answer("The answer is 7."), Some(7));
        assert_eq!(parse_answer(" the ANSWER is  7 "), Some(7));
        assert_eq!(parse_answer("7"), Some(7));
        // A multi-byte character where the prefix would end: no answer, no panic.
        assert_eq!(parse_answer("The answer xé 7"), None);
        assert_eq!(parse_answer("The answer is seven"), None);
        assert_eq!(parse_answer(""), None);
    }

    #[test]
    fn working_is_told_from_the_useless_thoughts() {
        assert!(writes_working("A=3 so 3. B=5 so 8."));
        assert!(writes_working("A=3 so 3"));
        assert!(!writes_working(
            "The question asks for the last digit of a sum."
        ));
        assert!(!writes_working("The question is easy, I know this one."));
        assert!(!writes_working("A=3 so 13."));
        assert!(!writes_working(""));
    }

    #[test]
    fn prompts_are_deterministic_and_well_formed() {
        let a = make_prompts(300, 7);
        assert_eq!(a, make_prompts(300, 7));
        assert_ne!(a, make_prompts(300, 8));
        let mut lengths = std::collections::BTreeSet::new();
        for m in &a {
            let prompt = m["prompt"].as_str().unwrap();
            let answer = m["answer"].as_u64().unwrap();
            // Recompute the answer from the text: the digits after each "=".
            let digits: Vec<u64> = prompt
                .split('=')
                .skip(1)
                .map(|s| s.chars().next().unwrap().to_digit(10).unwrap() as u64)
                .collect();
            assert!((5..=8).contains(&digits.len()), "{prompt}");
            lengths.insert(digits.len());
            assert_eq!(digits.iter().sum::<u64>() % 10, answer, "{prompt}");
            assert!(
                prompt.starts_with("What is the last digit of the sum of A="),
                "{prompt}"
            );
            assert!(prompt.ends_with('?'), "{prompt}");
        }
        assert_eq!(lengths.len(), 4, "every length from 5 to 8 occurs");
    }

    #[test]
    fn an_example_instruction_and_its_working() {
        let p = Problem {
            digits: vec![3, 5, 7, 2, 9],
        };
        assert_eq!(
            p.instruction(),
            "What is the last digit of the sum of A=3, B=5, C=7, D=2, E=9?"
        );
        // 3, 8, 15, 17, 26.
        assert_eq!(p.answer(), 6);
        assert_eq!(
            p.working(),
            "A=3 so 3. B=5 so 8. C=7 so 5. D=2 so 7. E=9 so 6."
        );
        // Eight nines: 9, 18, 27, ..., 72.
        let p = Problem { digits: vec![9; 8] };
        assert_eq!(
            p.instruction(),
            "What is the last digit of the sum of A=9, B=9, C=9, D=9, E=9, F=9, G=9, H=9?"
        );
        assert_eq!(p.answer(), 2);
        assert_eq!(
            p.working(),
            "A=9 so 9. B=9 so 8. C=9 so 7. D=9 so 6. E=9 so 5. F=9 so 4. G=9 so 3. H=9 so 2."
        );
    }

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
                match tp.parse(completion) {
                    super::super::thought::Parsed::Ok { thought, response } => {
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

    #[test]
    fn write_seed_writes_a_loadable_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("seed");
        write_seed(&dir).unwrap();
        let model = crate::model::Model::load(&dir).unwrap();
        let tokenizer = crate::tokenizer::Tokenizer::load(&dir).unwrap();
        assert_eq!(model.config.vocab_size, tokenizer.vocab_size());
        assert!(tokenizer.has_chat_template());
        // The task's text tokenizes with every digit its own token.
        let ids = tokenizer.encode("A=37", false).unwrap();
        assert_eq!(ids.len(), 4, "{ids:?}");
        // The directory must not exist yet.
        assert!(write_seed(&dir).is_err());
    }
}
