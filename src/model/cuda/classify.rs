//! A sequence classifier (a reward model) on the device, twin of `Model::classify`.

use super::{GpuModel, Storage};
use crate::model::config::Head;
use anyhow::{bail, Context, Result};

const CLASSIFY: &str = "in a reward model's forward (scoring responses)";

impl<T: Storage> GpuModel<T> {
    /// The classifier's logits, (S, L), for fresh whole sequences packed into one pass, read
    /// at the last token that is not pad_token_id (the first token when every one is), or
    /// at the last token when the config has no pad_token_id, as transformers reads them.
    pub fn classify(&self, seqs: &[&[u32]]) -> Result<Vec<f32>> {
        let cfg = &self.config;
        let Head::SequenceClassification { num_labels } = cfg.head else {
            bail!("only a sequence classifier has a score head");
        };
        let score = self
            .layout
            .score
            .clone()
            .context("a classifier's layout has a score head")?;
        let mut read: Vec<&[u32]> = Vec::with_capacity(seqs.len());
        for seq in seqs {
            if seq.is_empty() {
                bail!("a sequence to classify needs a token");
            }
            let last = match cfg.pad_token_id {
                Some(pad) => seq.iter().rposition(|&t| t != pad).unwrap_or(0),
                None => seq.len() - 1,
            };
            read.push(&seq[..=last]);
        }
        if read.is_empty() {
            return Ok(vec![]);
        }
        let (x, starts) = self.packed_forward(&read, CLASSIFY, &mut |_, _, _| Ok(()))?;
        let last: Vec<i32> = starts[1..].iter().map(|&s| s - 1).collect();
        let last_dev = self.gpu.stream.clone_htod(&last)?;
        let logits = self.head_rows(&x, &last_dev, &score, num_labels, CLASSIFY)?;
        Ok(self.gpu.stream.clone_dtoh(&logits)?)
    }
}
