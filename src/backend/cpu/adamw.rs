//! AdamW (decoupled weight decay, as torch.optim.AdamW) fused over a flat parameter slice,
//! with the gradient-clipping scale applied on the fly, and the global gradient norm.

use super::check_lens;
use crate::backend::settings::AdamW;
use anyhow::Result;
use rayon::prelude::*;

/// Elements per parallel task.
const BLOCK: usize = 1 << 14;

/// params, m, v: (P) updated in place; previous: (P) written with the parameters before
/// the update (a rollback copy, made in the same pass); grads: (P); `weights`, when given:
/// (P) written with the new parameters (the storage-type copy a device keeps; f32 here).
pub fn adamw_update(
    params: &mut [f32],
    previous: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    grads: &[f32],
    weights: Option<&mut [f32]>,
    h: AdamW,
) -> Result<()> {
    let mut lens = vec![previous.len(), m.len(), v.len(), grads.len()];
    lens.extend(weights.as_ref().map(|w| w.len()));
    check_lens("adamw_update", &lens, params.len())?;
    let bias1 = 1.0 - (h.beta1 as f64).powi(h.step as i32);
    let bias2 = 1.0 - (h.beta2 as f64).powi(h.step as i32);
    let step_size = (h.lr as f64 / bias1) as f32;
    let inv_sqrt_bias2 = (1.0 / bias2.sqrt()) as f32;
    let decay = 1.0 - h.lr * h.weight_decay;
    params
        .par_chunks_mut(BLOCK)
        .zip(previous.par_chunks_mut(BLOCK))
        .zip(m.par_chunks_mut(BLOCK))
        .zip(v.par_chunks_mut(BLOCK))
        .zip(grads.par_chunks(BLOCK))
        .for_each(|((((p, prev), m), v), g)| {
            prev.copy_from_slice(p);
            for i in 0..p.len() {
                let g = g[i] * h.grad_scale;
                m[i] = h.beta1 * m[i] + (1.0 - h.beta1) * g;
                v[i] = h.beta2 * v[i] + (1.0 - h.beta2) * g * g;
                let denom = v[i].sqrt() * inv_sqrt_bias2 + h.eps;
                p[i] = p[i] * decay - step_size * m[i] / denom;
            }
        });
    if let Some(weights) = weights {
        weights.copy_from_slice(params);
    }
    Ok(())
}

/// Sum of squares of `x` in f64, in fixed blocks added in order (the same on any number of
/// threads).
pub fn sum_squares(x: &[f32]) -> f64 {
    let partial: Vec<f64> = x
        .par_chunks(BLOCK)
        .map(|b| b.iter().map(|&g| g as f64 * g as f64).sum())
        .collect();
    partial.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::testutil::{assert_close, randn};

    #[test]
    fn three_steps_match_the_torch_formula_in_f64() {
        let n = 3 * BLOCK + 77;
        let mut p = randn(n, 40);
        let grads: Vec<Vec<f32>> = (0..3).map(|s| randn(n, 41 + s)).collect();
        let (mut m, mut v, mut prev) = (vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]);
        let (lr, b1, b2, eps, wd, scale) = (1e-2f64, 0.9f64, 0.99f64, 1e-8f64, 0.1f64, 0.5f64);
        let mut want: Vec<f64> = p.iter().map(|&x| x as f64).collect();
        let (mut wm, mut wv) = (vec![0.0f64; n], vec![0.0f64; n]);
        let mut weights = vec![f32::NAN; n];
        for (s, g) in grads.iter().enumerate() {
            let t = s as i32 + 1;
            let before = p.clone();
            // The copy of the new weights is asked for on the second step only.
            adamw_update(
                &mut p,
                &mut prev,
                &mut m,
                &mut v,
                g,
                (s == 1).then_some(weights.as_mut_slice()),
                AdamW {
                    lr: lr as f32,
                    beta1: b1 as f32,
                    beta2: b2 as f32,
                    eps: eps as f32,
                    weight_decay: wd as f32,
                    step: t as u32,
                    grad_scale: scale as f32,
                },
            )
            .unwrap();
            assert_eq!(
                prev, before,
                "the rollback copy holds the weights before the update"
            );
            if s == 1 {
                assert_eq!(weights, p, "the copy holds the new weights");
            }
            for i in 0..n {
                let gi = g[i] as f64 * scale;
                want[i] *= 1.0 - lr * wd;
                wm[i] = b1 * wm[i] + (1.0 - b1) * gi;
                wv[i] = b2 * wv[i] + (1.0 - b2) * gi * gi;
                let mhat = wm[i] / (1.0 - b1.powi(t));
                let vhat = wv[i] / (1.0 - b2.powi(t));
                want[i] -= lr * mhat / (vhat.sqrt() + eps);
            }
        }
        assert_close(&p, &want, 1e-5, 1e-5);
    }

    #[test]
    fn buffers_of_unequal_lengths_are_an_error_naming_the_op() {
        let h = AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            step: 1,
            grad_scale: 1.0,
        };
        let (mut p, mut prev, mut m, mut v) =
            (vec![1.0; 4], vec![0.0; 4], vec![0.0; 4], vec![0.0; 4]);
        let grads = vec![0.5; 4];
        let mut short = vec![0.0; 3];
        let err = adamw_update(&mut p, &mut prev, &mut m, &mut v, &grads[..3], None, h);
        assert_eq!(
            err.unwrap_err().to_string(),
            "adamw_update: a buffer of 3 elements, expected 4"
        );
        let err = adamw_update(
            &mut p,
            &mut prev,
            &mut m,
            &mut v,
            &grads,
            Some(&mut short),
            h,
        );
        assert!(err.unwrap_err().to_string().starts_with("adamw_update: "));
        assert_eq!(p, [1.0; 4], "nothing is updated");
    }

    #[test]
    fn sum_squares_is_exact_enough_and_thread_independent() {
        let x = randn(5 * BLOCK + 3, 42);
        let want: f64 = x.iter().map(|&g| (g as f64).powi(2)).sum();
        let on = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| sum_squares(&x))
        };
        assert!((on(1) - want).abs() < 1e-9 * want);
        assert_eq!(on(1), on(3));
    }
}
