//! Micro-batches packed by a token budget, and scoring (log-probs without gradients) of many
//! sequences that way.

use super::trainer::Example;
use crate::backend::cuda::LogitsScratch;
use crate::backend::device::Device;
use crate::model::cuda::GpuModel;
use crate::model::training::{Activations, ScoredSequence, TrainBatch};
use crate::model::Model;
use anyhow::Result;

/// Splits `units` (in order) into runs whose token counts add up to at most `budget`; a
/// unit larger than the budget forms a micro-batch of its own.
pub fn micro_batches(
    units: &[usize],
    tokens: impl Fn(usize) -> usize,
    budget: usize,
) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = vec![];
    let mut used = 0;
    for &u in units {
        let t = tokens(u);
        match out.last_mut() {
            Some(last) if used + t <= budget => {
                last.push(u);
                used += t;
            }
            _ => {
                out.push(vec![u]);
                used = t;
            }
        }
    }
    out
}

/// Summed completion log-prob of every sequence, computed `budget` tokens at a time on
/// `device` (CUDA: bf16 weights and activations); `on_done(sequences)` reports progress.
pub fn score_sequences(
    model: &Model,
    seqs: &[ScoredSequence],
    budget: usize,
    on_done: &dyn Fn(usize),
    device: &Device,
) -> Result<Vec<f64>> {
    let order: Vec<usize> = (0..seqs.len()).collect();
    let mut out = vec![0.0; seqs.len()];
    let mut acts = Activations::default();
    let on_gpu = match device {
        Device::Cpu => None,
        Device::Cuda(gpu) => {
            let v = model.config.vocab_size;
            let scratch = LogitsScratch::new(
                gpu,
                crate::backend::cuda::logprobs::default_chunk_rows(v),
                v,
            )?;
            Some((GpuModel::<half::bf16>::upload(gpu.clone(), model)?, scratch))
        }
    };
    let mut on_gpu = on_gpu;
    for micro in micro_batches(&order, |i| seqs[i].tokens.len(), budget) {
        let batch_seqs: Vec<ScoredSequence> = micro.iter().map(|&i| seqs[i]).collect();
        let batch = TrainBatch::new(&batch_seqs);
        let sums = match on_gpu.as_mut() {
            None => model.sequence_logprobs(&batch, &mut acts),
            Some((gm, scratch)) => gm.sequence_logprobs(&batch, scratch)?,
        };
        for (&i, s) in micro.iter().zip(sums) {
            out[i] = s;
        }
        on_done(micro.len());
    }
    Ok(out)
}

/// Summed completion log-prob of every sequence of every example, in order (example-major):
/// what a reference model gives a DPO pair.
pub fn score_examples(
    model: &Model,
    examples: &[Example],
    budget: usize,
    on_done: &dyn Fn(usize),
    device: &Device,
) -> Result<Vec<f64>> {
    let scored: Vec<ScoredSequence> = examples
        .iter()
        .flat_map(|e| {
            e.seqs.iter().map(|tokens| ScoredSequence {
                tokens,
                prompt_len: e.prompt_len,
            })
        })
        .collect();
    score_sequences(model, &scored, budget, on_done, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_in_order_within_the_budget() {
        let sizes = [3, 4, 2, 9, 1, 1, 5];
        let got = micro_batches(&[0, 1, 2, 3, 4, 5, 6], |i| sizes[i], 8);
        assert_eq!(got, vec![vec![0, 1], vec![2], vec![3], vec![4, 5, 6]]);
        assert!(micro_batches(&[], |i| sizes[i], 8).is_empty());
    }
}
