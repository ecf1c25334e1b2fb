//! Steering a completion into the thought format while it is sampled ("budget forcing"):
//! when a completion would end inside its thought, or its thought reaches a budget, the
//! response marker's tokens are fed in place of what was sampled, and sampling goes on for
//! the response. Both sampling loops (CPU and CUDA) call `Steering::push` for every token,
//! so a completion's forced tokens do not depend on where it ran.
//!
//! Every live sequence still draws its one random number per step while its forced tokens
//! are fed (the draw is thrown away), so the random streams stay aligned between the loops.

use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Where a growing completion stands in the thought format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// No thought marker yet.
    BeforeThought,
    /// Inside the thought.
    Thought,
    /// The response marker has been written.
    Response,
}

/// Why a completion's response marker was forced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForceReason {
    /// It would have ended (EOS) inside its thought.
    Eos,
    /// Its thought reached the thought budget.
    Budget,
}

/// A completion's forced tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forced {
    /// Index of the first forced token in the completion's token ids.
    pub at: usize,
    /// How many were fed (fewer than the marker's when the length limit cut them).
    pub tokens: usize,
    pub reason: ForceReason,
}

/// Finds where a completion (its token ids so far) stands: decodes it and looks for the
/// markers. The text is still growing, so a marker must be whole to count.
pub type PhaseOf = Arc<dyn Fn(&[u32]) -> Phase + Send + Sync>;

/// How completions are steered.
#[derive(Clone)]
pub struct Steering {
    /// The prompt ends with the thought marker: completions start inside their thought.
    pub prefilled: bool,
    /// Force the response marker where a completion would end (EOS) inside its thought.
    pub force_on_end: bool,
    /// Force it when a thought reaches this many tokens.
    pub max_thought_tokens: Option<usize>,
    /// The response marker's tokens as they are forced.
    pub marker: Vec<u32>,
    pub phase_of: PhaseOf,
}

impl std::fmt::Debug for Steering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steering")
            .field("prefilled", &self.prefilled)
            .field("force_on_end", &self.force_on_end)
            .field("max_thought_tokens", &self.max_thought_tokens)
            .field("marker", &self.marker)
            .finish()
    }
}

/// One sequence's place in its steering.
#[derive(Clone, Debug, Default)]
pub struct SteerState {
    /// Index of the thought's first token, once inside it.
    thought_start: Option<usize>,
    /// The response marker is written (sampled or forced): nothing more to steer.
    done: bool,
    pub forced: Option<Forced>,
}

impl Steering {
    /// The state of a fresh completion.
    pub fn start(&self) -> SteerState {
        SteerState {
            thought_start: self.prefilled.then_some(0),
            ..SteerState::default()
        }
    }

    fn watches(&self) -> bool {
        self.force_on_end || self.max_thought_tokens.is_some()
    }

    /// Appends the token sampled for `tokens`, or the forced token that takes its place.
    pub fn push(&self, state: &mut SteerState, tokens: &mut Vec<u32>, sampled: u32, eos: &[u32]) {
        if let Some(f) = state.forced.as_mut() {
            if f.tokens < self.marker.len() {
                tokens.push(self.marker[f.tokens]);
                f.tokens += 1;
                return;
            }
        }
        if state.done || !self.watches() {
            tokens.push(sampled);
            return;
        }
        if eos.contains(&sampled) {
            if self.force_on_end && state.thought_start.is_some() {
                self.force(state, tokens, ForceReason::Eos);
            } else {
                tokens.push(sampled);
            }
            return;
        }
        tokens.push(sampled);
        match (self.phase_of)(tokens) {
            Phase::Response => {
                state.done = true;
                return;
            }
            Phase::Thought if state.thought_start.is_none() => {
                state.thought_start = Some(tokens.len())
            }
            _ => {}
        }
        if let (Some(start), Some(max)) = (state.thought_start, self.max_thought_tokens) {
            if tokens.len() - start > max {
                tokens.pop();
                self.force(state, tokens, ForceReason::Budget);
            }
        }
    }

    fn force(&self, state: &mut SteerState, tokens: &mut Vec<u32>, reason: ForceReason) {
        state.done = true;
        state.forced = Some(Forced {
            at: tokens.len(),
            tokens: 0,
            reason,
        });
        if self.marker.is_empty() {
            return;
        }
        tokens.push(self.marker[0]);
        state.forced.as_mut().expect("set above").tokens = 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EOS: u32 = 0;
    const T: u32 = 7; // a token that completes the thought marker
    const R: u32 = 8; // a token that completes the response marker

    /// Token 7 opens the thought, token 8 the response; the forced marker is [8, 9].
    fn steering(prefilled: bool, force_on_end: bool, budget: Option<usize>) -> Steering {
        Steering {
            prefilled,
            force_on_end,
            max_thought_tokens: budget,
            marker: vec![R, 9],
            phase_of: Arc::new(|ids: &[u32]| {
                match (ids.iter().position(|&t| t == T), ids.contains(&R)) {
                    (_, true) => Phase::Response,
                    (Some(_), false) => Phase::Thought,
                    (None, false) => Phase::BeforeThought,
                }
            }),
        }
    }

    /// Feeds `sampled` one step at a time, as a sampling loop does, stopping at an EOS
    /// that was kept.
    fn run(s: &Steering, sampled: &[u32]) -> (Vec<u32>, Option<Forced>) {
        let mut state = s.start();
        let mut tokens = vec![];
        for &t in sampled {
            s.push(&mut state, &mut tokens, t, &[EOS]);
            if tokens.last() == Some(&EOS) {
                break;
            }
        }
        (tokens, state.forced)
    }

    #[test]
    fn an_end_inside_the_thought_is_replaced_by_the_marker() {
        let s = steering(true, true, None);
        // Sampled: two thought tokens, EOS, then whatever: the marker is fed over them.
        let (tokens, forced) = run(&s, &[1, 2, EOS, 5, 5, 3, EOS]);
        assert_eq!(tokens, [1, 2, R, 9, 5, 3, EOS]);
        assert_eq!(
            forced,
            Some(Forced {
                at: 2,
                tokens: 2,
                reason: ForceReason::Eos
            })
        );
        // Without the option the completion ends.
        let (tokens, forced) = run(&steering(true, false, None), &[1, 2, EOS, 5]);
        assert_eq!((tokens, forced), (vec![1, 2, EOS], None));
    }

    #[test]
    fn nothing_is_forced_before_the_thought_or_after_the_response() {
        let s = steering(false, true, Some(2));
        // Never in a thought: EOS ends it, however long it ran.
        assert_eq!(run(&s, &[1, 2, 3, 4, EOS]), (vec![1, 2, 3, 4, EOS], None));
        // The model wrote both markers itself.
        let (tokens, forced) = run(&s, &[T, 1, R, 3, 3, 3, EOS]);
        assert_eq!((tokens, forced), (vec![T, 1, R, 3, 3, 3, EOS], None));
    }

    #[test]
    fn the_budget_caps_the_thought_exactly() {
        for budget in [0, 1, 3] {
            // Not prefilled: the thought starts after the token that completes its marker.
            let s = steering(false, false, Some(budget));
            let (tokens, forced) = run(&s, &[4, T, 1, 1, 1, 1, 1, 6, 6, EOS]);
            let f = forced.unwrap();
            assert_eq!(f.reason, ForceReason::Budget);
            assert_eq!(f.at - 2, budget, "{tokens:?}");
            assert_eq!(&tokens[f.at..f.at + 2], &[R, 9]);
            // Prefilled: from the first token.
            let s = steering(true, false, Some(budget));
            let (tokens, forced) = run(&s, &[1, 1, 1, 1, 1, 6, EOS]);
            assert_eq!(forced.unwrap().at, budget, "{tokens:?}");
        }
        // A marker sampled within the budget is the model's own.
        let s = steering(true, true, Some(3));
        assert_eq!(run(&s, &[1, 1, R, 1, 1, 1, 1]).1, None);
    }
}
