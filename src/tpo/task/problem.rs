//! The task's problems: the instruction, its answer and the working that reaches it, the
//! prompt sets drawn from them, and the reading of an answer back from a response.

use crate::backend::rng::Rng;
use serde_json::{json, Map, Value};

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
    pub(super) fn random(rng: &mut Rng) -> Problem {
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
}
