//! A packed batch of whole sequences, each a prompt followed by the completion it scores:
//! built on the host (`TrainBatch`), then put where the ops read it (`DeviceBatch`).

use super::Net;
use crate::backend::ops::Ops;
use crate::backend::rope_table::RopeTable;
use anyhow::{bail, Result};
use std::ops::Range;

/// Sequences packed row after row, each a prompt followed by the completion it scores.
pub struct TrainBatch {
    pub tokens: Vec<u32>, // (N)
    /// Rows of each sequence; sequences start at position 0.
    pub seqs: Vec<Range<usize>>,
    pub(crate) positions: Vec<usize>, // (N)
    /// Rows whose next token is a completion token: (M), and those tokens: (M).
    pub(crate) scored_rows: Vec<usize>,
    pub(crate) targets: Vec<u32>,
    /// Sequence of each scored row: (M).
    pub(crate) scored_seq: Vec<usize>,
}

/// One sequence to score: `tokens[prompt_len..]` is the completion. The prompt must have at
/// least one token (the row that predicts the first completion token).
#[derive(Clone, Copy)]
pub struct ScoredSequence<'a> {
    pub tokens: &'a [u32],
    pub prompt_len: usize,
}

impl TrainBatch {
    pub fn new(seqs: &[ScoredSequence]) -> TrainBatch {
        let mut b = TrainBatch {
            tokens: vec![],
            seqs: vec![],
            positions: vec![],
            scored_rows: vec![],
            targets: vec![],
            scored_seq: vec![],
        };
        for (s, seq) in seqs.iter().enumerate() {
            assert!(
                seq.prompt_len >= 1 && seq.prompt_len <= seq.tokens.len(),
                "a scored sequence needs a prompt token"
            );
            let start = b.tokens.len();
            b.tokens.extend_from_slice(seq.tokens);
            b.seqs.push(start..b.tokens.len());
            b.positions.extend(0..seq.tokens.len());
            for pos in seq.prompt_len - 1..seq.tokens.len() - 1 {
                b.scored_rows.push(start + pos);
                b.targets.push(seq.tokens[pos + 1]);
                b.scored_seq.push(s);
            }
        }
        b
    }

    /// Rows of the batch (N).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The scored rows of each sequence: consecutive ranges of 0..M.
    pub(crate) fn scored_ranges(&self) -> Vec<Range<usize>> {
        let mut out = vec![0..0; self.seqs.len()];
        for (i, &s) in self.scored_seq.iter().enumerate() {
            if out[s].start == out[s].end {
                out[s] = i..i;
            }
            out[s].end = i + 1;
        }
        // A sequence with no scored row sits where the rows before it end.
        let mut at = 0;
        for r in out.iter_mut() {
            if r.start == r.end {
                *r = at..at;
            }
            at = r.end;
        }
        out
    }
}

/// A batch where the ops read it: token ids, sequence bounds, rotary tables, and the
/// scored rows with their targets.
pub struct DeviceBatch<O: Ops> {
    /// Rows (N), scored rows (M), sequences (S).
    pub n: usize,
    pub m: usize,
    pub s: usize,
    pub tokens: O::Tokens,
    pub seqs: O::Seqs,
    pub rope: O::Rope,
    pub scored_rows: O::Buf<i32>, // (M)
    pub targets: O::Buf<u32>,     // (M)
}

impl<O: Ops> DeviceBatch<O> {
    /// Checks the batch against the model, then puts it on the device.
    pub fn new(net: &Net<O>, batch: &TrainBatch) -> Result<DeviceBatch<O>> {
        let cfg = net.config;
        if let Some(&t) = batch.tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            bail!("token id {t} is beyond the vocabulary ({})", cfg.vocab_size);
        }
        if let Some(s) = batch.seqs.iter().find(|s| s.len() > cfg.max_context) {
            bail!(
                "a sequence of {} tokens is longer than the model's context ({})",
                s.len(),
                cfg.max_context
            );
        }
        let n = batch.len();
        if n > i32::MAX as usize {
            bail!("{n} rows do not fit a batch");
        }
        let ops = net.ops;
        let rows: Vec<i32> = batch.scored_rows.iter().map(|&r| r as i32).collect();
        let table = RopeTable::for_positions(net.inv_freq, &batch.positions);
        const STAGE: &str = "for a micro-batch's token ids";
        Ok(DeviceBatch {
            n,
            m: batch.scored_rows.len(),
            s: batch.seqs.len(),
            tokens: ops.tokens(&batch.tokens)?,
            seqs: ops.seqs(&batch.seqs)?,
            rope: ops.rope(table)?,
            scored_rows: ops.upload(&rows, STAGE)?,
            targets: ops.upload(&batch.targets, STAGE)?,
        })
    }
}
