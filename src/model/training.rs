//! The training graph: forward over a packed batch of whole sequences that keeps what the
//! backward needs, the summed log-prob of each sequence's completion (fused with the LM
//! head, no logits kept), and the backward that turns d(log-prob) per sequence into
//! parameter gradients.
//!
//! Gradients live in one flat buffer with the model's `ParamLayout`, so tied embeddings
//! (lm_head and embed_tokens sharing a range) accumulate both uses without extra code.

use super::forward::Model;
use crate::backend::cpu::attention::{attention_backward, attention_forward, KvView};
use crate::backend::cpu::embedding::{embedding_backward, embedding_forward};
use crate::backend::cpu::logprobs::{
    default_chunk_rows, logprobs_backward, logprobs_forward, logprobs_fused,
};
use crate::backend::cpu::matmul::{matmul_backward, matmul_forward};
use crate::backend::cpu::residual::residual_forward;
use crate::backend::cpu::rmsnorm::{rmsnorm_backward, rmsnorm_forward};
use crate::backend::cpu::rope::{rope_backward, rope_forward};
use crate::backend::cpu::swiglu::{swiglu_backward, swiglu_forward};
use crate::backend::rope_table::RopeTable;
use crate::backend::settings::AttentionDims;
use rayon::prelude::*;
use std::ops::Range;

/// Sequences packed row after row, each a prompt followed by the completion it scores.
pub struct TrainBatch {
    pub tokens: Vec<u32>, // (N)
    /// Rows of each sequence; sequences start at position 0.
    pub seqs: Vec<Range<usize>>,
    pub(crate) positions: Vec<usize>, // (N)
    pub(crate) row_seq: Vec<usize>,   // (N)
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
            row_seq: vec![],
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
            b.row_seq.extend(std::iter::repeat_n(s, seq.tokens.len()));
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
}

/// What one layer's forward keeps for its backward. Shapes per the `backend` legend.
#[derive(Default)]
struct LayerState {
    x_in: Vec<f32>,    // (N, C) residual stream entering the layer
    h_attn: Vec<f32>,  // (N, C) input_layernorm output
    q: Vec<f32>,       // (N, H*D) after rope
    k: Vec<f32>,       // (N, Hkv*D) after rope
    v: Vec<f32>,       // (N, Hkv*D)
    att: Vec<f32>,     // (N, H*D) attention output
    lse: Vec<f32>,     // (N, H)
    x_mid: Vec<f32>,   // (N, C) residual stream after attention
    h_mlp: Vec<f32>,   // (N, C) post_attention_layernorm output
    gate_up: Vec<f32>, // (N, 2I) each row gate, then up
    act: Vec<f32>,     // (N, I)
}

/// The saved activations of the last forward, reused from batch to batch.
#[derive(Default)]
pub struct Activations {
    layers: Vec<LayerState>,
    x_scored: Vec<f32>, // (M, C) the residual stream leaving the last layer, scored rows
    hidden: Vec<f32>,   // (M, C) final-norm output of the scored rows
    /// Scratch for one chunk's logits: (chunk, V).
    logits: Vec<f32>,
    /// The rotary angles of the batch's positions.
    rope: Option<RopeTable>,
    grad_scratch: GradScratch,
}

/// Activation gradients of one layer's backward, reused from layer to layer and batch to
/// batch. Shapes per the `backend` legend.
#[derive(Default)]
struct GradScratch {
    dh: Vec<f32>,       // (N, C)
    dnorm_in: Vec<f32>, // (N, C)
    dact: Vec<f32>,     // (N, I)
    dgate_up: Vec<f32>, // (N, 2I)
    datt: Vec<f32>,     // (N, H*D)
    dq: Vec<f32>,       // (N, H*D)
    dk: Vec<f32>,       // (N, Hkv*D)
    dv: Vec<f32>,       // (N, Hkv*D)
    dqkv: Vec<f32>,     // (N, (H + 2 Hkv) * D)
}

impl Model {
    /// Forward over `batch`, returning each sequence's summed completion log-prob (f64 sums
    /// of the f32 token log-probs). `acts` keeps the state `logprobs_backward` needs.
    pub fn sequence_logprobs(&self, batch: &TrainBatch, acts: &mut Activations) -> Vec<f64> {
        self.body_forward(batch, acts);
        let (c, v) = (self.config.hidden_size, self.config.vocab_size);
        let m = batch.scored_rows.len();
        let (mut logp, mut lse) = (vec![0.0f32; m], vec![0.0f32; m]);
        logprobs_forward(
            &mut logp,
            &mut lse,
            &acts.hidden,
            &self.params[self.layout.lm_head.clone()],
            &batch.targets,
            c,
            v,
            default_chunk_rows(v),
            &mut acts.logits,
        );
        sums_per_sequence(batch, &logp)
    }

    /// Forward through the layers and the final norm: leaves in `acts` what the backward
    /// needs and, in `acts.hidden`, the final-norm output of the scored rows (M, C).
    fn body_forward(&self, batch: &TrainBatch, acts: &mut Activations) {
        let cfg = &self.config;
        let p = &self.params;
        let (c, im, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let qkv_dim = qd + 2 * kvd;
        let dims = self.attention_dims();
        let n = batch.len();
        assert!(
            batch.tokens.iter().all(|&t| (t as usize) < v),
            "token id beyond vocab_size"
        );
        assert!(
            batch.seqs.iter().all(|s| s.len() <= cfg.max_context),
            "sequence longer than max_context"
        );
        let rope = acts
            .rope
            .insert(RopeTable::for_positions(&self.inv_freq, &batch.positions));
        let eps = cfg.rms_norm_eps;
        acts.layers
            .resize_with(self.layout.layers.len(), LayerState::default);

        let mut x = vec![0.0f32; n * c]; // (N, C)
        embedding_forward(
            &mut x,
            &batch.tokens,
            &p[self.layout.embed_tokens.clone()],
            c,
        );
        let mut qkv = vec![0.0f32; n * qkv_dim]; // (N, (H + 2 Hkv) * D)
        let mut h = vec![0.0f32; n * c]; // (N, C)
        for (w, st) in self.layout.layers.iter().zip(acts.layers.iter_mut()) {
            st.x_in.clone_from(&x);
            resize(&mut st.h_attn, n * c);
            rmsnorm_forward(&mut st.h_attn, &x, &p[w.input_layernorm.clone()], eps, c);
            let qkv_bias = w.qkv_bias().map(|r| &p[r]);
            matmul_forward(
                &mut qkv,
                &st.h_attn,
                &p[w.qkv_proj()],
                qkv_bias,
                n,
                c,
                qkv_dim,
            );
            resize(&mut st.q, n * qd);
            resize(&mut st.k, n * kvd);
            resize(&mut st.v, n * kvd);
            for (r, row) in qkv.chunks_exact(qkv_dim).enumerate() {
                st.q[r * qd..(r + 1) * qd].copy_from_slice(&row[..qd]);
                st.k[r * kvd..(r + 1) * kvd].copy_from_slice(&row[qd..qd + kvd]);
                st.v[r * kvd..(r + 1) * kvd].copy_from_slice(&row[qd + kvd..]);
            }
            rope_forward(&mut st.q, rope, dims.n_head);
            rope_forward(&mut st.k, rope, dims.n_kv_head);
            let views: Vec<KvView> = batch
                .seqs
                .iter()
                .map(|s| KvView {
                    k: &st.k[s.start * kvd..s.end * kvd],
                    v: &st.v[s.start * kvd..s.end * kvd],
                })
                .collect();
            resize(&mut st.att, n * qd);
            resize(&mut st.lse, n * dims.n_head);
            attention_forward(
                &mut st.att,
                &mut st.lse,
                &st.q,
                &views,
                &batch.row_seq,
                &batch.positions,
                dims,
            );
            matmul_forward(&mut h, &st.att, &p[w.o_proj.clone()], None, n, qd, c);
            residual_forward(&mut x, &h);
            st.x_mid.clone_from(&x);

            resize(&mut st.h_mlp, n * c);
            rmsnorm_forward(
                &mut st.h_mlp,
                &x,
                &p[w.post_attention_layernorm.clone()],
                eps,
                c,
            );
            resize(&mut st.gate_up, n * 2 * im);
            matmul_forward(
                &mut st.gate_up,
                &st.h_mlp,
                &p[w.gate_up_proj()],
                None,
                n,
                c,
                2 * im,
            );
            resize(&mut st.act, n * im);
            st.act
                .par_chunks_mut(im)
                .zip(st.gate_up.par_chunks(2 * im))
                .with_min_len(16)
                .for_each(|(a, gu)| swiglu_forward(a, &gu[..im], &gu[im..]));
            matmul_forward(&mut h, &st.act, &p[w.down_proj.clone()], None, n, im, c);
            residual_forward(&mut x, &h);
        }

        // Only the scored rows go through the final norm and the LM head.
        let m = batch.scored_rows.len();
        resize(&mut acts.x_scored, m * c);
        for (dst, &r) in acts.x_scored.chunks_exact_mut(c).zip(&batch.scored_rows) {
            dst.copy_from_slice(&x[r * c..(r + 1) * c]);
        }
        resize(&mut acts.hidden, m * c);
        rmsnorm_forward(
            &mut acts.hidden,
            &acts.x_scored,
            &p[self.layout.norm.clone()],
            eps,
            c,
        );
    }

    /// Forward, log-probs and backward in one go, the LM head in single passes over whole
    /// loss groups: `groups` gives the number of consecutive sequences in each group (a DPO
    /// pair: 2), and `loss(group, logps)` adds the group's loss wherever it keeps it and
    /// returns d(loss)/d(summed log-prob) of each of its sequences. Consecutive groups share
    /// a pass while their scored rows fit in `chunk` (`default_chunk_rows` unless testing);
    /// a group larger than that takes the two-pass path (logits recomputed). Parameter
    /// gradients accumulate into `grads`; returns each sequence's summed log-prob.
    pub fn sequence_logprobs_with_grad(
        &self,
        batch: &TrainBatch,
        acts: &mut Activations,
        groups: &[usize],
        loss: &mut dyn FnMut(usize, &[f64]) -> Vec<f64>,
        grads: &mut [f32],
        chunk: usize,
    ) -> Vec<f64> {
        assert_eq!(
            groups.iter().sum::<usize>(),
            batch.seqs.len(),
            "groups cover the batch"
        );
        assert_eq!(
            grads.len(),
            self.layout.len,
            "gradient buffer does not match the model"
        );
        self.body_forward(batch, acts);
        let lay = &self.layout;
        let (c, v) = (self.config.hidden_size, self.config.vocab_size);
        let m = batch.scored_rows.len();
        let mut logp = vec![0.0f32; m]; // (M)
        let mut dhidden = vec![0.0f32; m * c]; // (M, C)
        let mut sums = vec![0.0f64; batch.seqs.len()];
        // The sequences and scored rows of each loss group.
        let mut spans: Vec<(Range<usize>, Range<usize>)> = Vec::with_capacity(groups.len());
        let (mut seq0, mut row0) = (0, 0);
        for &size in groups {
            let seqs = seq0..seq0 + size;
            let n_rows = batch.scored_seq[row0..].partition_point(|s| seqs.contains(s));
            (seq0, row0) = (seqs.end, row0 + n_rows);
            spans.push((seqs, row0 - n_rows..row0));
        }
        // Group g's summed log-probs from the log-probs of its rows.
        let group_sums = |g: usize, logp: &[f32]| -> Vec<f64> {
            let (seqs, rows) = &spans[g];
            let mut out = vec![0.0f64; seqs.len()];
            for (&s, &lp) in batch.scored_seq[rows.clone()].iter().zip(logp) {
                out[s - seqs.start] += lp as f64;
            }
            out
        };
        // The loss gradient of group g's rows, from its log-probs.
        let mut group_grads = |g: usize, logp: &[f32]| -> Vec<f32> {
            let (seqs, rows) = &spans[g];
            let dseq = loss(g, &group_sums(g, logp));
            assert_eq!(
                dseq.len(),
                seqs.len(),
                "one gradient per sequence of the group"
            );
            batch.scored_seq[rows.clone()]
                .iter()
                .map(|&s| dseq[s - seqs.start] as f32)
                .collect()
        };
        let (head, dhead) = (
            &self.params[lay.lm_head.clone()],
            &mut grads[lay.lm_head.clone()],
        );
        let mut g0 = 0;
        while g0 < spans.len() {
            // Whole groups share one pass while their rows fit in a chunk.
            let start = spans[g0].1.start;
            let mut g1 = g0 + 1;
            while g1 < spans.len() && spans[g1].1.end - start <= chunk {
                g1 += 1;
            }
            let rows = start..spans[g1 - 1].1.end;
            let (hidden, targets) = (
                &acts.hidden[rows.start * c..rows.end * c],
                &batch.targets[rows.clone()],
            );
            let dh = &mut dhidden[rows.start * c..rows.end * c];
            if rows.len() <= chunk {
                logprobs_fused(
                    &mut logp[rows.clone()],
                    dh,
                    dhead,
                    hidden,
                    head,
                    targets,
                    c,
                    v,
                    &mut acts.logits,
                    &mut |lp| {
                        (g0..g1)
                            .flat_map(|g| {
                                let r = &spans[g].1;
                                group_grads(g, &lp[r.start - start..r.end - start])
                            })
                            .collect()
                    },
                );
            } else {
                // One group larger than a chunk: log-probs first, then the gradient with
                // the logits recomputed.
                let mut lse = vec![0.0f32; rows.len()];
                logprobs_forward(
                    &mut logp[rows.clone()],
                    &mut lse,
                    hidden,
                    head,
                    targets,
                    c,
                    v,
                    chunk,
                    &mut acts.logits,
                );
                let dlogp = group_grads(g0, &logp[rows.clone()]);
                logprobs_backward(
                    dh,
                    dhead,
                    &dlogp,
                    hidden,
                    head,
                    targets,
                    &lse,
                    c,
                    v,
                    chunk,
                    &mut acts.logits,
                );
            }
            g0 = g1;
        }
        for (g, (seqs, rows)) in spans.iter().enumerate() {
            for (s, x) in seqs.clone().zip(group_sums(g, &logp[rows.clone()])) {
                sums[s] = x;
            }
        }
        let mut scratch = std::mem::take(&mut acts.grad_scratch);
        self.body_backward(batch, acts, &dhidden, grads, &mut scratch);
        acts.grad_scratch = scratch;
        sums
    }

    /// Backward from d(final-norm output) of the scored rows, dhidden: (M, C), through the
    /// final norm, the layers and the embedding.
    fn body_backward(
        &self,
        batch: &TrainBatch,
        acts: &Activations,
        dhidden: &[f32],
        grads: &mut [f32],
        scratch: &mut GradScratch,
    ) {
        let cfg = &self.config;
        let p = &self.params;
        let lay = &self.layout;
        let (c, im) = (cfg.hidden_size, cfg.intermediate_size);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let qkv_dim = qd + 2 * kvd;
        let dims = self.attention_dims();
        let n = batch.len();
        let m = batch.scored_rows.len();
        let eps = cfg.rms_norm_eps;
        let rope = acts.rope.as_ref().expect("the forward ran");
        let mut dx_scored = vec![0.0f32; m * c];
        rmsnorm_backward(
            &mut dx_scored,
            &mut grads[lay.norm.clone()],
            dhidden,
            &acts.x_scored,
            &p[lay.norm.clone()],
            eps,
            c,
        );
        let mut dx = vec![0.0f32; n * c]; // (N, C) gradient of the residual stream
        for (src, &r) in dx_scored.chunks_exact(c).zip(&batch.scored_rows) {
            dx[r * c..(r + 1) * c].copy_from_slice(src);
        }

        // Activation gradients are assigned by every op, so the reused buffers need no
        // clearing.
        let GradScratch {
            dh,
            dnorm_in,
            dact,
            dgate_up,
            datt,
            dq,
            dk,
            dv,
            dqkv,
        } = scratch;
        for (buf, len) in [
            (&mut *dh, n * c),
            (&mut *dnorm_in, n * c),
            (&mut *dact, n * im),
            (&mut *dgate_up, n * 2 * im),
            (&mut *datt, n * qd),
            (&mut *dq, n * qd),
            (&mut *dk, n * kvd),
            (&mut *dv, n * kvd),
            (&mut *dqkv, n * qkv_dim),
        ] {
            resize(buf, len);
        }
        for (w, st) in lay.layers.iter().zip(&acts.layers).rev() {
            // MLP: x_out = x_mid + down(swiglu(gate_up(norm(x_mid)))).
            matmul_backward(
                dact,
                &mut grads[w.down_proj.clone()],
                None,
                &dx,
                &st.act,
                &p[w.down_proj.clone()],
                n,
                im,
                c,
            );
            dgate_up
                .par_chunks_mut(2 * im)
                .zip(dact.par_chunks(im))
                .zip(st.gate_up.par_chunks(2 * im))
                .with_min_len(16)
                .for_each(|((dgu, da), gu)| {
                    let (dg, du) = dgu.split_at_mut(im);
                    swiglu_backward(dg, du, da, &gu[..im], &gu[im..]);
                });
            matmul_backward(
                dh,
                &mut grads[w.gate_up_proj()],
                None,
                dgate_up,
                &st.h_mlp,
                &p[w.gate_up_proj()],
                n,
                c,
                2 * im,
            );
            rmsnorm_backward(
                dnorm_in,
                &mut grads[w.post_attention_layernorm.clone()],
                dh,
                &st.x_mid,
                &p[w.post_attention_layernorm.clone()],
                eps,
                c,
            );
            // The residual's two branches meet: their gradients add.
            residual_forward(&mut dx, dnorm_in);

            // Attention: x_mid = x_in + o(attention(rope(q), rope(k), v)).
            matmul_backward(
                datt,
                &mut grads[w.o_proj.clone()],
                None,
                &dx,
                &st.att,
                &p[w.o_proj.clone()],
                n,
                qd,
                c,
            );
            attention_backward(
                dq,
                dk,
                dv,
                datt,
                &st.q,
                &st.k,
                &st.v,
                &st.att,
                &st.lse,
                &batch.seqs,
                dims,
            );
            rope_backward(dq, rope, dims.n_head);
            rope_backward(dk, rope, dims.n_kv_head);
            for (r, row) in dqkv.chunks_exact_mut(qkv_dim).enumerate() {
                row[..qd].copy_from_slice(&dq[r * qd..(r + 1) * qd]);
                row[qd..qd + kvd].copy_from_slice(&dk[r * kvd..(r + 1) * kvd]);
                row[qd + kvd..].copy_from_slice(&dv[r * kvd..(r + 1) * kvd]);
            }
            // The fused qkv weight and bias are contiguous in the gradient buffer too; the
            // bias sits right after v_proj, so take the two ranges from one split.
            let (dweight, dbias) = match w.qkv_bias() {
                Some(b) => {
                    let wr = w.qkv_proj();
                    assert_eq!(wr.end, b.start, "qkv bias follows the qkv weights");
                    let (dw, db) = grads[wr.start..b.end].split_at_mut(wr.len());
                    (dw, Some(db))
                }
                None => (&mut grads[w.qkv_proj()], None),
            };
            matmul_backward(
                dh,
                dweight,
                dbias,
                dqkv,
                &st.h_attn,
                &p[w.qkv_proj()],
                n,
                c,
                qkv_dim,
            );
            rmsnorm_backward(
                dnorm_in,
                &mut grads[w.input_layernorm.clone()],
                dh,
                &st.x_in,
                &p[w.input_layernorm.clone()],
                eps,
                c,
            );
            // The residual's two branches meet: their gradients add.
            residual_forward(&mut dx, dnorm_in);
        }
        embedding_backward(&mut grads[lay.embed_tokens.clone()], &dx, &batch.tokens, c);
    }

    fn attention_dims(&self) -> AttentionDims {
        AttentionDims {
            n_head: self.config.num_attention_heads,
            n_kv_head: self.config.num_key_value_heads,
            head_dim: self.config.head_dim,
        }
    }
}

/// Sums the log-probs of the scored rows per sequence.
fn sums_per_sequence(batch: &TrainBatch, logp: &[f32]) -> Vec<f64> {
    let mut sums = vec![0.0f64; batch.seqs.len()];
    for (&s, &lp) in batch.scored_seq.iter().zip(logp) {
        sums[s] += lp as f64;
    }
    sums
}

/// Sets a reused buffer's length; its contents are overwritten by the caller.
fn resize(buf: &mut Vec<f32>, len: usize) {
    buf.resize(len, 0.0);
}
