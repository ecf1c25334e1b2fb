//! Helpers shared by the op tests: deterministic random inputs, tolerant comparison and
//! finite-difference gradients.

use crate::backend::rng::Rng;
use std::ops::Range;

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

/// Full causal attention of one sequence in f64: q (T, H, D), k/v (T, Hkv, D); returns
/// out (T, H, D) and lse (T, H).
pub fn naive_attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    t: usize,
    h: usize,
    hkv: usize,
    d: usize,
) -> (Vec<f64>, Vec<f64>) {
    let mut out = vec![0.0f64; t * h * d];
    let mut lse = vec![0.0f64; t * h];
    for i in 0..t {
        for head in 0..h {
            let (p, l) = naive_softmax(q, k, i, head, h, hkv, d);
            lse[i * h + head] = l;
            let kvh = head / (h / hkv);
            for (j, p) in p.iter().enumerate() {
                for e in 0..d {
                    out[(i * h + head) * d + e] += p * v[(j * hkv + kvh) * d + e];
                }
            }
        }
    }
    (out, lse)
}

/// The backward of `naive_attention` for the loss sum(dout * out): (dq, dk, dv), shaped as
/// q, k and v.
#[allow(clippy::too_many_arguments)]
pub fn naive_attention_backward(
    dout: &[f64],
    q: &[f64],
    k: &[f64],
    v: &[f64],
    t: usize,
    h: usize,
    hkv: usize,
    d: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    let scale = 1.0 / (d as f64).sqrt();
    for i in 0..t {
        for head in 0..h {
            let kvh = head / (h / hkv);
            let (p, _) = naive_softmax(q, k, i, head, h, hkv, d);
            let qi = (i * h + head) * d;
            let dout_i = &dout[qi..qi + d];
            let dp: Vec<f64> = (0..=i)
                .map(|j| (0..d).map(|e| dout_i[e] * v[(j * hkv + kvh) * d + e]).sum())
                .collect();
            let delta: f64 = p.iter().zip(&dp).map(|(p, dp)| p * dp).sum();
            for j in 0..=i {
                let ds = p[j] * (dp[j] - delta);
                let kj = (j * hkv + kvh) * d;
                for e in 0..d {
                    dq[qi + e] += scale * ds * k[kj + e];
                    dk[kj + e] += scale * ds * q[qi + e];
                    dv[kj + e] += p[j] * dout_i[e];
                }
            }
        }
    }
    (dq, dk, dv)
}

/// Row i's softmax weights over keys 0..=i for query head `head`, and their lse.
fn naive_softmax(
    q: &[f64],
    k: &[f64],
    i: usize,
    head: usize,
    h: usize,
    hkv: usize,
    d: usize,
) -> (Vec<f64>, f64) {
    let kvh = head / (h / hkv);
    let qv = &q[(i * h + head) * d..][..d];
    let scores: Vec<f64> = (0..=i)
        .map(|j| {
            let kj = &k[(j * hkv + kvh) * d..][..d];
            qv.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() / (d as f64).sqrt()
        })
        .collect();
    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = scores.iter().map(|s| (s - max).exp()).sum();
    let p = scores.iter().map(|s| (s - max).exp() / z).collect();
    (p, max + z.ln())
}

/// Sequences of `lens` packed row after row, as attention takes them: each row's sequence
/// and position, and each sequence's rows.
pub fn pack(lens: &[usize]) -> (Vec<usize>, Vec<usize>, Vec<Range<usize>>) {
    let (mut row_seq, mut row_pos, mut seqs) = (vec![], vec![], vec![]);
    for (s, &t) in lens.iter().enumerate() {
        seqs.push(row_seq.len()..row_seq.len() + t);
        row_seq.extend(std::iter::repeat_n(s, t));
        row_pos.extend(0..t);
    }
    (row_seq, row_pos, seqs)
}
