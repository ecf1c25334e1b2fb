//! An iteration's malformed candidates: how many, the most common reason, and whether the
//! run stops or warns (with advice on the format options, `format.rs`).

use super::format::FormatControl;
use super::stages::PromptCandidates;
use crate::generate::FinishReason;
use std::collections::BTreeMap;

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
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
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
