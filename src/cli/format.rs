//! The flags that control the thought format at decoding time (`train`, and `generate`
//! with `--thought-prompt`).

use crate::tpo::format::FormatControl;

#[derive(clap::Args, Clone, Debug)]
pub struct FormatArgs {
    /// Start the assistant turn with the thought marker, so every completion begins inside
    /// its thought (the marker is part of the prompt, never trained on).
    #[arg(long)]
    prefill_thought: bool,
    /// Where a completion would end (EOS) inside its thought, write the response marker
    /// instead and go on sampling the response (the forced tokens are recorded).
    #[arg(long)]
    force_response: bool,
    /// A thought's budget: when it reaches N tokens, the response marker is forced.
    #[arg(long, value_name = "N")]
    max_thought_tokens: Option<usize>,
}

impl FormatArgs {
    pub fn control(&self) -> FormatControl {
        FormatControl {
            prefill_thought: self.prefill_thought,
            force_response: self.force_response,
            max_thought_tokens: self.max_thought_tokens,
        }
    }
}
