//! The gated MLP activation: out = silu(gate) * up.

use super::math::exp;

/// out: (N, I), gate: (N, I), up: (N, I).
pub fn swiglu_forward(out: &mut [f32], gate: &[f32], up: &[f32]) {
    assert!(
        out.len() == gate.len() && gate.len() == up.len(),
        "swiglu shapes"
    );
    for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + exp(-g)) * u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::testutil::{assert_close, randn};

    #[test]
    fn matches_naive_f64() {
        let g = randn(101, 9);
        let u = randn(101, 10);
        let mut out = vec![0.0; 101];
        swiglu_forward(&mut out, &g, &u);
        let want: Vec<f64> = g
            .iter()
            .zip(&u)
            .map(|(&g, &u)| {
                let g = g as f64;
                g / (1.0 + (-g).exp()) * u as f64
            })
            .collect();
        assert_close(&out, &want, 1e-6, 1e-5);
    }
}
