//! The training graph end to end: the layers over a packed batch, the final norm of the
//! scored rows, the LM head fused with the log-softmax (no logits kept), each sequence's
//! summed completion log-prob, and the backward from d(loss)/d(sum) per sequence to the
//! parameter gradients.
//!
//! Gradients live in one flat f32 buffer with the model's `ParamLayout`, so tied embeddings
//! (lm_head and embed_tokens sharing a range) accumulate both uses without extra code. The
//! loss itself runs on the host in f64 (`train::loss`), fed the per-sequence sums.

use super::activations::Activations;
use super::batch::{DeviceBatch, TrainBatch};
use super::layer::{layer_backward, Attend};
use super::Net;
use crate::backend::ops::Ops;
use anyhow::{bail, Result};
use std::ops::Range;

/// d(loss)/d(summed log-prob) of each sequence of a loss group, from the group's sums.
pub type GroupLoss<'a> = dyn FnMut(usize, &[f64]) -> Result<Vec<f64>> + 'a;

impl<O: Ops> Net<'_, O> {
    /// Forward over `batch`, returning each sequence's summed completion log-prob (f64 sums
    /// of the f32 token log-probs). `acts` keeps the state the backward needs.
    pub fn sequence_logprobs(
        &self,
        batch: &TrainBatch,
        acts: &mut Activations<O>,
    ) -> Result<Vec<f64>> {
        let b = DeviceBatch::new(self, batch)?;
        self.body_forward(&b, acts)?;
        let (c, v) = (self.config.hidden_size, self.config.vocab_size);
        let head = self.w(&self.layout.lm_head);
        acts.logits_scratch(self)?;
        let Activations {
            logp,
            lse,
            hidden,
            logits,
            ..
        } = acts;
        let logits = logits.as_mut().expect("made above");
        self.ops
            .logprobs_forward(logp, lse, hidden, head, &b.targets, c, v, logits)?;
        let logp = self.ops.download(logp)?;
        Ok(batch
            .scored_ranges()
            .into_iter()
            .map(|r| row_sum(&logp[r]))
            .collect())
    }

    /// Forward through the layers and the final norm: leaves in `acts` what the backward
    /// needs and, in `acts.hidden`, the final-norm output of the scored rows (M, C).
    fn body_forward(&self, b: &DeviceBatch<O>, acts: &mut Activations<O>) -> Result<()> {
        let ops = self.ops;
        let cfg = self.config;
        let lay = self.layout;
        let c = cfg.hidden_size;
        acts.fit(self, b.n, b.m)?;
        let Activations {
            layers,
            x,
            h,
            qkv,
            lora_u,
            lora_x,
            x_scored,
            hidden,
            ..
        } = acts;
        let mut attend = Attend::Packed(&b.seqs, None);
        let lora = (lora_u, lora_x);
        self.layers_forward(
            &b.tokens,
            &b.rope,
            &mut attend,
            layers,
            x,
            h,
            qkv,
            lora.0,
            lora.1,
        )?;
        // Only the scored rows go through the final norm and the LM head.
        ops.gather_rows(x_scored, x, &b.scored_rows, c)?;
        ops.rmsnorm_forward(hidden, x_scored, self.w(&lay.norm), cfg.rms_norm_eps, c)
    }

    /// Forward, log-probs and backward in one go: `groups` gives the number of consecutive
    /// sequences in each loss group (a DPO pair: 2), and `loss(group, logps)` adds the
    /// group's loss wherever it keeps it and returns d(loss)/d(summed log-prob) of each of
    /// its sequences. Parameter gradients accumulate into `grads`: (P); returns each
    /// sequence's summed log-prob.
    pub fn sequence_logprobs_with_grad(
        &self,
        batch: &TrainBatch,
        acts: &mut Activations<O>,
        groups: &[usize],
        loss: &mut GroupLoss,
        grads: &mut O::Buf<f32>,
    ) -> Result<Vec<f64>> {
        self.sequence_logprobs_with_grads(batch, acts, groups, loss, Some(grads), None)
    }

    /// `sequence_logprobs_with_grad` with the net's adapter's gradients too, accumulated
    /// into `lora_grads` (the adapter's layout). `grads` None: the model's weights are
    /// frozen, and no gradient of theirs is formed; only the activations' gradients flow
    /// through them.
    pub fn sequence_logprobs_with_grads(
        &self,
        batch: &TrainBatch,
        acts: &mut Activations<O>,
        groups: &[usize],
        loss: &mut GroupLoss,
        mut grads: Option<&mut O::Buf<f32>>,
        lora_grads: Option<&mut O::Buf<f32>>,
    ) -> Result<Vec<f64>> {
        if let (Some(lg), Some(lora)) = (lora_grads.as_ref(), self.lora.as_ref()) {
            if O::len(lg) != lora.layout.len {
                bail!("the adapter's gradient buffer does not match its layout");
            }
        } else if lora_grads.is_some() {
            bail!("adapter gradients asked of a net without an adapter");
        }
        if groups.iter().sum::<usize>() != batch.seqs.len() {
            bail!("the loss groups do not cover the batch");
        }
        if grads.as_ref().is_some_and(|g| O::len(g) != self.layout.len) {
            bail!("the gradient buffer does not match the model");
        }
        if grads.is_none() && lora_grads.is_none() {
            bail!("a backward with nothing to train");
        }
        if acts.grads.is_none() || acts.layers.len() != self.layout.layers.len() {
            bail!("these activations were made without room for a backward");
        }
        let b = DeviceBatch::new(self, batch)?;
        self.body_forward(&b, acts)?;
        let ops = self.ops;
        let lay = self.layout;
        let (c, v) = (self.config.hidden_size, self.config.vocab_size);

        // The sequences and scored rows of each loss group.
        let seq_rows = batch.scored_ranges();
        let mut spans: Vec<(Range<usize>, Range<usize>)> = Vec::with_capacity(groups.len());
        let mut s0 = 0;
        for &size in groups {
            let seqs = s0..s0 + size;
            let rows = match seqs.is_empty() {
                true => 0..0,
                false => seq_rows[seqs.start].start..seq_rows[seqs.end - 1].end,
            };
            spans.push((seqs, rows));
            s0 += size;
        }
        let row_ranges: Vec<Range<usize>> = spans.iter().map(|s| s.1.clone()).collect();
        let sums_of = |g: usize, lp: &[f32]| -> Vec<f64> {
            let (seqs, rows) = &spans[g];
            seqs.clone()
                .map(|s| {
                    let r = &seq_rows[s];
                    row_sum(&lp[r.start - rows.start..r.end - rows.start])
                })
                .collect()
        };
        let mut sums = vec![0.0f64; batch.seqs.len()];
        let mut grad = |g: usize, lp: &[f32]| -> Result<Vec<f32>> {
            let (seqs, rows) = &spans[g];
            let group_sums = sums_of(g, lp);
            let dseq = loss(g, &group_sums)?;
            if dseq.len() != seqs.len() {
                bail!(
                    "the loss gave {} gradients for {} sequences",
                    dseq.len(),
                    seqs.len()
                );
            }
            let mut out = Vec::with_capacity(rows.len());
            for (i, s) in seqs.clone().enumerate() {
                sums[s] = group_sums[i];
                out.extend(std::iter::repeat_n(dseq[i] as f32, seq_rows[s].len()));
            }
            Ok(out)
        };
        acts.logits_scratch(self)?;
        let grad_scratch = acts.grads.as_mut().expect("checked above");
        let head = self.w(&lay.lm_head);
        let dhead = grads
            .as_deref_mut()
            .map(|g| O::grads(g, lay.lm_head.clone()));
        ops.logprobs_with_grad(
            &mut acts.logp,
            &mut grad_scratch.dhidden,
            dhead,
            &acts.hidden,
            head,
            &b.targets,
            c,
            v,
            acts.logits.as_mut().expect("made above"),
            &row_ranges,
            &mut grad,
        )?;
        self.body_backward(&b, acts, grads, lora_grads)?;
        Ok(sums)
    }

    /// Backward from d(final-norm output) of the scored rows (in the scratch's dhidden)
    /// through the final norm, the layers and the embedding.
    fn body_backward(
        &self,
        b: &DeviceBatch<O>,
        acts: &mut Activations<O>,
        mut grads: Option<&mut O::Buf<f32>>,
        mut lora_grads: Option<&mut O::Buf<f32>>,
    ) -> Result<()> {
        let ops = self.ops;
        let lay = self.layout;
        let cfg = self.config;
        let c = cfg.hidden_size;
        let Activations {
            layers,
            x_scored,
            lora_x,
            grads: scratch,
            ..
        } = acts;
        let g = scratch.as_mut().expect("the caller checked");
        let dnorm = grads.as_deref_mut().map(|g| O::grads(g, lay.norm.clone()));
        ops.rmsnorm_backward(
            &mut g.dx_scored,
            dnorm,
            &g.dhidden,
            x_scored,
            self.w(&lay.norm),
            cfg.rms_norm_eps,
            c,
        )?;
        // (N, C) gradient of the residual stream: zero except at the scored rows.
        ops.zero(&mut g.dx)?;
        ops.scatter_rows(&mut g.dx, &g.dx_scored, &b.scored_rows, c)?;
        for (l, (w, st)) in lay.layers.iter().zip(layers.iter()).enumerate().rev() {
            let (pg, lg) = (grads.as_deref_mut(), lora_grads.as_deref_mut());
            let lg = lg.map(|lg| (lg, &mut *lora_x));
            layer_backward(self, l, w, st, g, pg, lg, &b.seqs, &b.rope, b.n)?;
        }
        // A frozen embedding table: the residual stream's gradient ends here.
        match grads {
            Some(grads) => {
                let dembed = O::grads(grads, lay.embed_tokens.clone());
                ops.embedding_backward(dembed, &g.dx, &b.tokens, c)
            }
            None => Ok(()),
        }
    }
}

/// The f64 sum of f32 row log-probs, in row order.
fn row_sum(logp: &[f32]) -> f64 {
    logp.iter().fold(0.0f64, |s, &x| s + x as f64)
}
