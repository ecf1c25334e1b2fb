//! The built-in task: a procedurally generated instruction family whose answers a programmatic
//! judge can check, and on which writing things out in a thought helps.
//!
//! The task is "last digit of a sum": 5 to 8 single digits, named by letters ("What is the
//! last digit of the sum of A=3, B=5, C=7, D=2, E=9?"). Answering directly asks a small
//! transformer to add up to eight digits modulo 10 in one forward pass, which it does little
//! better than chance. Written out as a running last digit ("A=3 so 3. B=5 so 8. C=7 so 5.
//! D=2 so 7. E=9 so 6.") every step is a copy of the question's own "B=5" (each letter occurs
//! there once, and the digit follows it the same way in both places) and one entry of a
//! 10x10 table, from the digit just copied and the previous step's, both at fixed distances
//! back; a small model learns that reliably. The judge (`builtin:last-digit`, in
//! `judge/builtin.rs`) reads only the response and scores 1 for the right final digit, 0
//! otherwise.
//!
//! The seed's fine-tuning data ([`seed_sft_data`]) answers the instruction directly, and,
//! wrapped in the generic thought prompt, after one of three thoughts: the running digits
//! (useful), a restatement of the question, or "I know this one" (useless). The seed thus
//! samples a mix of thought styles, and TPO can learn which of them earn good responses.

pub mod problem;
pub mod seed;
pub mod seed_data;

pub use problem::{make_prompts, writes_working};
pub use seed::write_seed;
pub use seed_data::{direct_sft_data, seed_sft_data, working_sft_data};
