//! Inference over the graph: the layers over packed rows, a head (the LM head, or a
//! classifier's score) over chosen rows after the final norm, a prefill that fills KV
//! caches, a decode step that continues them, and a sequence classifier's scores.

use super::activations::{Activations, LayerState};
use super::layer::{layer_forward, Attend};
use super::Net;
use crate::backend::ops::Ops;
use crate::backend::rope_table::RopeTable;
use crate::model::config::Head;
use anyhow::{bail, Context, Result};
use std::ops::Range;

const INFER: &str = "in a forward pass (generation or scoring)";

impl<O: Ops> Net<'_, O> {
    /// The embedding and every layer over the packed rows of `tokens`, the residual stream
    /// left in x: (N, C). `layers` holds one state per layer (training) or one reused.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn layers_forward(
        &self,
        tokens: &O::Tokens,
        rope: &O::Rope,
        attend: &mut Attend<O>,
        layers: &mut [LayerState<O>],
        x: &mut O::Buf<O::S>,
        h: &mut O::Buf<O::S>,
        qkv: &mut O::Buf<O::S>,
        lora_u: &mut O::Buf<O::S>,
        lora_x: &mut O::Buf<O::S>,
    ) -> Result<()> {
        let c = self.config.hidden_size;
        let n = O::len(x) / c;
        self.ops
            .embedding_forward(x, tokens, self.w(&self.layout.embed_tokens), c)?;
        let kept = layers.len();
        for (l, w) in self.layout.layers.iter().enumerate() {
            let st = &mut layers[l % kept];
            let lora = (&mut *lora_u, &mut *lora_x);
            layer_forward(self, l, w, st, x, h, qkv, lora, attend, rope, n)?;
        }
        Ok(())
    }

    /// The layers over rows `tokens` at `positions`, read through `attend`: leaves the
    /// residual stream in `acts.x`, (N, C).
    fn rows_forward(
        &self,
        tokens: &[u32],
        positions: &[usize],
        attend: &mut Attend<O>,
        acts: &mut Activations<O>,
    ) -> Result<()> {
        let cfg = self.config;
        if tokens.len() != positions.len() {
            bail!("{} tokens at {} positions", tokens.len(), positions.len());
        }
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            bail!("token id {t} is beyond the vocabulary ({})", cfg.vocab_size);
        }
        if let Some(&p) = positions.iter().find(|&&p| p >= cfg.max_context) {
            bail!(
                "position {p} is beyond the model's context ({})",
                cfg.max_context
            );
        }
        let ops = self.ops;
        acts.fit(self, tokens.len(), 0)?;
        let table = RopeTable::for_positions(self.inv_freq, positions);
        let (ids, rope) = (ops.tokens(tokens)?, ops.rope(table)?);
        let Activations {
            layers,
            x,
            h,
            qkv,
            lora_u,
            lora_x,
            ..
        } = acts;
        self.layers_forward(&ids, &rope, attend, layers, x, h, qkv, lora_u, lora_x)
    }

    /// Fresh whole sequences packed into one pass (positions from 0): the residual stream
    /// in `acts.x`, (N, C). Where `caches` are given, each layer's keys and values are
    /// written there (a prefill).
    pub fn packed_forward(
        &self,
        seqs: &[&[u32]],
        caches: Option<&mut O::Caches<'_>>,
        acts: &mut Activations<O>,
    ) -> Result<()> {
        if let Some(s) = seqs
            .iter()
            .find(|s| s.is_empty() || s.len() > self.config.max_context)
        {
            bail!(
                "a sequence of {} tokens: expected 1 to the model's context ({})",
                s.len(),
                self.config.max_context
            );
        }
        let tokens: Vec<u32> = seqs.iter().flat_map(|s| s.iter().copied()).collect();
        let positions: Vec<usize> = seqs.iter().flat_map(|s| 0..s.len()).collect();
        let mut ranges: Vec<Range<usize>> = Vec::with_capacity(seqs.len());
        let mut at = 0;
        for s in seqs {
            ranges.push(at..at + s.len());
            at += s.len();
        }
        let packed = self.ops.seqs(&ranges)?;
        self.rows_forward(
            &tokens,
            &positions,
            &mut Attend::Packed(&packed, caches),
            acts,
        )
    }

    /// New rows continuing the caches (tokens at `positions`, in the caches' row order),
    /// which they extend: the residual stream in `acts.x`, (N, C).
    pub fn cached_forward(
        &self,
        tokens: &[u32],
        positions: &[usize],
        caches: &mut O::Caches<'_>,
        acts: &mut Activations<O>,
    ) -> Result<()> {
        self.rows_forward(tokens, positions, &mut Attend::Cached(caches), acts)
    }

    /// The final norm of rows `rows` of `acts.x`, then the product with the head `weight`:
    /// (out, C) gives (R, out) f32, in `acts.head_out`.
    pub fn head<'a>(
        &self,
        acts: &'a mut Activations<O>,
        rows: &[usize],
        weight: &Range<usize>,
        out: usize,
    ) -> Result<&'a O::Buf<f32>> {
        let ops = self.ops;
        let c = self.config.hidden_size;
        let n = O::len(&acts.x) / c;
        if let Some(&r) = rows.iter().find(|&&r| r >= n) {
            bail!("head: row {r} of a pass of {n} rows");
        }
        let r = rows.len();
        let idx: Vec<i32> = rows.iter().map(|&r| r as i32).collect();
        let idx = ops.upload(&idx, INFER)?;
        ops.reserve(&mut acts.head_in, r * c, INFER)?;
        ops.reserve(&mut acts.head_norm, r * c, INFER)?;
        ops.reserve(&mut acts.head_out, r * out, INFER)?;
        ops.gather_rows(&mut acts.head_in, &acts.x, &idx, c)?;
        let norm = self.w(&self.layout.norm);
        let eps = self.config.rms_norm_eps;
        ops.rmsnorm_forward(&mut acts.head_norm, &acts.head_in, norm, eps, c)?;
        let w = self.w(weight);
        ops.matmul_forward_f32(&mut acts.head_out, &acts.head_norm, w, r, c, out)?;
        Ok(&acts.head_out)
    }

    /// Runs the prompts, packed, writing their keys and values into `caches`: returns the
    /// logits of each prompt's last row, (P, V).
    pub fn prefill<'a>(
        &self,
        prompts: &[&[u32]],
        caches: &mut O::Caches<'_>,
        acts: &'a mut Activations<O>,
    ) -> Result<&'a O::Buf<f32>> {
        self.packed_forward(prompts, Some(caches), acts)?;
        self.head(
            acts,
            &last_rows(prompts),
            &self.layout.lm_head,
            self.config.vocab_size,
        )
    }

    /// One decode step: row b is `tokens[b]` at `positions[b]`, continuing the caches;
    /// returns the logits of every row, (B, V).
    pub fn decode<'a>(
        &self,
        tokens: &[u32],
        positions: &[usize],
        caches: &mut O::Caches<'_>,
        acts: &'a mut Activations<O>,
    ) -> Result<&'a O::Buf<f32>> {
        self.cached_forward(tokens, positions, caches, acts)?;
        let all: Vec<usize> = (0..tokens.len()).collect();
        self.head(acts, &all, &self.layout.lm_head, self.config.vocab_size)
    }

    /// A sequence classifier's logits, (S, L), for fresh whole sequences packed into one
    /// pass, as transformers' `...ForSequenceClassification` gives them: read at the last
    /// token that is not pad_token_id (the first token when every one is), or at the last
    /// token when the config has no pad_token_id. Attention is causal, so the tokens after
    /// that one are not run at all.
    pub fn classify(&self, seqs: &[&[u32]], acts: &mut Activations<O>) -> Result<Vec<f32>> {
        let cfg = self.config;
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
        self.packed_forward(&read, None, acts)?;
        let logits = self.head(acts, &last_rows(&read), &score, num_labels)?;
        self.ops.download(logits)
    }
}

/// The packed row of each sequence's last token.
fn last_rows(seqs: &[&[u32]]) -> Vec<usize> {
    let mut end = 0;
    seqs.iter()
        .map(|s| {
            end += s.len();
            end - 1
        })
        .collect()
}
