//! Scalar building blocks written so that the compiler vectorizes the loops around them:
//! an exp without a libm call, and a dot product, a sum and a maximum with independent
//! partial results.

/// e^x to about 2 ulp for x in [-87, 88] (Cephes' polynomial after reduction by ln 2);
/// smaller x give 0 or a tiny positive, as the callers (softmax weights, silu) need.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let fx = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - fx * 0.693_359_4 + fx * 2.121_944_4e-4;
    let z = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * z + r + 1.0;
    // 2^fx built from bits. fx is a whole number in [-125, 127]; adding 1.5 * 2^23 leaves it
    // in the low mantissa bits. `fx as i32` would be the same number, but its saturating
    // cast does not vectorize: it made the softmax loops of attention scalar.
    let fx_bits = (fx + 12_582_912.0).to_bits().wrapping_sub(0x4B40_0000);
    y * f32::from_bits(fx_bits.wrapping_add(127) << 23)
}

/// Sum of a[i] * b[i], accumulated in 8 independent lanes.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Sum of x, accumulated in 8 independent lanes.
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Largest element of x (-inf when empty), in 8 independent lanes.
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for c in chunks {
        for i in 0..8 {
            acc[i] = acc[i].max(c[i]);
        }
    }
    acc.iter().fold(tail, |a, &b| a.max(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_a_few_ulp_of_f64() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            assert!(rel < 3e-7, "exp({x}) = {}, want {want}", exp(x));
            x += 0.01371;
        }
        assert_eq!(exp(f32::NEG_INFINITY), exp(-87.0));
        assert!(exp(-1e30) < 1e-37);
    }

    #[test]
    fn dot_matches_f64_for_every_tail_length() {
        let a: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..37).map(|i| (i as f32 * 0.11).cos()).collect();
        for n in 0..=37 {
            let want: f64 = a[..n]
                .iter()
                .zip(&b[..n])
                .map(|(x, y)| *x as f64 * *y as f64)
                .sum();
            assert!(
                (dot(&a[..n], &b[..n]) as f64 - want).abs() < 1e-5,
                "n = {n}"
            );
        }
    }

    #[test]
    fn sum_and_max_match_sequential_for_every_tail_length() {
        let x: Vec<f32> = (0..37).map(|i| (i as f32 * 0.73).sin()).collect();
        for n in 0..=37 {
            let want: f64 = x[..n].iter().map(|&v| v as f64).sum();
            assert!((sum(&x[..n]) as f64 - want).abs() < 1e-5, "sum, n = {n}");
            let want = x[..n].iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            assert_eq!(max(&x[..n]), want, "max, n = {n}");
        }
    }
}
