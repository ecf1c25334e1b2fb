//! The gated MLP activation, out = silu(gate) * up, and its backward.

use super::check_lens;
use super::math::exp;
use anyhow::{bail, Result};
use rayon::prelude::*;

/// out: (N, I); gate_up: (N, 2I), each row gate then up (the fused projection's output).
pub fn swiglu_forward(out: &mut [f32], gate_up: &[f32], im: usize) -> Result<()> {
    let n = out.len();
    if im == 0 || !n.is_multiple_of(im) {
        bail!("swiglu_forward: {n} outputs are not rows of {im}");
    }
    check_lens("swiglu_forward gate_up", &[gate_up.len()], 2 * n)?;
    out.par_chunks_mut(im)
        .zip(gate_up.par_chunks(2 * im))
        .with_min_len(16)
        .for_each(|(a, gu)| row_forward(a, &gu[..im], &gu[im..]));
    Ok(())
}

/// dgate_up: (N, 2I) assigned; dout: (N, I); gate_up: (N, 2I).
pub fn swiglu_backward(
    dgate_up: &mut [f32],
    dout: &[f32],
    gate_up: &[f32],
    im: usize,
) -> Result<()> {
    let n = dout.len();
    if im == 0 || !n.is_multiple_of(im) {
        bail!("swiglu_backward: {n} gradients are not rows of {im}");
    }
    check_lens(
        "swiglu_backward gate_up",
        &[dgate_up.len(), gate_up.len()],
        2 * n,
    )?;
    dgate_up
        .par_chunks_mut(2 * im)
        .zip(dout.par_chunks(im))
        .zip(gate_up.par_chunks(2 * im))
        .with_min_len(16)
        .for_each(|((dgu, da), gu)| {
            let (dg, du) = dgu.split_at_mut(im);
            row_backward(dg, du, da, &gu[..im], &gu[im..]);
        });
    Ok(())
}

/// One row's gate and up halves: out, gate, up: (I).
pub fn swiglu_row_forward(out: &mut [f32], gate: &[f32], up: &[f32]) -> Result<()> {
    check_lens("swiglu_row_forward", &[gate.len(), up.len()], out.len())?;
    row_forward(out, gate, up);
    Ok(())
}

/// dgate, dup: (I) assigned; dout, gate, up: (I).
pub fn swiglu_row_backward(
    dgate: &mut [f32],
    dup: &mut [f32],
    dout: &[f32],
    gate: &[f32],
    up: &[f32],
) -> Result<()> {
    check_lens(
        "swiglu_row_backward",
        &[dgate.len(), dup.len(), gate.len(), up.len()],
        dout.len(),
    )?;
    row_backward(dgate, dup, dout, gate, up);
    Ok(())
}

/// `swiglu_row_forward` on checked rows.
fn row_forward(out: &mut [f32], gate: &[f32], up: &[f32]) {
    debug_assert!(out.len() == gate.len() && gate.len() == up.len());
    for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + exp(-g)) * u;
    }
}

/// `swiglu_row_backward` on checked rows.
///
/// With s = sigmoid(g): d silu(g) / dg = s + g s (1 - s) = s (1 + g (1 - s)).
fn row_backward(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
    debug_assert!([dgate.len(), dup.len(), gate.len(), up.len()]
        .iter()
        .all(|&l| l == dout.len()));
    for ((((dg, du), d), g), u) in dgate
        .iter_mut()
        .zip(dup.iter_mut())
        .zip(dout)
        .zip(gate)
        .zip(up)
    {
        let s = 1.0 / (1.0 + exp(-g));
        *du = d * g * s;
        *dg = d * u * s * (1.0 + g * (1.0 - s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::testutil::{
        assert_close, numeric_grad, randn, to_f64, weighted_sum, GRAD_TOL,
    };

    fn naive(gate: &[f64], up: &[f64]) -> Vec<f64> {
        gate.iter()
            .zip(up)
            .map(|(&g, &u)| g / (1.0 + (-g).exp()) * u)
            .collect()
    }

    #[test]
    fn matches_naive_f64() {
        let g = randn(101, 9);
        let u = randn(101, 10);
        let mut out = vec![0.0; 101];
        swiglu_row_forward(&mut out, &g, &u).unwrap();
        assert_close(&out, &naive(&to_f64(&g), &to_f64(&u)), 1e-6, 1e-5);
    }

    /// Gates spread evenly over [-12, 12] reach both saturated ends of the sigmoid.
    #[test]
    fn backward_matches_finite_differences() {
        let n = 61;
        let gate: Vec<f32> = (0..n).map(|i| -12.0 + 0.4 * i as f32).collect();
        let up = randn(n, 61);
        let dout = randn(n, 62);
        let (mut dgate, mut dup) = (vec![f32::NAN; n], vec![f32::NAN; n]);
        swiglu_row_backward(&mut dgate, &mut dup, &dout, &gate, &up).unwrap();
        let (gate64, up64) = (to_f64(&gate), to_f64(&up));
        let want_dgate = numeric_grad(&gate64, |g| weighted_sum(&dout, &naive(g, &up64)));
        let want_dup = numeric_grad(&up64, |u| weighted_sum(&dout, &naive(&gate64, u)));
        assert_close(&dgate, &want_dgate, GRAD_TOL, GRAD_TOL);
        assert_close(&dup, &want_dup, GRAD_TOL, GRAD_TOL);
    }

    #[test]
    fn bad_shapes_are_errors_naming_the_op() {
        let err = |r: Result<()>| r.unwrap_err().to_string();
        let mut out = vec![0.0; 6];
        assert_eq!(
            err(swiglu_forward(&mut out, &[0.0; 12], 4)),
            "swiglu_forward: 6 outputs are not rows of 4"
        );
        assert_eq!(
            err(swiglu_backward(&mut [0.0; 12], &out, &[0.0; 11], 3)),
            "swiglu_backward gate_up: a buffer of 11 elements, expected 12"
        );
        assert_eq!(
            err(swiglu_row_forward(&mut out, &[0.0; 6], &[0.0; 5])),
            "swiglu_row_forward: a buffer of 5 elements, expected 6"
        );
    }
}
