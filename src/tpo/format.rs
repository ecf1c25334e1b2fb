//! Control of the thought format at decoding time, for models that do not follow the
//! thought prompt on their own: the assistant turn opens with the thought marker
//! (`--prefill-thought`), and the response marker is forced where a thought would end the
//! completion (`--force-response`) or reaches its budget (`--max-thought-tokens`).

use super::thought::ThoughtPrompt;
use crate::generate::steer::Steering;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The error of a format option given without a thought prompt.
pub const NO_THOUGHT_PROMPT: &str = "--prefill-thought, --force-response and --max-thought-tokens steer the thought format, and there is no thought prompt";

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
            bail!(NO_THOUGHT_PROMPT);
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
