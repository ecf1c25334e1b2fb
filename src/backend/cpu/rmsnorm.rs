//! RMSNorm as Llama, Mistral and Qwen2 define it: x / sqrt(mean(x^2) + eps) * weight.

use super::math::dot;
use rayon::prelude::*;

const PARALLEL_MIN_ELEMENTS: usize = 1 << 16;

/// out: (N, C), inp: (N, C), weight: (C).
pub fn rmsnorm_forward(out: &mut [f32], inp: &[f32], weight: &[f32], eps: f32, c: usize) {
    assert_eq!(out.len(), inp.len(), "rmsnorm shapes");
    assert_eq!(weight.len(), c, "rmsnorm weight shape");
    let row = |(o, x): (&mut [f32], &[f32])| {
        let rstd = 1.0 / (dot(x, x) / c as f32 + eps).sqrt();
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::testutil::{assert_close, randn};

    #[test]
    fn matches_naive_f64() {
        for &(n, c) in &[(1, 1), (5, 7), (40, 256)] {
            let x = randn(n * c, 7);
            let w = randn(c, 8);
            let eps = 1e-5;
            let mut out = vec![0.0; n * c];
            rmsnorm_forward(&mut out, &x, &w, eps, c);
            let mut want = vec![0.0f64; n * c];
            for i in 0..n {
                let row = &x[i * c..(i + 1) * c];
                let ms: f64 = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / c as f64;
                let rstd = 1.0 / (ms + eps as f64).sqrt();
                for j in 0..c {
                    want[i * c + j] = row[j] as f64 * rstd * w[j] as f64;
                }
            }
            assert_close(&out, &want, 1e-5, 1e-5);
        }
    }
}
