//! A LoRA adapter in the layer graph: each adapted Linear W of a layer adds s * (x A^T) B^T
//! to its output (or to its block of a fused q/k/v or gate/up output), as PEFT does, with
//! t = x A^T kept for the backward.

use super::Net;
use crate::backend::ops::Ops;
use crate::backend::settings::Columns;
use crate::model::lora::Target;
use anyhow::Result;

/// Adds the adapter's s * (x A^T) B^T of Linear `target` of layer `l` to the block `cols`
/// of `out`: x (N, in), t (N, r) receives x A^T, `u` is scratch for t B^T (N, out). Does
/// nothing where the net has no adapter or the adapter leaves that Linear alone.
#[allow(clippy::too_many_arguments)]
pub(crate) fn lora_forward<O: Ops>(
    net: &Net<O>,
    l: usize,
    target: Target,
    x: &O::Buf<O::S>,
    out: &mut O::Buf<O::S>,
    cols: Columns,
    t: &mut O::Buf<O::S>,
    u: &mut O::Buf<O::S>,
    n: usize,
) -> Result<()> {
    let Some(lora) = &net.lora else {
        return Ok(());
    };
    let Some(linear) = lora.layout.find(l, target) else {
        return Ok(());
    };
    let ops = net.ops;
    let (r, out_dim) = (lora.r, linear.out_dim);
    let a = O::weights(lora.weights, linear.a.clone());
    let b = O::weights(lora.weights, linear.b.clone());
    ops.matmul_forward(t, x, a, None, n, linear.in_dim, r)?;
    ops.set_len(u, n * out_dim)?;
    ops.matmul_forward(u, t, b, None, n, r, out_dim)?;
    let dense = Columns {
        stride: out_dim,
        offset: 0,
    };
    ops.scale_columns(out, cols, u, dense, n, out_dim, lora.scale, true)
}
