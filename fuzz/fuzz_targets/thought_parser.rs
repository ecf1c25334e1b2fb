//! The thought/response parser on arbitrary completions, for every built-in thought prompt:
//! a split that lies within the text, or a reason it is malformed, with and without a
//! prefilled thought marker; and the phase of a growing completion. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tpo_engine::tpo::thought::{Parsed, ThoughtPrompt};

fuzz_target!(|text: &str| {
    for name in ["generic", "specific"] {
        let prompt = ThoughtPrompt::resolve(name).unwrap();
        for prefilled in [false, true] {
            if let Parsed::Ok { thought, response } = prompt.parse(text, prefilled) {
                assert!(!response.trim().is_empty(), "an empty response was accepted");
                assert!(text.contains(thought) && text.contains(response));
            }
            let _ = prompt.phase(text, prefilled);
        }
    }
});
