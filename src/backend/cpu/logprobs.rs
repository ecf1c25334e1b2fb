//! Log-prob gathering fused with the LM head: log p(target) of each scored row, and its
//! backward, without ever holding the (rows x vocab) logits.
//!
//! Rows are taken `chunk` at a time: the chunk's logits are computed into one reused
//! (chunk, V) buffer, reduced to a log-normaliser and the target's log-prob, and dropped.
//!
//! Training uses `logprobs_fused` where it can: one call takes the rows of whole loss groups
//! (DPO pairs, each of whose gradient depends on its own two log-probs only) that fit in a
//! chunk. Their logits are computed once, reduced to log-probs, handed to the loss for
//! d(loss)/d(log-prob), turned in place into dlogp * (one_hot(target) - softmax), and fed to
//! the two products that give d(hidden) and d(W_lm_head): one pass. `logprobs_backward` is
//! the two-pass fallback for a group larger than a chunk: it recomputes each chunk's logits.
//!
//! Peak extra memory of every path: one (chunk, V) f32 scratch buffer, i.e. O(chunk x V)
//! and independent of the row count, against O(rows x V) for materialised logits (plus the
//! GEMM library's packing scratch, at most one (V, C) panel). `tests/logprob_memory.rs`
//! measures it.

use super::math::{self, exp};
use super::products::{Prepared, Products};
use super::{check_lens, check_rows};
use anyhow::{bail, Result};
use rayon::prelude::*;
use std::ops::Range;

/// Rows per chunk so that a chunk's logits take at most 32 MiB, within [8, 1024] rows.
pub fn default_chunk_rows(vocab: usize) -> usize {
    ((8 << 20) / vocab.max(1)).clamp(8, 1024)
}

/// logp, lse: (M) written; hidden: (M, C) final-norm outputs of the scored rows;
/// weight: (V, C) the LM head; targets: (M) token ids below V; `scratch` the reused logits,
/// which grow to (chunk, V).
#[allow(clippy::too_many_arguments)]
pub fn logprobs_forward(
    logp: &mut [f32],
    lse: &mut [f32],
    hidden: &[f32],
    weight: &[f32],
    targets: &[u32],
    c: usize,
    v: usize,
    scratch: &mut LogitsScratch,
) -> Result<()> {
    let mut head = scratch.products.prepare(weight, c, v);
    forward_on(&mut head, logp, lse, hidden, weight, targets, c, v, scratch)
}

/// `logprobs_forward` with the LM head prepared.
#[allow(clippy::too_many_arguments)]
fn forward_on(
    head: &mut Prepared,
    logp: &mut [f32],
    lse: &mut [f32],
    hidden: &[f32],
    weight: &[f32],
    targets: &[u32],
    c: usize,
    v: usize,
    scratch: &mut LogitsScratch,
) -> Result<()> {
    let op = "logprobs_forward";
    let m = targets.len();
    check_lens(&format!("{op} logp, lse"), &[logp.len(), lse.len()], m)?;
    check_head(op, &[hidden.len()], &[weight.len()], targets, c, v)?;
    let chunk = scratch.chunk(op)?;
    let logits = &mut scratch.logits;
    logits.resize(chunk.min(m) * v, 0.0); // (chunk, V)
    for r0 in (0..m).step_by(chunk) {
        let rows = chunk.min(m - r0);
        let logits = &mut logits[..rows * v];
        let h = &hidden[r0 * c..(r0 + rows) * c];
        head.forward(logits, h, rows)?;
        logits
            .par_chunks(v)
            .zip(lse[r0..r0 + rows].par_iter_mut())
            .zip(logp[r0..r0 + rows].par_iter_mut())
            .zip(targets[r0..r0 + rows].par_iter())
            .for_each(|(((row, lse), logp), &t)| {
                *lse = log_normaliser(row);
                *logp = row[t as usize] - *lse;
            });
    }
    Ok(())
}

/// dhidden: (M, C) assigned; dweight: (V, C) accumulated (None: the head is frozen); dlogp: (M) the loss gradient of
/// each row's log-prob; hidden, weight, targets, `scratch` as in the forward; lse: (M) from
/// it.
#[allow(clippy::too_many_arguments)]
pub fn logprobs_backward(
    dhidden: &mut [f32],
    dweight: Option<&mut [f32]>,
    dlogp: &[f32],
    hidden: &[f32],
    weight: &[f32],
    targets: &[u32],
    lse: &[f32],
    c: usize,
    v: usize,
    scratch: &mut LogitsScratch,
) -> Result<()> {
    let mut head = scratch.products.prepare(weight, c, v);
    let (h, w) = (hidden, weight);
    backward_on(
        &mut head, dhidden, dweight, dlogp, h, w, targets, lse, c, v, scratch,
    )
}

/// `logprobs_backward` with the LM head prepared.
#[allow(clippy::too_many_arguments)]
fn backward_on(
    head: &mut Prepared,
    dhidden: &mut [f32],
    mut dweight: Option<&mut [f32]>,
    dlogp: &[f32],
    hidden: &[f32],
    weight: &[f32],
    targets: &[u32],
    lse: &[f32],
    c: usize,
    v: usize,
    scratch: &mut LogitsScratch,
) -> Result<()> {
    let op = "logprobs_backward";
    let m = targets.len();
    check_lens(&format!("{op} dlogp, lse"), &[dlogp.len(), lse.len()], m)?;
    let (h_lens, w_lens) = ([hidden.len(), dhidden.len()], weight_lens(weight, &dweight));
    check_head(op, &h_lens, &w_lens, targets, c, v)?;
    let chunk = scratch.chunk(op)?;
    let logits = &mut scratch.logits;
    logits.resize(chunk.min(m) * v, 0.0); // (chunk, V), reused as d(logits)
    for r0 in (0..m).step_by(chunk) {
        let rows = chunk.min(m - r0);
        let dlogits = &mut logits[..rows * v];
        let h = &hidden[r0 * c..(r0 + rows) * c];
        head.forward(dlogits, h, rows)?;
        dlogits
            .par_chunks_mut(v)
            .zip(lse[r0..r0 + rows].par_iter())
            .zip(dlogp[r0..r0 + rows].par_iter())
            .zip(targets[r0..r0 + rows].par_iter())
            .for_each(|(((row, &lse), &g), &t)| one_hot_minus_softmax(row, lse, g, t));
        head.backward(
            &mut dhidden[r0 * c..(r0 + rows) * c],
            dweight.as_deref_mut(),
            dlogits,
            h,
            rows,
        )?;
    }
    Ok(())
}

/// One pass over rows whose loss gradient depends on their own log-probs only.
/// logp: (M) written; dhidden: (M, C) assigned; dweight: (V, C) accumulated; hidden: (M, C);
/// weight: (V, C); targets: (M); `upstream(logp)` returns d(loss)/d(logp) for each row.
/// M is at most the scratch's chunk, whose logits grow to (M, V).
#[allow(clippy::too_many_arguments)]
pub fn logprobs_fused(
    logp: &mut [f32],
    dhidden: &mut [f32],
    dweight: Option<&mut [f32]>,
    hidden: &[f32],
    weight: &[f32],
    targets: &[u32],
    c: usize,
    v: usize,
    scratch: &mut LogitsScratch,
    upstream: &mut dyn FnMut(&[f32]) -> Vec<f32>,
) -> Result<()> {
    let mut head = scratch.products.prepare(weight, c, v);
    let (h, w) = (hidden, weight);
    fused_on(
        &mut head, logp, dhidden, dweight, h, w, targets, c, v, scratch, upstream,
    )
}

/// `logprobs_fused` with the LM head prepared.
#[allow(clippy::too_many_arguments)]
fn fused_on(
    head: &mut Prepared,
    logp: &mut [f32],
    dhidden: &mut [f32],
    dweight: Option<&mut [f32]>,
    hidden: &[f32],
    weight: &[f32],
    targets: &[u32],
    c: usize,
    v: usize,
    scratch: &mut LogitsScratch,
    upstream: &mut dyn FnMut(&[f32]) -> Vec<f32>,
) -> Result<()> {
    let op = "logprobs_fused";
    let m = targets.len();
    check_lens(&format!("{op} logp"), &[logp.len()], m)?;
    let (h_lens, w_lens) = ([hidden.len(), dhidden.len()], weight_lens(weight, &dweight));
    check_head(op, &h_lens, &w_lens, targets, c, v)?;
    let chunk = scratch.chunk(op)?;
    if m > chunk {
        bail!("{op}: {m} rows in chunks of {chunk}");
    }
    let logits = &mut scratch.logits;
    logits.resize(m * v, 0.0);
    let logits = &mut logits[..m * v]; // (M, V)
    head.forward(logits, hidden, m)?;
    // Each row becomes exp(z - max) in place, so the gradient pass needs no second exp.
    let mut sums = vec![0.0f32; m]; // (M) sum of exp(z - max)
    logits
        .par_chunks_mut(v)
        .zip(sums.par_iter_mut())
        .zip(logp.par_iter_mut())
        .zip(targets.par_iter())
        .for_each(|(((row, sum), logp), &t)| {
            let target = row[t as usize];
            let max = math::max(row);
            for z in row.iter_mut() {
                *z = exp(*z - max);
            }
            *sum = math::sum(row);
            *logp = target - (max + sum.ln());
        });
    let dlogp = upstream(logp);
    if dlogp.len() != m {
        bail!("{op}: the loss gave {} gradients for {m} rows", dlogp.len());
    }
    logits
        .par_chunks_mut(v)
        .zip(sums.par_iter())
        .zip(dlogp.par_iter())
        .zip(targets.par_iter())
        .for_each(|(((row, &sum), &g), &t)| {
            let scale = -g / sum;
            for e in row.iter_mut() {
                *e *= scale;
            }
            row[t as usize] += g;
        });
    head.backward(dhidden, dweight, logits, hidden, m)
}

/// The reused logits of the log-prob ops: up to `chunk_rows` rows of V at once, and how
/// the LM head's products run.
pub struct LogitsScratch {
    pub chunk_rows: usize,
    pub logits: Vec<f32>,
    pub products: Products,
}

impl LogitsScratch {
    /// f32 products; `Cpu::logits_scratch` sets its own.
    pub fn new(chunk_rows: usize) -> LogitsScratch {
        LogitsScratch {
            chunk_rows,
            logits: vec![],
            products: Products::F32,
        }
    }

    /// The rows per chunk, or an error naming `op` where there are none.
    fn chunk(&self, op: &str) -> Result<usize> {
        if self.chunk_rows == 0 {
            bail!("{op}: chunks of 0 rows");
        }
        Ok(self.chunk_rows)
    }
}

/// The lengths of the LM head and of its gradient where one is formed.
fn weight_lens(weight: &[f32], dweight: &Option<&mut [f32]>) -> Vec<usize> {
    let mut lens = vec![weight.len()];
    lens.extend(dweight.as_ref().map(|d| d.len()));
    lens
}

/// Checks hidden (and dhidden): M rows of C, weight (and dweight): V rows of C, for the M
/// targets, each below V.
fn check_head(
    op: &str,
    hidden: &[usize],
    weight: &[usize],
    targets: &[u32],
    c: usize,
    v: usize,
) -> Result<()> {
    check_rows(&format!("{op} hidden"), hidden, targets.len(), c)?;
    check_rows(&format!("{op} weight"), weight, v, c)?;
    if let Some(t) = targets.iter().find(|&&t| t as usize >= v) {
        bail!("{op}: target {t} of a vocabulary of {v}");
    }
    Ok(())
}

/// Forward and backward over loss groups: `groups` are consecutive row ranges covering
/// 0..M; `grad(g, logp)` turns group g's row log-probs into d(loss)/d(logp) of its rows.
/// Consecutive groups share one fused pass while their rows fit in a chunk; a group larger
/// than that takes the two-pass path (logits recomputed). logp: (M) written; dhidden:
/// (M, C) assigned; dweight: (V, C) accumulated; hidden: (M, C); weight: (V, C);
/// targets: (M).
#[allow(clippy::too_many_arguments)]
pub fn logprobs_with_grad(
    logp: &mut [f32],
    dhidden: &mut [f32],
    mut dweight: Option<&mut [f32]>,
    hidden: &[f32],
    weight: &[f32],
    targets: &[u32],
    c: usize,
    v: usize,
    scratch: &mut LogitsScratch,
    groups: &[Range<usize>],
    grad: &mut crate::backend::ops::RowGrad,
) -> Result<()> {
    let op = "logprobs_with_grad";
    let m = targets.len();
    check_lens(&format!("{op} logp"), &[logp.len()], m)?;
    let (h_lens, w_lens) = ([hidden.len(), dhidden.len()], weight_lens(weight, &dweight));
    check_head(op, &h_lens, &w_lens, targets, c, v)?;
    if groups.first().is_some_and(|g| g.start != 0)
        || groups.windows(2).any(|w| w[0].end != w[1].start)
        || groups.iter().any(|g| g.end < g.start)
        || groups.last().map_or(0, |g| g.end) != m
    {
        bail!("{op}: the groups do not tile the {m} rows");
    }
    let chunk = scratch.chunk(op)?;
    // The LM head is packed once for all the passes below (bf16 products).
    let mut head = scratch.products.prepare(weight, c, v);
    // The group gradients of one pass, in row order, or the first error.
    let mut failed: Option<anyhow::Error> = None;
    let mut g0 = 0;
    while g0 < groups.len() {
        // Whole groups share one pass while their rows fit in a chunk.
        let start = groups[g0].start;
        let mut g1 = g0 + 1;
        while g1 < groups.len() && groups[g1].end - start <= chunk {
            g1 += 1;
        }
        let rows = start..groups[g1 - 1].end;
        let (h, t) = (
            &hidden[rows.start * c..rows.end * c],
            &targets[rows.clone()],
        );
        let dh = &mut dhidden[rows.start * c..rows.end * c];
        if rows.len() <= chunk {
            fused_on(
                &mut head,
                &mut logp[rows.clone()],
                dh,
                dweight.as_deref_mut(),
                h,
                weight,
                t,
                c,
                v,
                scratch,
                &mut |lp| {
                    let mut out = Vec::with_capacity(lp.len());
                    for (g, r) in groups.iter().enumerate().take(g1).skip(g0) {
                        match grad(g, &lp[r.start - start..r.end - start]) {
                            Ok(d) if d.len() == r.len() => out.extend(d),
                            Ok(d) => {
                                failed.get_or_insert(anyhow::anyhow!(
                                    "the loss gave {} gradients for {} rows",
                                    d.len(),
                                    r.len()
                                ));
                                out.resize(out.len() + r.len(), 0.0);
                            }
                            Err(e) => {
                                failed.get_or_insert(e);
                                out.resize(out.len() + r.len(), 0.0);
                            }
                        }
                    }
                    out
                },
            )?;
        } else {
            // One group larger than a chunk: log-probs first, then the gradient with the
            // logits recomputed.
            let mut lse = vec![0.0f32; rows.len()];
            forward_on(
                &mut head,
                &mut logp[rows.clone()],
                &mut lse,
                h,
                weight,
                t,
                c,
                v,
                scratch,
            )?;
            let dlogp = grad(g0, &logp[rows.clone()])?;
            if dlogp.len() != rows.len() {
                bail!(
                    "the loss gave {} gradients for {} rows",
                    dlogp.len(),
                    rows.len()
                );
            }
            let head = &mut head;
            backward_on(
                head,
                dh,
                dweight.as_deref_mut(),
                &dlogp,
                h,
                weight,
                t,
                &lse,
                c,
                v,
                scratch,
            )?;
        }
        if let Some(e) = failed.take() {
            return Err(e);
        }
        g0 = g1;
    }
    Ok(())
}

/// Turns a row of logits into d(loss)/d(logits) = g * (one_hot(t) - softmax), in place.
fn one_hot_minus_softmax(row: &mut [f32], lse: f32, g: f32, t: u32) {
    for z in row.iter_mut() {
        *z = -g * exp(*z - lse);
    }
    row[t as usize] += g;
}

/// ln(sum exp(row)), shifted by the row's max so nothing overflows; the exponentials are
/// summed in eight independent lanes so the loop vectorizes.
fn log_normaliser(row: &[f32]) -> f32 {
    let max = math::max(row);
    let chunks = row.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|&z| exp(z - max)).sum();
    let mut lanes = [0.0f32; 8];
    for ch in chunks {
        for i in 0..8 {
            lanes[i] += exp(ch[i] - max);
        }
    }
    max + (math::sum(&lanes) + tail).ln()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::testutil::{assert_close, randn};

    /// The naive path in f64: full logits, log-softmax, gather; and its gradients.
    fn naive(
        hidden: &[f32],
        weight: &[f32],
        targets: &[u32],
        dlogp: &[f32],
        c: usize,
        v: usize,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let m = targets.len();
        let mut logp = vec![0.0; m];
        let mut dh = vec![0.0; m * c];
        let mut dw = vec![0.0; v * c];
        for r in 0..m {
            let h = &hidden[r * c..(r + 1) * c];
            let logits: Vec<f64> = (0..v)
                .map(|o| (0..c).map(|k| h[k] as f64 * weight[o * c + k] as f64).sum())
                .collect();
            let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + logits.iter().map(|z| (z - max).exp()).sum::<f64>().ln();
            logp[r] = logits[targets[r] as usize] - lse;
            for o in 0..v {
                let onehot = if o == targets[r] as usize { 1.0 } else { 0.0 };
                let dz = dlogp[r] as f64 * (onehot - (logits[o] - lse).exp());
                for k in 0..c {
                    dh[r * c + k] += dz * weight[o * c + k] as f64;
                    dw[o * c + k] += dz * h[k] as f64;
                }
            }
        }
        (logp, dh, dw)
    }

    #[test]
    fn chunked_values_and_gradients_match_the_full_logits_path() {
        let (m, c, v) = (23, 12, 37);
        let hidden = randn(m * c, 30);
        let weight: Vec<f32> = randn(v * c, 31).iter().map(|w| w * 0.5).collect();
        let targets: Vec<u32> = (0..m).map(|r| ((r * 7 + 3) % v) as u32).collect();
        let dlogp = randn(m, 32);
        let (want_logp, want_dh, want_dw) = naive(&hidden, &weight, &targets, &dlogp, c, v);
        let dw0 = randn(v * c, 33);
        for chunk in [1, 4, 7, 23, 64] {
            let (mut logp, mut lse) = (vec![f32::NAN; m], vec![f32::NAN; m]);
            logprobs_forward(
                &mut logp,
                &mut lse,
                &hidden,
                &weight,
                &targets,
                c,
                v,
                &mut LogitsScratch::new(chunk),
            )
            .unwrap();
            assert_close(&logp, &want_logp, 1e-5, 1e-5);
            let mut dh = vec![f32::NAN; m * c];
            let mut dw = dw0.clone();
            logprobs_backward(
                &mut dh,
                Some(&mut dw),
                &dlogp,
                &hidden,
                &weight,
                &targets,
                &lse,
                c,
                v,
                &mut LogitsScratch::new(chunk),
            )
            .unwrap();
            assert_close(&dh, &want_dh, 1e-5, 1e-4);
            // A frozen head: the same d(hidden), bit for bit.
            let mut frozen = vec![f32::NAN; m * c];
            let scratch = &mut LogitsScratch::new(chunk);
            let (h, w, t) = (&hidden, &weight, &targets);
            logprobs_backward(&mut frozen, None, &dlogp, h, w, t, &lse, c, v, scratch).unwrap();
            assert!(frozen == dh);
            let want_dw_acc: Vec<f64> = want_dw
                .iter()
                .zip(&dw0)
                .map(|(g, w0)| g + *w0 as f64)
                .collect();
            assert_close(&dw, &want_dw_acc, 1e-5, 1e-4);
        }
    }

    #[test]
    fn the_fused_pass_matches_the_full_logits_path_and_feeds_the_loss_its_log_probs() {
        let (m, c, v) = (9, 12, 37);
        let hidden = randn(m * c, 34);
        let weight: Vec<f32> = randn(v * c, 35).iter().map(|w| w * 0.5).collect();
        let targets: Vec<u32> = (0..m).map(|r| ((r * 5 + 1) % v) as u32).collect();
        // A loss whose gradient depends on the log-probs it is given: sum(logp^2) / 2.
        let mut seen = vec![];
        let mut upstream = |logp: &[f32]| {
            seen = logp.to_vec();
            logp.to_vec()
        };
        let (mut logp, mut dh) = (vec![f32::NAN; m], vec![f32::NAN; m * c]);
        let dw0 = randn(v * c, 36);
        let mut dw = dw0.clone();
        let mut scratch = LogitsScratch::new(m);
        logprobs_fused(
            &mut logp,
            &mut dh,
            Some(&mut dw),
            &hidden,
            &weight,
            &targets,
            c,
            v,
            &mut scratch,
            &mut upstream,
        )
        .unwrap();
        assert_eq!(seen, logp);
        let (want_logp, _, _) = naive(&hidden, &weight, &targets, &vec![0.0; m], c, v);
        assert_close(&logp, &want_logp, 1e-5, 1e-5);
        let (_, want_dh, want_dw) = naive(&hidden, &weight, &targets, &logp, c, v);
        assert_close(&dh, &want_dh, 1e-5, 1e-4);
        let want_dw_acc: Vec<f64> = want_dw
            .iter()
            .zip(&dw0)
            .map(|(g, w)| g + *w as f64)
            .collect();
        assert_close(&dw, &want_dw_acc, 1e-5, 1e-4);
    }

    #[test]
    fn huge_logits_do_not_overflow() {
        let (c, v) = (2, 3);
        let hidden = [100.0f32, 0.0];
        let weight = [10.0f32, 0.0, 9.0, 0.0, -10.0, 0.0];
        let (mut logp, mut lse) = ([0.0f32], [0.0f32]);
        logprobs_forward(
            &mut logp,
            &mut lse,
            &hidden,
            &weight,
            &[1],
            c,
            v,
            &mut LogitsScratch::new(4),
        )
        .unwrap();
        // logits 1000, 900, -1000: log p(1) = -100 - ln(1 + e^-100 + ...) ~ -100.
        assert!((logp[0] + 100.0).abs() < 1e-3, "{}", logp[0]);
    }

    #[test]
    fn bad_shapes_and_targets_are_errors_naming_the_op() {
        let err = |r: Result<()>| r.unwrap_err().to_string();
        let (m, c, v) = (3, 4, 5);
        let (hidden, weight) = (randn(m * c, 37), randn(v * c, 38));
        let (mut logp, mut lse) = (vec![0.0; m], vec![0.0; m]);
        let mut scratch = LogitsScratch::new(2);
        assert_eq!(
            err(logprobs_forward(
                &mut logp,
                &mut lse,
                &hidden[1..],
                &weight,
                &[0, 1, 2],
                c,
                v,
                &mut scratch
            )),
            "logprobs_forward hidden: a buffer of 11 elements, expected 3 x 4"
        );
        assert_eq!(
            err(logprobs_forward(
                &mut logp,
                &mut lse,
                &hidden,
                &weight,
                &[0, 5, 2],
                c,
                v,
                &mut scratch
            )),
            "logprobs_forward: target 5 of a vocabulary of 5"
        );
        let (mut dh, mut dw) = (vec![0.0; m * c], vec![0.0; v * c - 1]);
        assert_eq!(
            err(logprobs_backward(
                &mut dh,
                Some(&mut dw),
                &logp,
                &hidden,
                &weight,
                &[0, 1, 2],
                &lse,
                c,
                v,
                &mut scratch
            )),
            "logprobs_backward weight: a buffer of 19 elements, expected 5 x 4"
        );
        let mut dw = vec![0.0; v * c];
        assert_eq!(
            err(logprobs_fused(
                &mut logp,
                &mut dh,
                Some(&mut dw),
                &hidden,
                &weight,
                &[0, 1, 2],
                c,
                v,
                &mut scratch,
                &mut |lp| lp.to_vec()
            )),
            "logprobs_fused: 3 rows in chunks of 2"
        );
    }
}
