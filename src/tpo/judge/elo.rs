//! Pairwise preferences to per-candidate scores: ELO by maximum likelihood.
// Filled in by the pairwise-judge work.

use super::{Judge, JudgeGroup, PairwiseJudge};
use anyhow::Result;

pub struct EloJudge<P: PairwiseJudge> {
    inner: P,
}

impl<P: PairwiseJudge> EloJudge<P> {
    pub fn new(inner: P) -> Self {
        EloJudge { inner }
    }
}

impl<P: PairwiseJudge> Judge for EloJudge<P> {
    fn describe(&self) -> String {
        format!("{} (ELO over both orders)", self.inner.describe())
    }
    fn score(
        &mut self,
        _groups: &[JudgeGroup],
        _progress: &dyn Fn(usize),
    ) -> Result<Vec<Vec<f64>>> {
        anyhow::bail!("not yet implemented")
    }
}
