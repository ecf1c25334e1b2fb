//! An external judge command, fed JSONL on stdin and answering JSONL on stdout.
// Filled in by the command-judge work.

use super::{Battle, Judge, JudgeGroup, JudgeOptions, PairwiseJudge, Preference};
use anyhow::Result;

pub struct PointwiseCommand {
    command: String,
}

impl PointwiseCommand {
    pub fn new(command: &str, _opts: &JudgeOptions) -> Result<Self> {
        Ok(PointwiseCommand {
            command: command.to_string(),
        })
    }
}

impl Judge for PointwiseCommand {
    fn describe(&self) -> String {
        format!("command `{}` (pointwise)", self.command)
    }
    fn score(
        &mut self,
        _groups: &[JudgeGroup],
        _progress: &dyn Fn(usize),
    ) -> Result<Vec<Vec<f64>>> {
        anyhow::bail!("not yet implemented")
    }
}

pub struct PairwiseCommand {
    command: String,
}

impl PairwiseCommand {
    pub fn new(command: &str, _opts: &JudgeOptions) -> Result<Self> {
        Ok(PairwiseCommand {
            command: command.to_string(),
        })
    }
}

impl PairwiseJudge for PairwiseCommand {
    fn describe(&self) -> String {
        format!("command `{}` (pairwise)", self.command)
    }
    fn compare(
        &mut self,
        _battles: &[Battle],
        _progress: &dyn Fn(usize),
    ) -> Result<Vec<Preference>> {
        anyhow::bail!("not yet implemented")
    }
}
