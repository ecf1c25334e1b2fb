//! The training graph on the device, twin of `model::training`: the forward over a packed
//! batch that keeps what the backward needs, the summed completion log-prob of each
//! sequence (LM head fused with the log-softmax, chunked, no logits kept), and the backward
//! from d(log-prob) per sequence to the f32 parameter gradients.
//!
//! The loss itself runs on the host, in f64, with the CPU trainer's code: the per-sequence
//! sums come back (S floats, one synchronisation per micro-batch) and d(loss)/d(sum) goes
//! out. The gradient pass recomputes each chunk's logits (one more LM-head product) rather
//! than keeping them.

use super::{GpuModel, Storage};
use crate::backend::cuda::{AttentionScratch, Columns, Gpu, LogitsScratch, PackedSeqs, TokenRows};
use crate::model::training::TrainBatch;
use anyhow::{bail, Result};
use cudarc::driver::CudaSlice;

/// A batch on the device.
pub struct GpuBatch {
    n: usize,
    tokens: CudaSlice<u32>, // (N)
    /// The rows grouped by token, for the embedding's backward.
    token_rows: TokenRows,
    /// Row offsets of the sequences: (S + 1).
    seq_starts: CudaSlice<i32>,
    max_len: usize,
    /// Rotary tables of the rows' positions: (N, D/2) each.
    cos: CudaSlice<f32>,
    sin: CudaSlice<f32>,
    /// Rows whose next token is scored: (M), their targets: (M), and the offsets of each
    /// sequence's scored rows among them: (S + 1).
    scored_rows: CudaSlice<i32>,
    targets: CudaSlice<u32>,
    scored_starts: CudaSlice<i32>,
    m: usize,
    s: usize,
}

impl GpuBatch {
    pub fn upload<T: Storage>(model: &GpuModel<T>, batch: &TrainBatch) -> Result<GpuBatch> {
        let cfg = &model.config;
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
        let stream = &model.gpu.stream;
        let mut seq_starts = vec![0i32];
        seq_starts.extend(batch.seqs.iter().map(|s| s.end as i32));
        let mut scored_starts = vec![0i32; batch.seqs.len() + 1];
        for &s in &batch.scored_seq {
            scored_starts[s + 1] += 1;
        }
        for i in 1..scored_starts.len() {
            scored_starts[i] += scored_starts[i - 1];
        }
        let rows: Vec<i32> = batch.scored_rows.iter().map(|&r| r as i32).collect();
        let (cos, sin) = model.rope_tables(&batch.positions)?;
        Ok(GpuBatch {
            n,
            tokens: stream.clone_htod(&batch.tokens)?,
            token_rows: TokenRows::new(&model.gpu, &batch.tokens)?,
            seq_starts: stream.clone_htod(&seq_starts)?,
            max_len: batch.seqs.iter().map(|s| s.len()).max().unwrap_or(0),
            cos,
            sin,
            scored_rows: stream.clone_htod(&rows)?,
            targets: stream.clone_htod(&batch.targets)?,
            scored_starts: stream.clone_htod(&scored_starts)?,
            m: batch.scored_rows.len(),
            s: batch.seqs.len(),
        })
    }

    fn packed(&self) -> PackedSeqs<'_> {
        PackedSeqs {
            starts: &self.seq_starts,
            max_len: self.max_len,
        }
    }
}

/// What one layer's forward keeps for its backward.
struct LayerState<T: Storage> {
    x_in: CudaSlice<T>,    // (N, C) residual stream entering the layer
    h_attn: CudaSlice<T>,  // (N, C) input_layernorm output
    q: CudaSlice<T>,       // (N, H*D) after rope
    k: CudaSlice<T>,       // (N, Hkv*D) after rope
    v: CudaSlice<T>,       // (N, Hkv*D)
    att: CudaSlice<T>,     // (N, H*D) attention output
    lse: CudaSlice<f32>,   // (N, H)
    x_mid: CudaSlice<T>,   // (N, C) residual stream after attention
    h_mlp: CudaSlice<T>,   // (N, C) post_attention_layernorm output
    gate_up: CudaSlice<T>, // (N, 2I) each row gate, then up
    act: CudaSlice<T>,     // (N, I)
}

/// The saved activations of one forward.
pub struct GpuActivations<T: Storage> {
    layers: Vec<LayerState<T>>,
    x_scored: CudaSlice<T>, // (M, C) the residual stream leaving the last layer, scored rows
    hidden: CudaSlice<T>,   // (M, C) final-norm output of the scored rows
    logp: CudaSlice<f32>,   // (M)
    lse: CudaSlice<f32>,    // (M)
}

const FORWARD: &str = "in the forward of a micro-batch";
const BACKWARD: &str = "in the backward of a micro-batch";

impl<T: Storage> GpuModel<T> {
    /// Forward through the layers, the final norm and the log-probs of the scored rows.
    fn forward_logprobs(
        &self,
        b: &GpuBatch,
        scratch: &mut LogitsScratch,
    ) -> Result<GpuActivations<T>> {
        let gpu: &Gpu = &self.gpu;
        let cfg = &self.config;
        let (c, im, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let qkv_dim = qd + 2 * kvd;
        let dims = self.attention_dims();
        let eps = cfg.rms_norm_eps;
        let n = b.n;
        let lay = &self.layout;

        let mut x = gpu.alloc::<T>(n * c, FORWARD)?; // (N, C)
        gpu.embedding_forward(&mut x, &b.tokens, &self.w(&lay.embed_tokens), c)?;
        let mut qkv = gpu.alloc::<T>(n * qkv_dim, FORWARD)?; // (N, (H + 2 Hkv) * D)
        let mut h = gpu.alloc::<T>(n * c, FORWARD)?; // (N, C)
        let mut layers = Vec::with_capacity(lay.layers.len());
        for w in &lay.layers {
            let mut st = LayerState {
                x_in: gpu.alloc::<T>(n * c, FORWARD)?,
                h_attn: gpu.alloc::<T>(n * c, FORWARD)?,
                q: gpu.alloc::<T>(n * qd, FORWARD)?,
                k: gpu.alloc::<T>(n * kvd, FORWARD)?,
                v: gpu.alloc::<T>(n * kvd, FORWARD)?,
                att: gpu.alloc::<T>(n * qd, FORWARD)?,
                lse: gpu.alloc::<f32>(n * dims.n_head, FORWARD)?,
                x_mid: gpu.alloc::<T>(n * c, FORWARD)?,
                h_mlp: gpu.alloc::<T>(n * c, FORWARD)?,
                gate_up: gpu.alloc::<T>(n * 2 * im, FORWARD)?,
                act: gpu.alloc::<T>(n * im, FORWARD)?,
            };
            gpu.stream.memcpy_dtod(&x, &mut st.x_in)?;
            self.attention_inputs(
                w,
                &x,
                &mut st.h_attn,
                &mut qkv,
                (&mut st.q, &mut st.k, &mut st.v),
                (&b.cos, &b.sin),
                n,
            )?;
            gpu.attention_forward(
                &mut st.att,
                &mut st.lse,
                &st.q,
                &st.k,
                &st.v,
                &b.packed(),
                dims,
            )?;
            gpu.matmul_forward(&mut h, &st.att, &self.w(&w.o_proj), None, n, qd, c)?;
            gpu.add_inplace(&mut x, &h)?;
            gpu.stream.memcpy_dtod(&x, &mut st.x_mid)?;
            gpu.rmsnorm_forward(
                &mut st.h_mlp,
                &x,
                &self.w(&w.post_attention_layernorm),
                eps,
                n,
                c,
            )?;
            gpu.matmul_forward(
                &mut st.gate_up,
                &st.h_mlp,
                &self.w(&w.gate_up_proj()),
                None,
                n,
                c,
                2 * im,
            )?;
            gpu.swiglu_forward(&mut st.act, &st.gate_up, im)?;
            gpu.matmul_forward(&mut h, &st.act, &self.w(&w.down_proj), None, n, im, c)?;
            gpu.add_inplace(&mut x, &h)?;
            layers.push(st);
        }
        drop((qkv, h));

        // Only the scored rows go through the final norm and the LM head.
        let m = b.m;
        let mut x_scored = gpu.alloc::<T>(m * c, FORWARD)?;
        gpu.gather_rows(&mut x_scored, &x, &b.scored_rows, c)?;
        let mut hidden = gpu.alloc::<T>(m * c, FORWARD)?;
        gpu.rmsnorm_forward(&mut hidden, &x_scored, &self.w(&lay.norm), eps, m, c)?;
        let mut logp = gpu.alloc::<f32>(m, FORWARD)?;
        let mut lse = gpu.alloc::<f32>(m, FORWARD)?;
        gpu.logprobs_forward(
            &mut logp,
            &mut lse,
            &hidden,
            &self.w(&lay.lm_head),
            &b.targets,
            c,
            v,
            scratch,
        )?;
        Ok(GpuActivations {
            layers,
            x_scored,
            hidden,
            logp,
            lse,
        })
    }

    /// The summed completion log-prob of each sequence (f64 sums of the f32 row log-probs,
    /// as on the CPU).
    fn sums(&self, b: &GpuBatch, acts: &GpuActivations<T>) -> Result<Vec<f64>> {
        let mut sums = self.gpu.alloc::<f64>(b.s, FORWARD)?;
        self.gpu
            .sequence_sums(&mut sums, &acts.logp, &b.scored_starts)?;
        Ok(self.gpu.stream.clone_dtoh(&sums)?)
    }

    /// Twin of `Model::sequence_logprobs`: each sequence's summed completion log-prob.
    pub fn sequence_logprobs(
        &self,
        batch: &TrainBatch,
        scratch: &mut LogitsScratch,
    ) -> Result<Vec<f64>> {
        let b = GpuBatch::upload(self, batch)?;
        let acts = self.forward_logprobs(&b, scratch)?;
        self.sums(&b, &acts)
    }

    /// Twin of `Model::sequence_logprobs_with_grad`: `groups` gives the number of
    /// consecutive sequences of each loss group, `loss(group, logps)` returns d(loss)/d(sum)
    /// of each of its sequences; gradients accumulate into `grads`: (P) f32. Returns each
    /// sequence's summed log-prob.
    pub fn sequence_logprobs_with_grad(
        &self,
        batch: &TrainBatch,
        groups: &[usize],
        loss: &mut dyn FnMut(usize, &[f64]) -> Vec<f64>,
        grads: &mut CudaSlice<f32>,
        scratch: &mut LogitsScratch,
    ) -> Result<Vec<f64>> {
        if groups.iter().sum::<usize>() != batch.seqs.len() {
            bail!("the loss groups do not cover the batch");
        }
        if grads.len() != self.layout.len {
            bail!("the gradient buffer does not match the model");
        }
        let b = GpuBatch::upload(self, batch)?;
        let acts = self.forward_logprobs(&b, scratch)?;
        let sums = self.sums(&b, &acts)?;
        let mut dseq = Vec::with_capacity(b.s);
        let mut s0 = 0;
        for (g, &size) in groups.iter().enumerate() {
            let d = loss(g, &sums[s0..s0 + size]);
            if d.len() != size {
                bail!("the loss gave {} gradients for {size} sequences", d.len());
            }
            dseq.extend(d.into_iter().map(|x| x as f32));
            s0 += size;
        }
        self.backward(&b, &acts, &dseq, grads, scratch)?;
        Ok(sums)
    }

    /// Backward from d(loss)/d(sum) of each sequence, dseq: (S), through the LM head, the
    /// final norm, the layers and the embedding; parameter gradients accumulate.
    fn backward(
        &self,
        b: &GpuBatch,
        acts: &GpuActivations<T>,
        dseq: &[f32],
        grads: &mut CudaSlice<f32>,
        scratch: &mut LogitsScratch,
    ) -> Result<()> {
        let gpu: &Gpu = &self.gpu;
        let cfg = &self.config;
        let lay = &self.layout;
        let (c, im, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let qkv_dim = qd + 2 * kvd;
        let dims = self.attention_dims();
        let half = cfg.head_dim / 2;
        let eps = cfg.rms_norm_eps;
        let (n, m) = (b.n, b.m);
        let at = |stride, offset| Columns { stride, offset };

        // The LM head: d(log-prob) of each scored row is its sequence's d(sum).
        let dseq = gpu.stream.clone_htod(dseq)?;
        let mut dlogp = gpu.alloc::<f32>(m, BACKWARD)?;
        gpu.expand_per_row(&mut dlogp, &dseq, &b.scored_starts, m)?;
        let mut dhidden = gpu.alloc::<T>(m * c, BACKWARD)?;
        gpu.logprobs_backward(
            &mut dhidden,
            &mut grads.slice_mut(lay.lm_head.clone()),
            &dlogp,
            &acts.hidden,
            &self.w(&lay.lm_head),
            &b.targets,
            &acts.lse,
            c,
            v,
            scratch,
        )?;
        let mut rms_scratch = gpu.alloc::<f32>(n.max(m) * c, BACKWARD)?;
        let mut dx_scored = gpu.alloc::<T>(m * c, BACKWARD)?;
        gpu.rmsnorm_backward(
            &mut dx_scored,
            &mut grads.slice_mut(lay.norm.clone()),
            &mut rms_scratch,
            &dhidden,
            &acts.x_scored,
            &self.w(&lay.norm),
            eps,
            m,
            c,
        )?;
        drop(dhidden);
        // (N, C) gradient of the residual stream: zero except at the scored rows.
        let mut dx = gpu.alloc::<T>(n * c, BACKWARD)?;
        gpu.scatter_rows(&mut dx, &dx_scored, &b.scored_rows, c)?;
        drop(dx_scored);

        // Activation gradients are assigned by every op: the buffers need no clearing.
        let mut dh = gpu.alloc::<T>(n * c, BACKWARD)?;
        let mut dnorm_in = gpu.alloc::<T>(n * c, BACKWARD)?;
        let mut dact = gpu.alloc::<T>(n * im, BACKWARD)?;
        let mut dgate_up = gpu.alloc::<T>(n * 2 * im, BACKWARD)?;
        let mut datt = gpu.alloc::<T>(n * qd, BACKWARD)?;
        let mut dq = gpu.alloc::<T>(n * qd, BACKWARD)?;
        let mut dk = gpu.alloc::<T>(n * kvd, BACKWARD)?;
        let mut dv = gpu.alloc::<T>(n * kvd, BACKWARD)?;
        let mut dqkv = gpu.alloc::<T>(n * qkv_dim, BACKWARD)?;
        let mut att_scratch = AttentionScratch::new(gpu, n, dims)?;
        for (w, st) in lay.layers.iter().zip(&acts.layers).rev() {
            // MLP: x_out = x_mid + down(swiglu(gate_up(norm(x_mid)))).
            gpu.matmul_backward(
                &mut dact,
                &mut grads.slice_mut(w.down_proj.clone()),
                None,
                &dx,
                &st.act,
                &self.w(&w.down_proj),
                (n, im, c),
            )?;
            gpu.swiglu_backward(&mut dgate_up, &dact, &st.gate_up, im)?;
            gpu.matmul_backward(
                &mut dh,
                &mut grads.slice_mut(w.gate_up_proj()),
                None,
                &dgate_up,
                &st.h_mlp,
                &self.w(&w.gate_up_proj()),
                (n, c, 2 * im),
            )?;
            gpu.rmsnorm_backward(
                &mut dnorm_in,
                &mut grads.slice_mut(w.post_attention_layernorm.clone()),
                &mut rms_scratch,
                &dh,
                &st.x_mid,
                &self.w(&w.post_attention_layernorm),
                eps,
                n,
                c,
            )?;
            // The residual's two branches meet: their gradients add.
            gpu.add_inplace(&mut dx, &dnorm_in)?;

            // Attention: x_mid = x_in + o(attention(rope(q), rope(k), v)).
            gpu.matmul_backward(
                &mut datt,
                &mut grads.slice_mut(w.o_proj.clone()),
                None,
                &dx,
                &st.att,
                &self.w(&w.o_proj),
                (n, qd, c),
            )?;
            gpu.attention_backward(
                &mut dq,
                &mut dk,
                &mut dv,
                &mut att_scratch,
                &datt,
                &st.q,
                &st.k,
                &st.v,
                &st.att,
                &st.lse,
                &b.packed(),
                dims,
            )?;
            gpu.rope(&mut dq, &b.cos, &b.sin, dims.n_head, half, -1.0)?;
            gpu.rope(&mut dk, &b.cos, &b.sin, dims.n_kv_head, half, -1.0)?;
            gpu.copy_columns((&mut dqkv, at(qkv_dim, 0)), (&dq, at(qd, 0)), n, qd)?;
            gpu.copy_columns((&mut dqkv, at(qkv_dim, qd)), (&dk, at(kvd, 0)), n, kvd)?;
            gpu.copy_columns(
                (&mut dqkv, at(qkv_dim, qd + kvd)),
                (&dv, at(kvd, 0)),
                n,
                kvd,
            )?;
            // The fused qkv weight and its bias are contiguous in the gradient buffer.
            let wr = w.qkv_proj();
            match w.qkv_bias() {
                Some(br) => {
                    if wr.end != br.start {
                        bail!("the qkv bias does not follow the qkv weights");
                    }
                    let mut both = grads.slice_mut(wr.start..br.end);
                    let (mut dweight, mut dbias) = both.split_at_mut(wr.len());
                    gpu.matmul_backward(
                        &mut dh,
                        &mut dweight,
                        Some(&mut dbias),
                        &dqkv,
                        &st.h_attn,
                        &self.w(&wr),
                        (n, c, qkv_dim),
                    )?;
                }
                None => gpu.matmul_backward(
                    &mut dh,
                    &mut grads.slice_mut(wr.clone()),
                    None,
                    &dqkv,
                    &st.h_attn,
                    &self.w(&wr),
                    (n, c, qkv_dim),
                )?,
            }
            gpu.rmsnorm_backward(
                &mut dnorm_in,
                &mut grads.slice_mut(w.input_layernorm.clone()),
                &mut rms_scratch,
                &dh,
                &st.x_in,
                &self.w(&w.input_layernorm),
                eps,
                n,
                c,
            )?;
            gpu.add_inplace(&mut dx, &dnorm_in)?;
        }
        gpu.embedding_backward(
            &mut grads.slice_mut(lay.embed_tokens.clone()),
            &dx,
            &b.token_rows,
            c,
        )?;
        Ok(())
    }
}
