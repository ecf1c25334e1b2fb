//! A reward model judge: a sequence-classification checkpoint run by our own runtime.
// Filled in by the reward-model work.

use super::{Judge, JudgeGroup, JudgeOptions};
use anyhow::Result;
use std::path::{Path, PathBuf};

pub struct RewardModelJudge {
    dir: PathBuf,
}

impl RewardModelJudge {
    pub fn load(dir: &Path, _opts: &JudgeOptions) -> Result<Self> {
        Ok(RewardModelJudge {
            dir: dir.to_path_buf(),
        })
    }
}

impl Judge for RewardModelJudge {
    fn describe(&self) -> String {
        format!("reward model {}", self.dir.display())
    }
    fn score(
        &mut self,
        _groups: &[JudgeGroup],
        _progress: &dyn Fn(usize),
    ) -> Result<Vec<Vec<f64>>> {
        anyhow::bail!("not yet implemented")
    }
}
