//! The flags that control the thought format at decoding time (`train`, and `generate`
//! with `--thought-prompt`). The thought is prefilled and the response marker forced unless
//! turned off: on the built-in demonstration they leave the result as it was, and they let
//! models that ignore the format be trained at all (see the README).

use crate::tpo::format::{FormatControl, NO_THOUGHT_PROMPT};
use anyhow::{bail, Result};

#[derive(clap::Args, Clone, Debug)]
pub struct FormatArgs {
    /// Start the assistant turn with the thought marker, so every completion begins inside
    /// its thought; the marker is part of the prompt, never trained on. [default: on]
    #[arg(long, overrides_with = "no_prefill_thought")]
    prefill_thought: bool,
    /// Let the model write the thought marker itself.
    #[arg(long)]
    no_prefill_thought: bool,
    /// Where a completion would end (EOS) inside its thought, write the response marker
    /// instead and go on sampling the response; the forced tokens are recorded. [default: on]
    #[arg(long, overrides_with = "no_force_response")]
    force_response: bool,
    /// A completion that ends inside its thought stays malformed.
    #[arg(long)]
    no_force_response: bool,
    /// A thought's budget: when it reaches N tokens, the response marker is forced.
    /// [default: none]
    #[arg(long, value_name = "N")]
    max_thought_tokens: Option<usize>,
}

impl FormatArgs {
    /// The control these flags ask for: off without a thought prompt, where giving one of
    /// them is an error.
    pub fn control(&self, thoughts: bool) -> Result<FormatControl> {
        if !thoughts {
            if self.prefill_thought || self.force_response || self.max_thought_tokens.is_some() {
                bail!(NO_THOUGHT_PROMPT);
            }
            return Ok(FormatControl::default());
        }
        Ok(FormatControl {
            prefill_thought: !self.no_prefill_thought,
            force_response: !self.no_force_response,
            max_thought_tokens: self.max_thought_tokens,
        })
    }
}
