//! Rotary position embedding, in the "rotate half" layout of Hugging Face Llama models, and
//! its backward; the tables come from `backend::rope_table`.

use super::check_lens;
use crate::backend::rope_table::RopeTable;
use anyhow::{bail, Result};

/// Rotates x: (N, heads, D) in place by the angles of row n of `table`.
pub fn rope_forward(x: &mut [f32], table: &RopeTable, heads: usize) -> Result<()> {
    rotate("rope_forward", x, table, heads, 1.0)
}

/// dx: (N, heads, D): the gradient of rope_forward's output, turned in place into the
/// gradient of its input (the rotation by the opposite angle).
///
/// A rotation is orthogonal: its transpose, the gradient's map, is its inverse.
pub fn rope_backward(dx: &mut [f32], table: &RopeTable, heads: usize) -> Result<()> {
    rotate("rope_backward", dx, table, heads, -1.0)
}

/// Rotates x: (N, heads, D) by the angles of `table` times `direction`, 1 or -1 (multiplying
/// the sine by either is exact, so sharing this loop leaves the forward's results as they
/// were).
fn rotate(op: &str, x: &mut [f32], table: &RopeTable, heads: usize, direction: f32) -> Result<()> {
    let half = table.half;
    let (cos, sin) = (table.cos.len(), table.sin.len());
    if half == 0 || cos != sin || !cos.is_multiple_of(half) {
        bail!("{op}: tables of {cos} and {sin} are not rows of {half}");
    }
    let d = 2 * half;
    let n = cos / half;
    check_lens(op, &[x.len()], n * heads * d)?;
    if heads == 0 {
        return Ok(());
    }
    for (r, row) in x.chunks_exact_mut(heads * d).enumerate() {
        let cos = &table.cos[r * half..(r + 1) * half];
        let sin = &table.sin[r * half..(r + 1) * half];
        for head in row.chunks_exact_mut(d) {
            let (a, b) = head.split_at_mut(half);
            for i in 0..half {
                let (x1, x2, s) = (a[i], b[i], direction * sin[i]);
                a[i] = x1 * cos[i] - x2 * s;
                b[i] = x2 * cos[i] + x1 * s;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::testutil::{
        assert_close, numeric_grad, randn, to_f64, weighted_sum, GRAD_TOL,
    };
    use crate::backend::rope_table::{inv_frequencies, RopeScaling};

    /// Rotates x: (N, heads, D) by the unscaled angles of `positions` (theta 10000), in f64.
    fn naive(x: &[f64], positions: &[usize], heads: usize, d: usize) -> Vec<f64> {
        let mut out = vec![0.0f64; x.len()];
        for (n, &p) in positions.iter().enumerate() {
            for h in 0..heads {
                let base = (n * heads + h) * d;
                for i in 0..d / 2 {
                    let f = 1.0 / 10000f64.powf(2.0 * i as f64 / d as f64);
                    let (c, s) = ((p as f64 * f).cos(), (p as f64 * f).sin());
                    let (x1, x2) = (x[base + i], x[base + i + d / 2]);
                    out[base + i] = x1 * c - x2 * s;
                    out[base + i + d / 2] = x2 * c + x1 * s;
                }
            }
        }
        out
    }

    #[test]
    fn matches_naive_f64_rotation() {
        let (heads, d) = (3, 8);
        let positions = [0usize, 1, 5, 17];
        let scaling = RopeScaling::None;
        let table = RopeTable::for_positions(&inv_frequencies(d, 10000.0, &scaling), &positions);
        let x0 = randn(positions.len() * heads * d, 11);
        let mut x = x0.clone();
        rope_forward(&mut x, &table, heads).unwrap();
        let want = naive(&to_f64(&x0), &positions, heads, d);
        assert_close(&x, &want, 1e-6, 1e-5);
    }

    #[test]
    fn backward_matches_finite_differences() {
        for &(heads, d) in &[(3, 8), (2, 2), (1, 6)] {
            let positions = [4usize, 0, 1, 1000];
            let scaling = RopeScaling::None;
            let table =
                RopeTable::for_positions(&inv_frequencies(d, 10000.0, &scaling), &positions);
            let x = randn(positions.len() * heads * d, 70);
            let dout = randn(x.len(), 71);
            let mut dx = dout.clone();
            rope_backward(&mut dx, &table, heads).unwrap();
            let want = numeric_grad(&to_f64(&x), |x| {
                weighted_sum(&dout, &naive(x, &positions, heads, d))
            });
            assert_close(&dx, &want, GRAD_TOL, GRAD_TOL);
        }
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let scaling = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64.0,
        };
        let plain = inv_frequencies(16, 10000.0, &RopeScaling::None);
        let scaled = inv_frequencies(16, 10000.0, &scaling);
        let tau = 2.0 * std::f64::consts::PI;
        for (p, s) in plain.iter().zip(&scaled) {
            let wavelen = tau / p;
            if wavelen < 64.0 / 4.0 {
                assert_eq!(p, s);
            } else if wavelen > 64.0 {
                assert!((p / 8.0 - s).abs() < 1e-15);
            } else {
                assert!(*s < *p && *s > p / 8.0, "medium band interpolates");
            }
        }
        assert!(plain.iter().zip(&scaled).any(|(p, s)| p != s));
    }

    #[test]
    fn bad_shapes_are_errors_naming_the_op() {
        let (heads, d) = (2, 4);
        let scaling = RopeScaling::None;
        let table = RopeTable::for_positions(&inv_frequencies(d, 10000.0, &scaling), &[0, 1, 2]);
        let mut x = randn(3 * heads * d - 1, 12);
        assert_eq!(
            rope_forward(&mut x, &table, heads).unwrap_err().to_string(),
            "rope_forward: a buffer of 23 elements, expected 24"
        );
        let mut short = table.clone();
        short.sin.pop();
        let mut x = randn(3 * heads * d, 13);
        assert_eq!(
            rope_backward(&mut x, &short, heads)
                .unwrap_err()
                .to_string(),
            "rope_backward: tables of 6 and 5 are not rows of 2"
        );
    }
}
