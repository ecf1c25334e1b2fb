//! Thought prompts, and the parser that splits a completion into its thought and response.
//!
//! A thought prompt wraps the user's instruction and asks for thoughts after one fixed marker,
//! then the response after a second. Fixed markers make parsing plain string matching; what
//! cannot be split is malformed, kept in the candidates file and never shown to the judge.

use super::markers::find;
use crate::generate::steer::Phase;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Where the instruction goes in a template.
pub const INSTRUCTION: &str = "{instruction}";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThoughtPrompt {
    /// "generic", "specific", or the template file's path.
    pub name: String,
    /// The user turn, with `{instruction}` where the instruction goes.
    pub template: String,
    pub thought_marker: String,
    pub response_marker: String,
}

const THOUGHT_MARKER: &str = "My private thoughts:";
const RESPONSE_MARKER: &str = "My response:";

const GENERIC: &str = "Answer the request below as well as you can. Think before you answer: \
first write your private thoughts after the line \"My private thoughts:\", then write your \
answer after the line \"My response:\". Only the answer is shown to the person asking; they \
never see your thoughts.\n\nRequest: {instruction}";

const SPECIFIC: &str = "Answer the request below as well as you can. Before answering, write \
private notes after the line \"My private thoughts:\". In them, write a first draft of your \
answer, then review the draft: check it against the request, find its mistakes and what it \
leaves out, and decide how to fix them. Then write the final, corrected answer after the line \
\"My response:\". Only the final answer is shown to the person asking; they never see your \
notes or the draft.\n\nRequest: {instruction}";

impl ThoughtPrompt {
    /// A built-in prompt by name (`generic` or `specific`), or a template file: JSON with
    /// "template" (holding `{instruction}` once), "thought_marker" and "response_marker".
    pub fn resolve(name_or_path: &str) -> Result<ThoughtPrompt> {
        let builtin = |template: &str| ThoughtPrompt {
            name: name_or_path.to_string(),
            template: template.to_string(),
            thought_marker: THOUGHT_MARKER.to_string(),
            response_marker: RESPONSE_MARKER.to_string(),
        };
        match name_or_path {
            "generic" => Ok(builtin(GENERIC)),
            "specific" => Ok(builtin(SPECIFIC)),
            path => Self::load(Path::new(path)),
        }
    }

    fn load(path: &Path) -> Result<ThoughtPrompt> {
        if !path.exists() {
            bail!(
                "--thought-prompt {}: not \"generic\" or \"specific\", and no such file",
                path.display()
            );
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read thought prompt file {}", path.display()))?;
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            template: String,
            thought_marker: String,
            response_marker: String,
        }
        let f: File = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: expected JSON {{\"template\": \"...{INSTRUCTION}...\", \"thought_marker\": \"...\", \"response_marker\": \"...\"}}",
                path.display()
            )
        })?;
        let prompt = ThoughtPrompt {
            name: path.display().to_string(),
            template: f.template,
            thought_marker: f.thought_marker,
            response_marker: f.response_marker,
        };
        prompt
            .check()
            .with_context(|| format!("thought prompt file {}", path.display()))?;
        Ok(prompt)
    }

    fn check(&self) -> Result<()> {
        if self.template.matches(INSTRUCTION).count() != 1 {
            bail!("the template must hold {INSTRUCTION} exactly once");
        }
        let (t, r) = (self.thought_marker.trim(), self.response_marker.trim());
        if t.is_empty() || r.is_empty() {
            bail!("the markers must not be empty");
        }
        if t.contains(r) || r.contains(t) {
            bail!("neither marker may contain the other (\"{t}\", \"{r}\")");
        }
        Ok(())
    }

    /// The user turn for one instruction.
    pub fn wrap(&self, instruction: &str) -> String {
        self.template.replacen(INSTRUCTION, instruction, 1)
    }

    /// The text that opens the assistant turn with `--prefill-thought`.
    pub fn prefill(&self) -> &str {
        self.thought_marker.trim()
    }

    /// The text fed where the response marker is forced: a line of its own.
    pub fn forced_response(&self) -> String {
        format!("\n{}", self.response_marker.trim())
    }

    /// Splits a completion into thought and response. The completion must open with the
    /// thought marker (after whitespace), or start inside its thought when the prompt ended
    /// with it (`prefilled`), and hold each marker once, the response marker after the
    /// thought's; the response must not be empty. An empty thought is allowed: the judge
    /// sees only the response. Markers match as `markers::find` documents.
    pub fn parse<'a>(&self, completion: &'a str, prefilled: bool) -> Parsed<'a> {
        let thoughts = find(completion, &self.thought_marker, true);
        let body = if prefilled {
            if !thoughts.is_empty() {
                return Parsed::Malformed("the thought marker repeats");
            }
            0
        } else {
            match thoughts.as_slice() {
                [] => return Parsed::Malformed("no thought marker"),
                [first, ..] if !completion[..first.start].trim().is_empty() => {
                    return Parsed::Malformed("text before the thought marker")
                }
                [_, _, ..] => return Parsed::Malformed("the thought marker repeats"),
                [only] => only.end,
            }
        };
        let responses = find(&completion[body..], &self.response_marker, true);
        let r = match responses.as_slice() {
            [] => return Parsed::Malformed("no response marker"),
            [_, _, ..] => return Parsed::Malformed("the response marker repeats"),
            [only] => body + only.start..body + only.end,
        };
        let thought = completion[body..r.start].trim();
        let response = completion[r.end..].trim();
        if response.is_empty() {
            return Parsed::Malformed("empty response");
        }
        Parsed::Ok { thought, response }
    }

    /// Where a growing completion stands (see `parse`; a marker must be whole to count).
    pub fn phase(&self, completion: &str, prefilled: bool) -> Phase {
        let body = if prefilled {
            0
        } else {
            match find(completion, &self.thought_marker, false).first() {
                Some(t) => t.end,
                None => return Phase::BeforeThought,
            }
        };
        if find(&completion[body..], &self.response_marker, false).is_empty() {
            Phase::Thought
        } else {
            Phase::Response
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    Ok {
        thought: &'a str,
        response: &'a str,
    },
    /// Why it could not be split.
    Malformed(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic() -> ThoughtPrompt {
        ThoughtPrompt::resolve("generic").unwrap()
    }

    #[test]
    fn splits_a_well_formed_completion() {
        let p = generic();
        let text = format!(
            "\n {} 2 and 3 make 5.\n{}  The sum is 5. \n",
            p.thought_marker, p.response_marker
        );
        assert_eq!(
            p.parse(&text, false),
            Parsed::Ok {
                thought: "2 and 3 make 5.",
                response: "The sum is 5."
            }
        );
    }

    #[test]
    fn an_empty_thought_is_allowed_an_empty_response_is_not() {
        let p = generic();
        let empty_thought = format!("{}\n{} 5", p.thought_marker, p.response_marker);
        assert_eq!(
            p.parse(&empty_thought, false),
            Parsed::Ok {
                thought: "",
                response: "5"
            }
        );
        let empty_response = format!("{} add them\n{} \n ", p.thought_marker, p.response_marker);
        assert_eq!(
            p.parse(&empty_response, false),
            Parsed::Malformed("empty response")
        );
    }

    #[test]
    fn missing_and_repeated_markers_are_malformed() {
        let p = generic();
        let (t, r) = (&p.thought_marker, &p.response_marker);
        let cases = [
            ("The answer is 5.".to_string(), "no thought marker"),
            (format!("{r} 5"), "no thought marker"),
            (
                format!("Sure! {t} x {r} 5"),
                "text before the thought marker",
            ),
            (format!("{t} add them, 5"), "no response marker"),
            (format!("{t} a {t} b {r} 5"), "the thought marker repeats"),
            (format!("{t} a {r} 5 {r} 6"), "the response marker repeats"),
            (
                format!("{t} a {r} 5 {t} more"),
                "the thought marker repeats",
            ),
        ];
        for (text, why) in cases {
            assert_eq!(p.parse(&text, false), Parsed::Malformed(why), "{text:?}");
        }
    }

    #[test]
    fn decorated_markers_parse_and_near_misses_stay_malformed() {
        let p = generic();
        let parsed = [
            "**My private thoughts:** add them\n**My response:** 5",
            "## My private thoughts\nadd them\n## My response\n5",
            "my private thoughts: add them\nMY RESPONSE : 5",
            "My Private Thoughts:\nadd them\n\n**My response**: 5",
            "> My private thoughts: add them\n> My response: 5",
        ];
        for text in parsed {
            assert_eq!(
                p.parse(text, false),
                Parsed::Ok {
                    thought: "add them",
                    response: "5"
                },
                "{text:?}"
            );
        }
        let malformed = [
            (
                "My private thought: add them\nMy response: 5",
                "no thought marker",
            ),
            (
                "My private thoughts: add them\nMy responses: 5",
                "no response marker",
            ),
            (
                "My private thoughts: add them\nMy response will be 5",
                "no response marker",
            ),
            (
                "My private thoughts: add them\nin my response: 5",
                "no response marker",
            ),
            (
                "My private thoughts: add\n## My response\n## my response: 5",
                "the response marker repeats",
            ),
            (
                "Sure!\n## My private thoughts\nadd\nMy response: 5",
                "text before the thought marker",
            ),
        ];
        for (text, why) in malformed {
            assert_eq!(p.parse(text, false), Parsed::Malformed(why), "{text:?}");
        }
    }

    #[test]
    fn a_prefilled_completion_starts_inside_its_thought() {
        let p = generic();
        assert_eq!(
            p.parse(" add them\nMy response: 5", true),
            Parsed::Ok {
                thought: "add them",
                response: "5"
            }
        );
        assert_eq!(
            p.parse(" add\nMy private thoughts: again\nMy response: 5", true),
            Parsed::Malformed("the thought marker repeats")
        );
        assert_eq!(p.parse(" 5", true), Parsed::Malformed("no response marker"));
        // Not prefilled, the same text has no thought marker.
        assert_eq!(
            p.parse(" add them\nMy response: 5", false),
            Parsed::Malformed("no thought marker")
        );
    }

    #[test]
    fn the_phase_of_a_growing_completion() {
        let p = generic();
        let cases = [
            ("Sure", false, Phase::BeforeThought),
            ("My private thou", false, Phase::BeforeThought),
            ("My private thoughts: add", false, Phase::Thought),
            ("## My private thoughts", false, Phase::BeforeThought),
            ("## My private thoughts\n", false, Phase::Thought),
            (
                "My private thoughts: add\n**My response",
                false,
                Phase::Thought,
            ),
            (
                "My private thoughts: add\n**My response:",
                false,
                Phase::Response,
            ),
            ("add", true, Phase::Thought),
            ("add\nMy response: 5", true, Phase::Response),
        ];
        for (text, prefilled, want) in cases {
            assert_eq!(p.phase(text, prefilled), want, "{text:?}");
        }
    }

    #[test]
    fn prompts_wrap_the_instruction_and_name_their_markers() {
        for name in ["generic", "specific"] {
            let p = ThoughtPrompt::resolve(name).unwrap();
            p.check().unwrap();
            let wrapped = p.wrap("Add 2 and 3.");
            assert!(wrapped.ends_with("Request: Add 2 and 3."), "{wrapped}");
            assert!(wrapped.contains(&p.thought_marker) && wrapped.contains(&p.response_marker));
        }
        assert!(ThoughtPrompt::resolve("specific")
            .unwrap()
            .template
            .contains("draft"));
    }

    #[test]
    fn template_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        let good = r#"{"template": "Q: {instruction}\nThink after <t>, answer after <r>.", "thought_marker": "<t>", "response_marker": "<r>"}"#;
        std::fs::write(&path, good).unwrap();
        let p = ThoughtPrompt::resolve(path.to_str().unwrap()).unwrap();
        assert_eq!(
            p.parse("<t> hmm <r> 5", false),
            Parsed::Ok {
                thought: "hmm",
                response: "5"
            }
        );
        let bad = [
            (
                r#"{"template": "no slot", "thought_marker": "<t>", "response_marker": "<r>"}"#,
                "exactly once",
            ),
            (
                r#"{"template": "{instruction}", "thought_marker": "<t>", "response_marker": " "}"#,
                "must not be empty",
            ),
            (
                r#"{"template": "{instruction}", "thought_marker": "<t>", "response_marker": "<t>x"}"#,
                "contain the other",
            ),
            (r#"{"template": "{instruction}"}"#, "expected JSON"),
        ];
        for (text, why) in bad {
            std::fs::write(&path, text).unwrap();
            let err = format!(
                "{:#}",
                ThoughtPrompt::resolve(path.to_str().unwrap()).unwrap_err()
            );
            assert!(err.contains(why) && err.contains("t.json"), "{err}");
        }
        let err = ThoughtPrompt::resolve("no-such-prompt")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no such file"), "{err}");
    }
}
