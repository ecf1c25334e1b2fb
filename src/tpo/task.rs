//! The built-in task: a procedurally generated instruction family whose answers a programmatic
//! judge can check, and on which writing things out in a thought helps.
// Filled in by the built-in-task work.

use super::judge::Judge;
use anyhow::{bail, Result};

/// The programmatic judge called NAME (`--judge builtin:NAME`).
pub fn builtin_judge(name: &str) -> Result<Box<dyn Judge>> {
    bail!("--judge builtin:{name}: no such built-in judge")
}
