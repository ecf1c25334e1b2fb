//! Inverted dropout with a counter-based mask: element i of a buffer is kept, and scaled by
//! 1 / (1 - p), where the uniform drawn from (seed, i) is at least p, else zeroed. The mask is
//! a function of (seed, i) alone, so the backward regenerates it instead of keeping it, and
//! it does not depend on the thread count. Twin of `cuda::glue::dropout`.

use super::check_lens;
use crate::backend::rng::splitmix64;
use anyhow::{bail, Result};
use rayon::prelude::*;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// The uniform in [0, 1) of element i under `seed`: the top 24 bits of a splitmix64 hash.
pub fn uniform(seed: u64, i: u64) -> f32 {
    let bits = splitmix64(seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    (bits >> 40) as f32 * (1.0 / (1u32 << 24) as f32)
}

/// dst (+)= dropout(src): each element kept and scaled by 1 / (1 - p) where its uniform is
/// at least p, else 0; added when `accumulate`, else assigned. p in [0, 1).
pub fn dropout(dst: &mut [f32], src: &[f32], p: f32, seed: u64, accumulate: bool) -> Result<()> {
    check_lens("dropout", &[dst.len()], src.len())?;
    if !(0.0..1.0).contains(&p) {
        bail!("dropout: probability {p}, expected at least 0 and below 1");
    }
    let scale = 1.0 / (1.0 - p);
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(c, (dst, src))| {
            let base = (c * CHUNK) as u64;
            for (j, (d, &s)) in dst.iter_mut().zip(src).enumerate() {
                let v = match uniform(seed, base + j as u64) >= p {
                    true => s * scale,
                    false => 0.0,
                };
                *d = if accumulate { *d + v } else { v };
            }
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// About p of the elements are dropped, the rest scaled; the same mask for the same
    /// seed (added, or on other threads), another for another seed.
    #[test]
    fn drops_about_p_and_scales_the_rest_by_one_over_one_minus_p() {
        let n = 100_000;
        let src: Vec<f32> = (0..n).map(|i| 1.0 + (i % 7) as f32).collect();
        let mut out = vec![f32::NAN; n];
        dropout(&mut out, &src, 0.25, 9, false).unwrap();
        let dropped = out.iter().filter(|&&x| x == 0.0).count();
        let rate = dropped as f64 / n as f64;
        assert!((rate - 0.25).abs() < 0.01, "dropped {rate}");
        for (o, s) in out.iter().zip(&src) {
            assert!(
                *o == 0.0 || (*o - s / 0.75).abs() <= 1e-6 * o.abs(),
                "{o} from {s}"
            );
        }
        let mut added = vec![1.0f32; n];
        dropout(&mut added, &src, 0.25, 9, true).unwrap();
        assert!(added.iter().zip(&out).all(|(a, o)| *a == 1.0 + o));
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let mut three = vec![0.0f32; n];
        pool.install(|| dropout(&mut three, &src, 0.25, 9, false).unwrap());
        assert!(three == out, "the mask depends on the thread count");
        let mut other = vec![0.0f32; n];
        dropout(&mut other, &src, 0.25, 10, false).unwrap();
        assert!(other != out, "another seed, another mask");
        let mut none = vec![0.0f32; n];
        dropout(&mut none, &src, 0.0, 9, false).unwrap();
        assert!(none == src, "p 0 keeps everything as it is");
        assert!(dropout(&mut none, &src, 1.0, 9, false).is_err());
        assert!(dropout(&mut none[1..], &src, 0.5, 9, false).is_err());
    }
}
