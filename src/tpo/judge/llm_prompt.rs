//! What an LLM judge is asked: a prompt template with `{instruction}` and `{response}`
//! (pointwise) or `{instruction}`, `{response_a}` and `{response_b}` (pairwise), the
//! built-in ones or the user's `--judge-prompt FILE`.
//!
//! Filling is one pass over the template: a response that itself contains "{response_b}"
//! is copied as written, never filled again. Other braces (a JSON example in the template)
//! are left alone.

use super::JudgeMode;
use anyhow::{bail, Result};

/// The built-in pointwise prompt: a 1-10 score after a short justification.
pub const POINTWISE: &str = "\
You are an expert judge of AI assistants. Rate how well the response below answers the \
user's instruction: whether it does what was asked, and how helpful, correct, clear and \
complete it is. Length is not a merit in itself: a response padded with repetition or \
irrelevant detail is worse, not better.

[Instruction]
{instruction}

[Response]
{response}

First explain your judgement in a few sentences. Then, on the last line, write the score as \
\"Score: N\", where N is a whole number from 1 (useless or wrong) to 10 (excellent).
";

/// The built-in pairwise prompt, in the manner of the paper's pairwise judge: an impartial
/// comparison, reasoning first, a bracketed verdict last. Each pair is asked in both orders.
pub const PAIRWISE: &str = "\
You are an impartial judge. Two AI assistants answered the same user instruction; decide \
which response is better. Consider which one follows the instruction more faithfully and is \
more helpful, accurate, and relevant. The order in which the responses are shown must not \
affect your decision, nor may their length: a longer response is better only if the extra \
content is useful.

[Instruction]
{instruction}

[Response A]
{response_a}

[Response B]
{response_b}

First compare the two responses briefly. Then, on the last line, give your verdict in \
exactly this form: \"[[A]]\" if response A is better, \"[[B]]\" if response B is better, \
or \"[[tie]]\" if neither is better.
";

/// The placeholders a template of `mode` must hold (and the ones it must not).
fn placeholders(mode: JudgeMode) -> (&'static [&'static str], &'static [&'static str]) {
    match mode {
        JudgeMode::Pointwise => (&["instruction", "response"], &["response_a", "response_b"]),
        JudgeMode::Pairwise => (&["instruction", "response_a", "response_b"], &["response"]),
    }
}

/// The built-in template of a mode.
pub fn builtin(mode: JudgeMode) -> &'static str {
    match mode {
        JudgeMode::Pointwise => POINTWISE,
        JudgeMode::Pairwise => PAIRWISE,
    }
}

/// Checks that `template` (read from `origin`) holds each placeholder its mode fills, and
/// none of the other mode's.
pub fn check(template: &str, mode: JudgeMode, origin: &str) -> Result<()> {
    let (needed, foreign) = placeholders(mode);
    let missing: Vec<String> = needed
        .iter()
        .filter(|p| !template.contains(&format!("{{{p}}}")))
        .map(|p| format!("{{{p}}}"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{origin}: a {} judge prompt must hold {}; it lacks {}",
            mode.as_str(),
            needed
                .iter()
                .map(|p| format!("{{{p}}}"))
                .collect::<Vec<_>>()
                .join(", "),
            missing.join(", ")
        );
    }
    if let Some(p) = foreign
        .iter()
        .find(|p| template.contains(&format!("{{{p}}}")))
    {
        bail!(
            "{origin}: {{{p}}} belongs to the other judge mode; a {} prompt is filled with {}",
            mode.as_str(),
            needed
                .iter()
                .map(|p| format!("{{{p}}}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// The template with each `{name}` of `values` replaced by its value, in one pass.
pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out =
        String::with_capacity(template.len() + values.iter().map(|v| v.1.len()).sum::<usize>());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let hit = values
            .iter()
            .find(|(name, _)| after.starts_with(name) && after[name.len()..].starts_with('}'));
        match hit {
            Some((name, value)) => {
                out.push_str(value);
                rest = &after[name.len() + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_prompts_hold_their_placeholders() {
        for mode in [JudgeMode::Pointwise, JudgeMode::Pairwise] {
            check(builtin(mode), mode, "built-in").unwrap();
        }
        let e = check(PAIRWISE, JudgeMode::Pointwise, "p.txt")
            .unwrap_err()
            .to_string();
        assert!(e.contains("p.txt") && e.contains("lacks {response}"), "{e}");
        let e = check(
            "{instruction} {response} {response_a}",
            JudgeMode::Pointwise,
            "p.txt",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("{response_a} belongs to the other judge mode"),
            "{e}"
        );
    }

    #[test]
    fn filling_is_one_pass_and_leaves_other_braces() {
        let t = "Q: {instruction}\nA: {response_a} | B: {response_b} {\"score\": 1} {x}{";
        let got = fill(
            t,
            &[
                ("instruction", "why {response_b}?"),
                ("response_a", "a}"),
                ("response_b", "b"),
            ],
        );
        assert_eq!(
            got,
            "Q: why {response_b}?\nA: a} | B: b {\"score\": 1} {x}{"
        );
        assert_eq!(fill("{response}", &[("response", "é{")]), "é{");
    }
}
