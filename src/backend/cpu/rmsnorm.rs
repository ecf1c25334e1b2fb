//! RMSNorm as Llama, Mistral and Qwen2 define it, x / sqrt(mean(x^2) + eps) * weight, and its
//! backward.

use super::math::dot;
use super::{check_lens, check_rows};
use anyhow::Result;
use rayon::prelude::*;

const PARALLEL_MIN_ELEMENTS: usize = 1 << 16;

/// Rows per block of the backward: each block sums its rows' dweight into one partial.
const ROW_BLOCK: usize = 32;

/// out: (N, C), inp: (N, C), weight: (C).
pub fn rmsnorm_forward(
    out: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    eps: f32,
    c: usize,
) -> Result<()> {
    let n = inp.len() / c.max(1);
    check_rows("rmsnorm_forward", &[out.len(), inp.len()], n, c)?;
    check_lens("rmsnorm_forward weight", &[weight.len()], c)?;
    let row = |(o, x): (&mut [f32], &[f32])| {
        let rstd = rstd(x, eps, c);
        for ((o, x), w) in o.iter_mut().zip(x).zip(weight) {
            *o = x * rstd * w;
        }
    };
    // Waking other threads costs more than normalising a few rows.
    if out.len() < PARALLEL_MIN_ELEMENTS {
        out.chunks_mut(c).zip(inp.chunks(c)).for_each(row);
    } else {
        out.par_chunks_mut(c)
            .zip(inp.par_chunks(c))
            .with_min_len(16)
            .for_each(row);
    }
    Ok(())
}

/// dinp: (N, C) assigned; dweight: (C) accumulated (None: the weight is frozen, its
/// gradient is not summed); dout, inp: (N, C); weight: (C).
/// The per-row 1/rms is recomputed from inp (one dot product per row) rather than saved.
///
/// With r = 1/rms and y = x r w: dx = r (w dy) - x r^3 / C * sum(w dy x), dw += sum over
/// rows of dy x r. dweight is summed per block of ROW_BLOCK rows into partials that are
/// then added in block order, so it is the same whatever the thread count.
pub fn rmsnorm_backward(
    dinp: &mut [f32],
    dweight: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    eps: f32,
    c: usize,
) -> Result<()> {
    let n = inp.len() / c.max(1);
    check_rows(
        "rmsnorm_backward",
        &[dinp.len(), dout.len(), inp.len()],
        n,
        c,
    )?;
    check_lens("rmsnorm_backward weight", &[weight.len()], c)?;
    if let Some(dw) = dweight.as_ref() {
        check_lens("rmsnorm_backward dweight", &[dw.len()], c)?;
    }
    if n == 0 {
        return Ok(());
    }
    let block = ROW_BLOCK * c;
    let mut partials = vec![0.0f32; inp.len().div_ceil(block) * c]; // (blocks, C)
    if inp.len() < PARALLEL_MIN_ELEMENTS {
        dinp.chunks_mut(block)
            .zip(dout.chunks(block))
            .zip(inp.chunks(block))
            .zip(partials.chunks_mut(c))
            .for_each(|(((dx, dy), x), p)| backward_rows(dx, p, dy, x, weight, eps, c));
    } else {
        dinp.par_chunks_mut(block)
            .zip(dout.par_chunks(block))
            .zip(inp.par_chunks(block))
            .zip(partials.par_chunks_mut(c))
            .for_each(|(((dx, dy), x), p)| backward_rows(dx, p, dy, x, weight, eps, c));
    }
    let Some(dweight) = dweight else {
        return Ok(());
    };
    for partial in partials.chunks_exact(c) {
        for (dw, p) in dweight.iter_mut().zip(partial) {
            *dw += p;
        }
    }
    Ok(())
}

/// dinp: (rows, C) assigned and partial: (C) the rows' sum of dweight, of one block of rows;
/// dout, inp: (rows, C); weight: (C).
fn backward_rows(
    dinp: &mut [f32],
    partial: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    eps: f32,
    c: usize,
) {
    for ((dx, dy), x) in dinp.chunks_mut(c).zip(dout.chunks(c)).zip(inp.chunks(c)) {
        let rstd = rstd(x, eps, c);
        let mut wdy_x = 0.0f32;
        for (((p, dy), x), w) in partial.iter_mut().zip(dy).zip(x).zip(weight) {
            *p += dy * x * rstd;
            wdy_x += w * dy * x;
        }
        let k = wdy_x * rstd * rstd * rstd / c as f32;
        for (((dx, dy), x), w) in dx.iter_mut().zip(dy).zip(x).zip(weight) {
            *dx = rstd * w * dy - k * x;
        }
    }
}

/// 1 / sqrt(mean(x^2) + eps) of one row x: (C).
fn rstd(x: &[f32], eps: f32, c: usize) -> f32 {
    1.0 / (dot(x, x) / c as f32 + eps).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::testutil::{
        assert_close, numeric_grad, plus, randn, to_f64, weighted_sum, GRAD_TOL,
    };

    fn naive(x: &[f64], w: &[f64], eps: f64, c: usize) -> Vec<f64> {
        let mut out = vec![0.0f64; x.len()];
        for (o, row) in out.chunks_mut(c).zip(x.chunks(c)) {
            let ms: f64 = row.iter().map(|v| v * v).sum::<f64>() / c as f64;
            let rstd = 1.0 / (ms + eps).sqrt();
            for j in 0..c {
                o[j] = row[j] * rstd * w[j];
            }
        }
        out
    }

    #[test]
    fn matches_naive_f64() {
        for &(n, c) in &[(1, 1), (5, 7), (40, 256)] {
            let x = randn(n * c, 7);
            let w = randn(c, 8);
            let eps = 1e-5;
            let mut out = vec![0.0; n * c];
            rmsnorm_forward(&mut out, &x, &w, eps, c).unwrap();
            let want = naive(&to_f64(&x), &to_f64(&w), eps as f64, c);
            assert_close(&out, &want, 1e-5, 1e-5);
        }
    }

    /// dinp (NaN before) is overwritten; dweight adds to nonzero starting values. 70 rows
    /// span three row blocks, the last one partial.
    #[test]
    fn backward_matches_finite_differences_and_accumulates_dweight() {
        for &(n, c) in &[(1, 1), (3, 7), (70, 5), (2, 64)] {
            let (x, w, dout) = (randn(n * c, 80), randn(c, 81), randn(n * c, 82));
            let dweight0 = randn(c, 83);
            let eps = 1e-5;
            let mut dinp = vec![f32::NAN; n * c];
            let mut dweight = dweight0.clone();
            rmsnorm_backward(&mut dinp, Some(&mut dweight), &dout, &x, &w, eps, c).unwrap();
            let (x64, w64, eps64) = (to_f64(&x), to_f64(&w), eps as f64);
            let want_dinp = numeric_grad(&x64, |x| weighted_sum(&dout, &naive(x, &w64, eps64, c)));
            let want_dw = numeric_grad(&w64, |w| weighted_sum(&dout, &naive(&x64, w, eps64, c)));
            assert_close(&dinp, &want_dinp, GRAD_TOL, GRAD_TOL);
            assert_close(&dweight, &plus(&want_dw, &dweight0), GRAD_TOL, GRAD_TOL);
            // A frozen weight: the same input gradient, bit for bit.
            let mut frozen = vec![f32::NAN; n * c];
            rmsnorm_backward(&mut frozen, None, &dout, &x, &w, eps, c).unwrap();
            assert!(frozen == dinp);
        }
    }

    /// Past PARALLEL_MIN_ELEMENTS, so the rows are split among threads.
    #[test]
    fn backward_is_identical_on_1_2_and_3_threads() {
        let (n, c) = (1000, 100);
        let (x, w, dout) = (randn(n * c, 90), randn(c, 91), randn(n * c, 92));
        let dweight0 = randn(c, 93);
        let on_threads = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut dinp = vec![f32::NAN; n * c];
            let mut dweight = dweight0.clone();
            pool.install(|| {
                rmsnorm_backward(&mut dinp, Some(&mut dweight), &dout, &x, &w, 1e-5, c)
            })
            .unwrap();
            (dinp, dweight)
        };
        let one = on_threads(1);
        assert!(one.0.iter().all(|v| v.is_finite()), "dinp fully written");
        for threads in [2, 3] {
            let got = on_threads(threads);
            assert!(got.0 == one.0, "dinp differs on {threads} threads");
            assert!(got.1 == one.1, "dweight differs on {threads} threads");
        }
        // dweight = dweight0 + sum over rows of dout x / rms, summed here in f64.
        let mut want = to_f64(&dweight0);
        for (dy, x) in dout.chunks(c).zip(x.chunks(c)) {
            let ms = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / c as f64;
            let rstd = 1.0 / (ms + 1e-5).sqrt();
            for (w, (&dy, &x)) in want.iter_mut().zip(dy.iter().zip(x)) {
                *w += dy as f64 * x as f64 * rstd;
            }
        }
        let tol = 1e-5 * (n as f64).sqrt();
        assert_close(&one.1, &want, tol, tol);
    }

    #[test]
    fn bad_shapes_are_errors_naming_the_op() {
        let err = |r: Result<()>| r.unwrap_err().to_string();
        let (x, w) = (randn(15, 94), randn(5, 95));
        assert_eq!(
            err(rmsnorm_forward(&mut [0.0; 12], &x, &w, 1e-5, 5)),
            "rmsnorm_forward: a buffer of 12 elements, expected 3 x 5"
        );
        assert_eq!(
            err(rmsnorm_forward(&mut [0.0; 15], &x, &w[..4], 1e-5, 5)),
            "rmsnorm_forward weight: a buffer of 4 elements, expected 5"
        );
        assert_eq!(
            err(rmsnorm_backward(
                &mut [0.0; 15],
                Some(&mut [0.0; 5]),
                &x,
                &x,
                &w,
                1e-5,
                0
            )),
            "rmsnorm_backward: rows of 0 elements"
        );
    }
}
