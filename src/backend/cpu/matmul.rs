//! Matrix product with a Hugging Face `Linear` weight: out = inp @ weight^T (+ bias).

use gemm::Parallelism;

/// Below this many multiply-adds a product runs on one thread: splitting it costs more
/// than it saves.
const PARALLEL_MIN_FLOPS: usize = 1 << 18;

/// out: (N, OC), inp: (N, C), weight: (OC, C) row-major as stored in checkpoints, bias: (OC).
pub fn matmul_forward(
    out: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    n: usize,
    c: usize,
    oc: usize,
) {
    assert_eq!(out.len(), n * oc, "matmul out shape");
    assert_eq!(inp.len(), n * c, "matmul inp shape");
    assert_eq!(weight.len(), oc * c, "matmul weight shape");
    if n == 0 || oc == 0 {
        return;
    }
    let parallelism = if n * c * oc >= PARALLEL_MIN_FLOPS && rayon::current_num_threads() > 1 {
        Parallelism::Rayon(rayon::current_num_threads())
    } else {
        Parallelism::None
    };
    // SAFETY: the asserts above bound every index the strides reach: dst is (n, oc) with row
    // stride oc; lhs is (n, c) with row stride c; rhs is weight^T, (c, oc), read with row
    // stride 1 and column stride c from the (oc, c) weight.
    unsafe {
        gemm::gemm(
            n,
            oc,
            c,
            out.as_mut_ptr(),
            1,
            oc as isize,
            false,
            inp.as_ptr(),
            1,
            c as isize,
            weight.as_ptr(),
            c as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
    if let Some(bias) = bias {
        assert_eq!(bias.len(), oc, "matmul bias shape");
        for row in out.chunks_exact_mut(oc) {
            for (o, b) in row.iter_mut().zip(bias) {
                *o += b;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::testutil::{assert_close, randn};

    fn naive(
        inp: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Vec<f64> {
        let mut out = vec![0.0f64; n * oc];
        for i in 0..n {
            for o in 0..oc {
                let mut acc = bias.map_or(0.0, |b| b[o] as f64);
                for k in 0..c {
                    acc += inp[i * c + k] as f64 * w[o * c + k] as f64;
                }
                out[i * oc + o] = acc;
            }
        }
        out
    }

    #[test]
    fn matches_naive_on_odd_shapes_with_and_without_bias() {
        for &(n, c, oc) in &[
            (1, 1, 1),
            (3, 17, 5),
            (7, 64, 33),
            (33, 129, 70),
            (64, 256, 512),
        ] {
            let inp = randn(n * c, 1);
            let w = randn(oc * c, 2);
            let b = randn(oc, 3);
            for bias in [None, Some(b.as_slice())] {
                let mut out = vec![f32::NAN; n * oc];
                matmul_forward(&mut out, &inp, &w, bias, n, c, oc);
                let want = naive(&inp, &w, bias, n, c, oc);
                let tol = 1e-5 * (c as f64).sqrt();
                assert_close(&out, &want, tol, tol);
            }
        }
    }
}
