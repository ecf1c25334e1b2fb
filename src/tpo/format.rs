//! Control of the thought format at decoding time, for models that do not follow the
//! thought prompt on their own: the assistant turn opens with the thought marker
//! (`--prefill-thought`), and the response marker is forced where a thought would end the
//! completion (`--force-response`) or reaches its budget (`--max-thought-tokens`).

use super::stages::PromptCandidates;
use super::thought::ThoughtPrompt;
use crate::generate::steer::Steering;
use crate::generate::FinishReason;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormatControl {
    /// The assistant turn starts with the thought marker: part of the prompt, never trained
    /// on.
    pub prefill_thought: bool,
    /// Where a candidate would end (EOS) inside its thought, the response marker is fed
    /// instead and sampling goes on.
    pub force_response: bool,
    /// A thought's budget in tokens: at it, the response marker is forced.
    pub max_thought_tokens: Option<usize>,
}

impl FormatControl {
    /// Checks the options against the run: they need a thought prompt, and a budget must
    /// leave room for a response within `max_new_tokens`.
    pub fn check(&self, thoughts: bool, max_new_tokens: usize) -> Result<()> {
        if *self == FormatControl::default() {
            return Ok(());
        }
        if !thoughts {
            bail!("--prefill-thought, --force-response and --max-thought-tokens steer the thought format, and there is no thought prompt");
        }
        if let Some(n) = self.max_thought_tokens {
            if n == 0 || n >= max_new_tokens {
                bail!("--max-thought-tokens {n}: expected 1 to {} (below --max-new-tokens {max_new_tokens}, which leaves room for the response)", max_new_tokens.saturating_sub(1));
            }
        }
        Ok(())
    }

    /// The tokens that end a prompt before its completion: the thought marker when
    /// prefilled, else none.
    pub fn prefill_ids(&self, thought: &ThoughtPrompt, tokenizer: &Tokenizer) -> Result<Vec<u32>> {
        if !self.prefill_thought {
            return Ok(vec![]);
        }
        tokenizer.encode(thought.prefill(), false)
    }

    /// How sampling is steered (None: it is not).
    pub fn steering(
        &self,
        thought: &ThoughtPrompt,
        tokenizer: &Tokenizer,
    ) -> Result<Option<Steering>> {
        if !self.force_response && self.max_thought_tokens.is_none() {
            return Ok(None);
        }
        let marker = tokenizer.encode(&thought.forced_response(), false)?;
        if marker.is_empty() {
            bail!(
                "the response marker {:?} has no tokens",
                thought.response_marker
            );
        }
        let (tokenizer, thought, prefilled) =
            (tokenizer.clone(), thought.clone(), self.prefill_thought);
        Ok(Some(Steering {
            prefilled,
            force_on_end: self.force_response,
            max_thought_tokens: self.max_thought_tokens,
            marker,
            phase_of: Arc::new(move |ids: &[u32]| {
                let text = tokenizer.decode(ids).unwrap_or_default();
                thought.phase(&text, prefilled)
            }),
        }))
    }

    /// What a user can turn on when candidates do not follow the format (none when all
    /// are on).
    pub fn advice(&self) -> Vec<&'static str> {
        let mut out = vec![];
        if !self.prefill_thought {
            out.push("--prefill-thought (every candidate starts inside its thought)");
        }
        if !self.force_response {
            out.push("--force-response (the response marker is written where a candidate would end inside its thought)");
        }
        if self.max_thought_tokens.is_none() {
            out.push("--max-thought-tokens N (the response marker is written when a thought reaches N tokens, before the length limit cuts it)");
        }
        out
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Fine,
    Warn,
    Stop,
}

/// How many of an iteration's candidates could not be parsed, and why.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MalformedCount {
    pub candidates: usize,
    pub malformed: usize,
    /// The most common reason and how many gave it.
    pub top_reason: Option<(String, usize)>,
    /// Malformed candidates cut by the length limit.
    pub cut: usize,
}

impl MalformedCount {
    pub fn of(prompts: &[PromptCandidates]) -> MalformedCount {
        let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
        let mut count = MalformedCount::default();
        for c in prompts.iter().flat_map(|p| &p.candidates) {
            count.candidates += 1;
            if let Some(why) = &c.malformed {
                count.malformed += 1;
                *reasons.entry(why).or_default() += 1;
                count.cut += (c.finish_reason == FinishReason::Length.as_str()) as usize;
            }
        }
        // The most common; the first in name order among equals.
        count.top_reason = reasons
            .into_iter()
            .fold(None, |best: Option<(&str, usize)>, (why, n)| match best {
                Some((_, m)) if m >= n => best,
                _ => Some((why, n)),
            })
            .map(|(why, n)| (why.to_string(), n));
        count
    }

    pub fn share(&self) -> f64 {
        self.malformed as f64 / self.candidates.max(1) as f64
    }

    /// What iteration `t` does about its malformed candidates: stop when every one is
    /// (no pair can be made, and the model would go on unchanged); warn when most of the
    /// first iteration's are.
    pub fn verdict(&self, t: usize) -> Verdict {
        if self.candidates > 0 && self.malformed == self.candidates {
            Verdict::Stop
        } else if t == 1 && self.share() > 0.5 {
            Verdict::Warn
        } else {
            Verdict::Fine
        }
    }

    /// What went wrong and what would help, for the error or the warning.
    pub fn advice(&self, control: &FormatControl, max_new_tokens: usize) -> String {
        let mut out = format!(
            "{} of {} candidates ({:.0}%) are malformed",
            self.malformed,
            self.candidates,
            100.0 * self.share()
        );
        if let Some((why, n)) = &self.top_reason {
            out += &format!("; the most common reason: \"{why}\" ({n})");
        }
        if self.cut > 0 {
            out += &format!(
                "; {} were cut by --max-new-tokens {max_new_tokens}",
                self.cut
            );
        }
        let options = control.advice();
        if options.is_empty() {
            out += ". Every format option is on: a larger --max-new-tokens, a smaller --max-thought-tokens, or a --thought-prompt the model follows may help";
        } else {
            out += &format!(
                ". The model does not follow the thought format; these options control it while sampling: {}",
                options.join("; ")
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(candidates: usize, malformed: usize) -> MalformedCount {
        MalformedCount {
            candidates,
            malformed,
            top_reason: Some(("no response marker".into(), malformed)),
            cut: 1,
        }
    }

    #[test]
    fn all_malformed_stops_most_malformed_at_first_warns() {
        assert_eq!(count(64, 64).verdict(1), Verdict::Stop);
        assert_eq!(count(64, 64).verdict(3), Verdict::Stop);
        assert_eq!(count(64, 33).verdict(1), Verdict::Warn);
        assert_eq!(count(64, 33).verdict(2), Verdict::Fine);
        assert_eq!(count(64, 32).verdict(1), Verdict::Fine);
        assert_eq!(count(0, 0).verdict(1), Verdict::Fine);
    }

    #[test]
    fn advice_names_the_reason_and_the_options_still_off() {
        let off = FormatControl::default();
        let text = count(64, 40).advice(&off, 96);
        for part in [
            "40 of 64 candidates (62%) are malformed",
            "\"no response marker\" (40)",
            "1 were cut by --max-new-tokens 96",
            "--prefill-thought",
            "--force-response",
            "--max-thought-tokens",
        ] {
            assert!(text.contains(part), "{part}: {text}");
        }
        let on = FormatControl {
            prefill_thought: true,
            force_response: true,
            max_thought_tokens: None,
        };
        let text = count(64, 40).advice(&on, 96);
        assert!(!text.contains("--prefill-thought") && text.contains("--max-thought-tokens N"));
        let all = FormatControl {
            max_thought_tokens: Some(32),
            ..on
        };
        assert!(count(64, 40)
            .advice(&all, 96)
            .contains("Every format option is on"));
    }
}
