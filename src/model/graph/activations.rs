//! The graph's working memory: what each layer's forward keeps for its backward, the
//! activation gradients, and the logits scratch of the LM head. It lives as long as the
//! trainer or scorer that owns it and is sized for the largest micro-batch up front
//! (`Activations::new`), so a pass allocates nothing; a larger batch grows it once.

use super::Net;
use crate::backend::ops::Ops;
use crate::model::config::ModelConfig;
use crate::model::lora::Target;
use anyhow::Result;

/// What one layer's forward keeps for its backward. Shapes per the `backend` legend.
pub(crate) struct LayerState<O: Ops> {
    /// (N, C) residual stream entering the layer, and after its attention: kept for the
    /// backward only (empty where no backward comes).
    pub x_in: O::Buf<O::S>,
    pub h_attn: O::Buf<O::S>, // (N, C) input_layernorm output
    pub q: O::Buf<O::S>,      // (N, H*D) after rope
    pub k: O::Buf<O::S>,      // (N, Hkv*D) after rope
    pub v: O::Buf<O::S>,      // (N, Hkv*D)
    pub att: O::Buf<O::S>,    // (N, H*D) attention output
    pub lse: O::Buf<f32>,     // (N, H)
    pub x_mid: O::Buf<O::S>,
    pub h_mlp: O::Buf<O::S>,   // (N, C) post_attention_layernorm output
    pub gate_up: O::Buf<O::S>, // (N, 2I) each row gate, then up
    pub act: O::Buf<O::S>,     // (N, I)
    /// With an adapter: t = x A^T, (N, r), of each adapted Linear, in `Target::ALL`'s
    /// order (empty for a Linear the adapter leaves alone); what its backward reads.
    pub lora_t: Vec<O::Buf<O::S>>,
}

/// Activation gradients of one layer's backward, reused from layer to layer.
pub(crate) struct GradScratch<O: Ops> {
    pub dx: O::Buf<O::S>,        // (N, C) gradient of the residual stream
    pub dh: O::Buf<O::S>,        // (N, C)
    pub dnorm_in: O::Buf<O::S>,  // (N, C)
    pub dact: O::Buf<O::S>,      // (N, I)
    pub dgate_up: O::Buf<O::S>,  // (N, 2I)
    pub datt: O::Buf<O::S>,      // (N, H*D)
    pub dq: O::Buf<O::S>,        // (N, H*D)
    pub dk: O::Buf<O::S>,        // (N, Hkv*D)
    pub dv: O::Buf<O::S>,        // (N, Hkv*D)
    pub dqkv: O::Buf<O::S>,      // (N, (H + 2 Hkv) * D)
    pub dx_scored: O::Buf<O::S>, // (M, C)
    pub dhidden: O::Buf<O::S>,   // (M, C)
    /// With an adapter: s times one Linear's output gradient (N, out), its t's gradient
    /// (N, r) and its input's share (N, in).
    pub lora_dy: O::Buf<O::S>,
    pub lora_dt: O::Buf<O::S>,
    pub lora_dx: O::Buf<O::S>,
}

/// The saved activations of the last forward and the scratch of the backward.
pub struct Activations<O: Ops> {
    /// Rows the buffers were allocated for.
    rows: usize,
    pub(crate) layers: Vec<LayerState<O>>,
    pub(crate) x: O::Buf<O::S>,   // (N, C) the residual stream
    pub(crate) h: O::Buf<O::S>,   // (N, C)
    pub(crate) qkv: O::Buf<O::S>, // (N, (H + 2 Hkv) * D)
    /// With an adapter: u = t B^T of one Linear, (N, out), before it is scaled into the
    /// Linear's output (where the device cannot add it in place).
    pub(crate) lora_u: O::Buf<O::S>,
    /// With LoRA dropout: one Linear's dropped input, (N, in), in its forward and again in
    /// its backward.
    pub(crate) lora_x: O::Buf<O::S>,
    pub(crate) x_scored: O::Buf<O::S>, // (M, C) the residual stream leaving the last layer
    pub(crate) hidden: O::Buf<O::S>,   // (M, C) final-norm output of the scored rows
    pub(crate) logp: O::Buf<f32>,      // (M)
    pub(crate) lse: O::Buf<f32>,       // (M)
    pub(crate) grads: Option<GradScratch<O>>,
    pub(crate) logits: Option<O::LogitsScratch>,
    /// A head's rows, their final norm and its output: (R, C), (R, C), (R, out) f32.
    pub(crate) head_in: O::Buf<O::S>,
    pub(crate) head_norm: O::Buf<O::S>,
    pub(crate) head_out: O::Buf<f32>,
}

/// The width of t = x A^T for the Linear `target`: the adapter's rank where it adapts that
/// Linear, else 0.
fn lora_rank<O: Ops>(net: &Net<O>, target: Target) -> usize {
    match &net.lora {
        Some(l) if l.layout.linears.iter().any(|a| a.target == target) => l.r,
        _ => 0,
    }
}

/// The widest output of an adapted Linear (0 without an adapter).
fn lora_out<O: Ops>(net: &Net<O>) -> usize {
    net.lora.as_ref().map_or(0, |l| {
        l.layout
            .linears
            .iter()
            .map(|a| a.out_dim)
            .max()
            .unwrap_or(0)
    })
}

/// The widest input of an adapted Linear (0 without an adapter).
fn lora_in<O: Ops>(net: &Net<O>) -> usize {
    net.lora.as_ref().map_or(0, |l| {
        l.layout.linears.iter().map(|a| a.in_dim).max().unwrap_or(0)
    })
}

/// The widest input of an adapted Linear where the adapter drops its inputs out (else 0).
fn lora_dropped_in<O: Ops>(net: &Net<O>) -> usize {
    match net.lora.as_ref().is_some_and(|l| l.dropout.is_some()) {
        true => lora_in(net),
        false => 0,
    }
}

/// The widths of the per-row buffers: (C, QD, KVD, I, H).
fn widths(cfg: &ModelConfig) -> (usize, usize, usize, usize, usize) {
    (
        cfg.hidden_size,
        cfg.q_dim(),
        cfg.kv_dim(),
        cfg.intermediate_size,
        cfg.num_attention_heads,
    )
}

const STAGE: &str = "for the activations of a micro-batch (sized by --micro-batch-tokens)";

impl<O: Ops> Activations<O> {
    /// Working memory for batches of up to `rows` rows, with room for the backward (every
    /// layer's state kept) or for a forward alone (one layer's state, reused).
    pub fn new(net: &Net<O>, rows: usize, backward: bool) -> Result<Self> {
        let ops = net.ops;
        let layers = if backward { net.layout.layers.len() } else { 1 };
        let (c, qd, kvd, im, h) = widths(net.config);
        let a = |w: usize| ops.alloc::<O::S>(rows * w, STAGE);
        let mut states = Vec::with_capacity(layers);
        for _ in 0..layers {
            states.push(LayerState {
                x_in: a(if backward { c } else { 0 })?,
                h_attn: a(c)?,
                q: a(qd)?,
                k: a(kvd)?,
                v: a(kvd)?,
                att: a(qd)?,
                lse: ops.alloc::<f32>(rows * h, STAGE)?,
                x_mid: a(if backward { c } else { 0 })?,
                h_mlp: a(c)?,
                gate_up: a(2 * im)?,
                act: a(im)?,
                lora_t: Target::ALL
                    .iter()
                    .map(|&t| a(lora_rank(net, t)))
                    .collect::<Result<_>>()?,
            });
        }
        let grads = if backward {
            Some(GradScratch {
                dx: a(c)?,
                dh: a(c)?,
                dnorm_in: a(c)?,
                dact: a(im)?,
                dgate_up: a(2 * im)?,
                datt: a(qd)?,
                dq: a(qd)?,
                dk: a(kvd)?,
                dv: a(kvd)?,
                dqkv: a(qd + 2 * kvd)?,
                dx_scored: a(0)?,
                dhidden: a(0)?,
                lora_dy: a(lora_out(net))?,
                lora_dt: a(net.lora.as_ref().map_or(0, |l| l.r))?,
                lora_dx: a(lora_in(net))?,
            })
        } else {
            None
        };
        Ok(Activations {
            rows,
            layers: states,
            x: a(c)?,
            h: a(c)?,
            qkv: a(qd + 2 * kvd)?,
            lora_u: a(lora_out(net))?,
            lora_x: a(lora_dropped_in(net))?,
            x_scored: a(0)?,
            hidden: a(0)?,
            logp: ops.alloc::<f32>(0, STAGE)?,
            lse: ops.alloc::<f32>(0, STAGE)?,
            grads,
            logits: None,
            head_in: a(0)?,
            head_norm: a(0)?,
            head_out: ops.alloc::<f32>(0, STAGE)?,
        })
    }

    /// Makes the LM head hold `rows` rows of logits at a time (tests use a few, so that a
    /// batch spans several chunks).
    pub fn set_chunk_rows(&mut self, net: &Net<O>, rows: usize) -> Result<()> {
        self.logits = Some(net.ops.logits_scratch(net.config.vocab_size, Some(rows))?);
        Ok(())
    }

    /// The LM head's logits scratch, made on first use (generation and classifiers never
    /// need it).
    pub(crate) fn logits_scratch(&mut self, net: &Net<O>) -> Result<&mut O::LogitsScratch> {
        if self.logits.is_none() {
            self.logits = Some(net.ops.logits_scratch(net.config.vocab_size, None)?);
        }
        Ok(self.logits.as_mut().expect("made above"))
    }

    /// Sets every buffer to n rows (m scored), growing the memory first when n is more than
    /// it holds.
    pub(crate) fn fit(&mut self, net: &Net<O>, n: usize, m: usize) -> Result<()> {
        if n > self.rows {
            // The old buffers go before the new ones are allocated, so growing never needs
            // both at once.
            let backward = self.grads.is_some();
            let logits = self.logits.take();
            *self = Self::new(net, 0, backward)?;
            *self = Self::new(net, n, backward)?;
            self.logits = logits;
        }
        let ops = net.ops;
        let (c, qd, kvd, im, h) = widths(net.config);
        let saved = if self.grads.is_some() { c } else { 0 };
        for st in &mut self.layers {
            for (buf, w) in [
                (&mut st.x_in, saved),
                (&mut st.h_attn, c),
                (&mut st.q, qd),
                (&mut st.k, kvd),
                (&mut st.v, kvd),
                (&mut st.att, qd),
                (&mut st.x_mid, saved),
                (&mut st.h_mlp, c),
                (&mut st.gate_up, 2 * im),
                (&mut st.act, im),
            ] {
                ops.set_len(buf, n * w)?;
            }
            ops.set_len(&mut st.lse, n * h)?;
            for (buf, &t) in st.lora_t.iter_mut().zip(&Target::ALL) {
                ops.set_len(buf, n * lora_rank(net, t))?;
            }
        }
        ops.set_len(&mut self.lora_u, n * lora_out(net))?;
        ops.set_len(&mut self.lora_x, n * lora_dropped_in(net))?;
        for (buf, len) in [
            (&mut self.x, n * c),
            (&mut self.h, n * c),
            (&mut self.qkv, n * (qd + 2 * kvd)),
        ] {
            ops.set_len(buf, len)?;
        }
        // The scored rows' buffers grow when a batch scores more rows than any before.
        ops.reserve(&mut self.x_scored, m * c, STAGE)?;
        ops.reserve(&mut self.hidden, m * c, STAGE)?;
        ops.reserve(&mut self.logp, m, STAGE)?;
        ops.reserve(&mut self.lse, m, STAGE)?;
        if let Some(g) = &mut self.grads {
            for (buf, len) in [
                (&mut g.dx, n * c),
                (&mut g.dh, n * c),
                (&mut g.dnorm_in, n * c),
                (&mut g.dact, n * im),
                (&mut g.dgate_up, n * 2 * im),
                (&mut g.datt, n * qd),
                (&mut g.dq, n * qd),
                (&mut g.dk, n * kvd),
                (&mut g.dv, n * kvd),
                (&mut g.dqkv, n * (qd + 2 * kvd)),
            ] {
                ops.set_len(buf, len)?;
            }
            ops.set_len(&mut g.lora_dy, n * lora_out(net))?;
            ops.set_len(&mut g.lora_dt, n * net.lora.as_ref().map_or(0, |l| l.r))?;
            ops.set_len(&mut g.lora_dx, n * lora_in(net))?;
            ops.reserve(&mut g.dx_scored, m * c, STAGE)?;
            ops.reserve(&mut g.dhidden, m * c, STAGE)?;
        }
        Ok(())
    }
}
