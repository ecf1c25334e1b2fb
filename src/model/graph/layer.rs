//! One decoder layer, forward and backward:
//! x_mid = x_in + o(attention(rope(q), rope(k), v)) with q, k, v from qkv(norm(x_in)), then
//! x_out = x_mid + down(swiglu(gate_up(norm(x_mid)))).

use super::activations::{GradScratch, LayerState};
use super::lora::{lora_backward, lora_forward, LoraScratch};
use super::Net;
use crate::backend::ops::{Ops, Scratch2};
use crate::backend::settings::Columns;
use crate::model::lora::Target;
use crate::model::params::LayerParams;
use anyhow::{bail, Result};

/// An adapter's gradient buffer (its layout) and the scratch of a dropped input.
pub(crate) type AdapterGrads<'a, O> = (
    &'a mut <O as Ops>::Buf<f32>,
    &'a mut <O as Ops>::Buf<<O as Ops>::S>,
);

/// What a layer's attention reads its keys and values from.
pub enum Attend<'p, 'c, O: Ops> {
    /// Fresh whole sequences over their own keys (training, a prefill, a classifier); where
    /// caches are given, each layer's keys and values are also written there (a prefill).
    Packed(&'p O::Seqs, Option<&'p mut O::Caches<'c>>),
    /// New rows continuing the caches, which they extend (a decode step).
    Cached(&'p mut O::Caches<'c>),
}

/// The forward of layer l (weights `w`) over the packed rows of x: (N, C), in place. `st`
/// receives what the backward needs; `h`: (N, C), `qkv`: (N, QD + 2 KVD) and `lora` (an
/// adapter's product and dropped input) are scratch.
#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_forward<O: Ops>(
    net: &Net<O>,
    l: usize,
    w: &LayerParams,
    st: &mut LayerState<O>,
    x: &mut O::Buf<O::S>,
    h: &mut O::Buf<O::S>,
    qkv: &mut O::Buf<O::S>,
    lora: Scratch2<'_, O>,
    attend: &mut Attend<O>,
    rope: &O::Rope,
    n: usize,
) -> Result<()> {
    let ops = net.ops;
    let at = |stride, offset| Columns { stride, offset };
    let cfg = net.config;
    let (c, im) = (cfg.hidden_size, cfg.intermediate_size);
    let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
    let dims = net.attention_dims();
    let eps = cfg.rms_norm_eps;
    let (lora_u, lora_x) = lora;

    // The residual stream is saved only where a backward will read it.
    let save = O::len(&st.x_in) > 0;
    if save {
        ops.copy(&mut st.x_in, x)?;
    }
    ops.rmsnorm_forward(&mut st.h_attn, x, net.w(&w.input_layernorm), eps, c)?;
    // q, k and v are adjacent in the layout: one product, then split per row.
    let bias = w.qkv_bias().map(|r| net.w(&r));
    ops.matmul_forward(
        qkv,
        &st.h_attn,
        net.w(&w.qkv_proj()),
        bias,
        n,
        c,
        qd + 2 * kvd,
    )?;
    for (target, offset) in [(Target::Q, 0), (Target::K, qd), (Target::V, qd + kvd)] {
        let cols = at(qd + 2 * kvd, offset);
        let t = &mut st.lora_t[target as usize];
        let work = (&mut *lora_u, &mut *lora_x);
        lora_forward(net, l, target, &st.h_attn, qkv, cols, t, work, n)?;
    }
    ops.qkv_split(&mut st.q, &mut st.k, &mut st.v, qkv, qd, kvd)?;
    ops.rope_forward(&mut st.q, rope, dims.n_head)?;
    ops.rope_forward(&mut st.k, rope, dims.n_kv_head)?;
    match attend {
        Attend::Packed(seqs, caches) => {
            if let Some(caches) = caches {
                ops.cache_fill(caches, l, &st.k, &st.v)?;
            }
            ops.attention_forward(&mut st.att, &mut st.lse, &st.q, &st.k, &st.v, seqs, dims)?;
        }
        Attend::Cached(caches) => {
            let (out, lse) = (&mut st.att, &mut st.lse);
            ops.cached_attention(out, lse, &st.q, &st.k, &st.v, caches, l, dims)?;
        }
    }
    ops.matmul_forward(h, &st.att, net.w(&w.o_proj), None, n, qd, c)?;
    let t = &mut st.lora_t[Target::O as usize];
    let work = (&mut *lora_u, &mut *lora_x);
    lora_forward(net, l, Target::O, &st.att, h, at(c, 0), t, work, n)?;
    ops.residual_forward(x, h)?;

    if save {
        ops.copy(&mut st.x_mid, x)?;
    }
    let post_norm = net.w(&w.post_attention_layernorm);
    ops.rmsnorm_forward(&mut st.h_mlp, x, post_norm, eps, c)?;
    ops.matmul_forward(
        &mut st.gate_up,
        &st.h_mlp,
        net.w(&w.gate_up_proj()),
        None,
        n,
        c,
        2 * im,
    )?;
    for (target, offset) in [(Target::Gate, 0), (Target::Up, im)] {
        let t = &mut st.lora_t[target as usize];
        let cols = at(2 * im, offset);
        let work = (&mut *lora_u, &mut *lora_x);
        lora_forward(net, l, target, &st.h_mlp, &mut st.gate_up, cols, t, work, n)?;
    }
    ops.swiglu_forward(&mut st.act, &st.gate_up, im)?;
    ops.matmul_forward(h, &st.act, net.w(&w.down_proj), None, n, im, c)?;
    let t = &mut st.lora_t[Target::Down as usize];
    lora_forward(
        net,
        l,
        Target::Down,
        &st.act,
        h,
        at(c, 0),
        t,
        (lora_u, lora_x),
        n,
    )?;
    ops.residual_forward(x, h)
}

/// The backward of layer l (weights `w`): g.dx: (N, C) the gradient of the layer's output
/// becomes that of its input; parameter gradients accumulate into `grads` (None: the
/// model's weights are frozen and no gradient of theirs is formed), and with an adapter,
/// the adapter's into `lora.0` (its layout), `lora.1` the scratch of a dropped input.
#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_backward<O: Ops>(
    net: &Net<O>,
    l: usize,
    w: &LayerParams,
    st: &LayerState<O>,
    g: &mut GradScratch<O>,
    mut grads: Option<&mut O::Buf<f32>>,
    mut lora: Option<AdapterGrads<'_, O>>,
    seqs: &O::Seqs,
    rope: &O::Rope,
    n: usize,
) -> Result<()> {
    let ops = net.ops;
    let at = |stride, offset| Columns { stride, offset };
    // The adapter's share of Linear `target`: from the output gradient `dy` (its block
    // `cols`), with the forward's input `x`, into the input gradient `dx`.
    macro_rules! lora {
        ($target:expr, $dy:ident, $cols:expr, $x:expr, $dx:ident) => {
            if let Some((lg, dropped)) = lora.as_mut() {
                let scratch = LoraScratch {
                    dy: &mut g.lora_dy,
                    dt: &mut g.lora_dt,
                    dx: &mut g.lora_dx,
                    x: &mut **dropped,
                };
                let t = &st.lora_t[$target as usize];
                let lg = &mut **lg;
                lora_backward(
                    net, l, $target, &g.$dy, $cols, $x, t, &mut g.$dx, scratch, lg, n,
                )?;
            }
        };
    }
    let cfg = net.config;
    let (c, im) = (cfg.hidden_size, cfg.intermediate_size);
    let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
    let dims = net.attention_dims();
    let eps = cfg.rms_norm_eps;
    // Activation gradients are assigned by every op, so the reused buffers need no
    // clearing.

    // MLP: x_out = x_mid + down(swiglu(gate_up(norm(x_mid)))).
    let down = grad_of::<O>(&mut grads, &w.down_proj);
    ops.matmul_backward(
        &mut g.dact,
        down,
        None,
        &g.dx,
        &st.act,
        net.w(&w.down_proj),
        n,
        im,
        c,
    )?;
    lora!(Target::Down, dx, at(c, 0), &st.act, dact);
    ops.swiglu_backward(&mut g.dgate_up, &g.dact, &st.gate_up, im)?;
    let gate_up = w.gate_up_proj();
    let dgate_up = grad_of::<O>(&mut grads, &gate_up);
    let wgu = net.w(&gate_up);
    ops.matmul_backward(
        &mut g.dh,
        dgate_up,
        None,
        &g.dgate_up,
        &st.h_mlp,
        wgu,
        n,
        c,
        2 * im,
    )?;
    lora!(Target::Gate, dgate_up, at(2 * im, 0), &st.h_mlp, dh);
    lora!(Target::Up, dgate_up, at(2 * im, im), &st.h_mlp, dh);
    let post = &w.post_attention_layernorm;
    let dpost = grad_of::<O>(&mut grads, post);
    ops.rmsnorm_backward(
        &mut g.dnorm_in,
        dpost,
        &g.dh,
        &st.x_mid,
        net.w(post),
        eps,
        c,
    )?;
    // The residual's two branches meet: their gradients add.
    ops.residual_forward(&mut g.dx, &g.dnorm_in)?;

    // Attention: x_mid = x_in + o(attention(rope(q), rope(k), v)).
    let o = grad_of::<O>(&mut grads, &w.o_proj);
    ops.matmul_backward(
        &mut g.datt,
        o,
        None,
        &g.dx,
        &st.att,
        net.w(&w.o_proj),
        n,
        qd,
        c,
    )?;
    lora!(Target::O, dx, at(c, 0), &st.att, datt);
    ops.attention_backward(
        &mut g.dq, &mut g.dk, &mut g.dv, &g.datt, &st.q, &st.k, &st.v, &st.att, &st.lse, seqs, dims,
    )?;
    ops.rope_backward(&mut g.dq, rope, dims.n_head)?;
    ops.rope_backward(&mut g.dk, rope, dims.n_kv_head)?;
    ops.qkv_join(&mut g.dqkv, &g.dq, &g.dk, &g.dv, qd, kvd)?;
    // The fused qkv weight and its bias are contiguous in the gradient buffer too.
    let wr = w.qkv_proj();
    let wqkv = net.w(&wr);
    let qkv_dim = qd + 2 * kvd;
    match (w.qkv_bias(), grads.as_deref_mut()) {
        (Some(b), Some(grads)) => {
            if wr.end != b.start {
                bail!("the qkv bias does not follow the qkv weights");
            }
            let (dw, db) = O::grads_pair(grads, wr, b)?;
            ops.matmul_backward(
                &mut g.dh,
                Some(dw),
                Some(db),
                &g.dqkv,
                &st.h_attn,
                wqkv,
                n,
                c,
                qkv_dim,
            )?;
        }
        (_, grads) => {
            let dw = grads.map(|grads| O::grads(grads, wr));
            ops.matmul_backward(
                &mut g.dh, dw, None, &g.dqkv, &st.h_attn, wqkv, n, c, qkv_dim,
            )?;
        }
    }
    let width = qd + 2 * kvd;
    lora!(Target::Q, dqkv, at(width, 0), &st.h_attn, dh);
    lora!(Target::K, dqkv, at(width, qd), &st.h_attn, dh);
    lora!(Target::V, dqkv, at(width, qd + kvd), &st.h_attn, dh);
    let pre = &w.input_layernorm;
    let dpre = grad_of::<O>(&mut grads, pre);
    ops.rmsnorm_backward(&mut g.dnorm_in, dpre, &g.dh, &st.x_in, net.w(pre), eps, c)?;
    ops.residual_forward(&mut g.dx, &g.dnorm_in)
}

/// The gradient of the weights in `r`, where the model's weights have gradients.
fn grad_of<'g, O: Ops>(
    grads: &'g mut Option<&mut O::Buf<f32>>,
    r: &std::ops::Range<usize>,
) -> Option<O::G<'g>> {
    grads.as_deref_mut().map(|g| O::grads(g, r.clone()))
}
