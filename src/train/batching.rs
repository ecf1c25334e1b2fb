//! Micro-batches packed by a token budget, and scoring (log-probs without gradients) of many
//! sequences that way.

use crate::backend::ops::Ops;
use crate::model::graph::{Activations, Net, ScoredSequence, TrainBatch};
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

/// Rows of working memory that every micro-batch of `micro_batches(.., budget)` fits in,
/// for units of these token counts: the budget, less when all the units fit in less, more
/// when one unit alone is larger.
pub fn working_rows(lens: impl Iterator<Item = usize> + Clone, budget: usize) -> usize {
    let total: usize = lens.clone().sum();
    let longest = lens.max().unwrap_or(0);
    budget.min(total).max(longest)
}

/// Summed completion log-prob of every sequence through the graph `net`, `budget` tokens
/// at a time; `on_done(sequences)` reports progress.
pub(crate) fn score_on<O: Ops>(
    net: &Net<O>,
    seqs: &[ScoredSequence],
    budget: usize,
    on_done: &dyn Fn(usize),
) -> Result<Vec<f64>> {
    let order: Vec<usize> = (0..seqs.len()).collect();
    let mut out = vec![0.0; seqs.len()];
    let rows = working_rows(seqs.iter().map(|s| s.tokens.len()), budget);
    let mut acts = Activations::new(net, rows, false)?;
    for micro in micro_batches(&order, |i| seqs[i].tokens.len(), budget) {
        let batch_seqs: Vec<ScoredSequence> = micro.iter().map(|&i| seqs[i]).collect();
        let batch = TrainBatch::new(&batch_seqs);
        let sums = net.sequence_logprobs(&batch, &mut acts)?;
        for (&i, s) in micro.iter().zip(sums) {
            out[i] = s;
        }
        on_done(micro.len());
    }
    Ok(out)
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

    #[test]
    fn working_rows_fit_every_micro_batch() {
        let cases: [(&[usize], usize); 4] = [
            (&[3, 4, 2, 9, 1, 1, 5], 8),
            (&[2, 2], 64),
            (&[30, 1], 8),
            (&[], 8),
        ];
        for (sizes, budget) in cases {
            let order: Vec<usize> = (0..sizes.len()).collect();
            let biggest = micro_batches(&order, |i| sizes[i], budget)
                .iter()
                .map(|m| m.iter().map(|&i| sizes[i]).sum::<usize>())
                .max()
                .unwrap_or(0);
            let rows = working_rows(sizes.iter().copied(), budget);
            assert!(
                rows >= biggest,
                "{sizes:?} in {budget}: {rows} rows < {biggest}"
            );
            // No more than the budget is held unless one unit alone is larger.
            assert!(rows <= budget.max(sizes.iter().copied().max().unwrap_or(0)));
        }
        assert_eq!(working_rows([2usize, 2].into_iter(), 64), 4);
    }
}
