//! Helpers shared by the op tests: deterministic random inputs, tolerant comparison and
//! finite-difference gradients.

use super::sampling::Rng;

pub fn randn(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.normal()).collect()
}

/// Asserts `|got - want| <= atol + rtol * |want|` element-wise, naming the first failure.
pub fn assert_close(got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "length mismatch");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(
            err <= atol + rtol * w.abs(),
            "element {i}: got {g}, want {w}, error {err}"
        );
    }
}

/// Absolute and relative tolerance of an f32 analytic gradient against the f64 central
/// difference: f32 rounding of the backward's sums dominates, the difference's own error is
/// about 1e-10.
pub const GRAD_TOL: f64 = 1e-4;

/// Step of the central differences: small enough that the truncation error (step^2) is
/// negligible, large enough that f64 rounding (1e-16 / step) is too.
const FD_STEP: f64 = 1e-5;

pub fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// The loss the backward tests differentiate: L = sum_i dout_i * out_i, whose gradient wrt
/// out is dout.
pub fn weighted_sum(dout: &[f32], out: &[f64]) -> f64 {
    assert_eq!(dout.len(), out.len(), "loss shapes");
    dout.iter().zip(out).map(|(&d, o)| d as f64 * o).sum()
}

/// dL/dx by central differences of `loss` at x, one element at a time.
pub fn numeric_grad(x: &[f64], loss: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            xp[i] = x[i] + FD_STEP;
            let up = loss(&xp);
            xp[i] = x[i] - FD_STEP;
            let down = loss(&xp);
            xp[i] = x[i];
            (up - down) / (2.0 * FD_STEP)
        })
        .collect()
}

/// `want` shifted by the values a gradient buffer held before the backward added to it.
pub fn plus(want: &[f64], start: &[f32]) -> Vec<f64> {
    want.iter().zip(start).map(|(w, &s)| w + s as f64).collect()
}
