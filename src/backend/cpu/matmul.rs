//! Matrix product with a Hugging Face `Linear` weight: out = inp @ weight^T (+ bias).

use gemm::Parallelism;

/// Below this many multiply-adds a product runs on one thread: splitting it costs more
/// than it saves.
const PARALLEL_MIN_MACS: usize = 1 << 18;

/// Output columns per slab are a multiple of this (the microkernels' width).
const SLAB_ALIGN: usize = 16;

/// The inner dimension is summed in blocks of at most this many, one gemm call each.
const K_BLOCK: usize = 512;

/// out: (N, OC), inp: (N, C), weight: (OC, C) row-major as stored in checkpoints, bias: (OC).
///
/// Parallel products split the output columns into slabs, two per thread, each one
/// single-threaded gemm call over its contiguous rows of the weight. Measured on 2 cores at
/// the benchmark shapes this is 1.5-2.5x faster than the gemm crate's own threading.
///
/// Batch invariance: a row's result is bit-for-bit the same whatever other rows share the
/// call and whatever the thread count, so a seeded generation does not depend on batching.
/// The gemm crate picks its K blocking and its kernels by shape (a GEMV path for one row, a
/// dot-product path when rows x columns <= 256), and each sums in its own order. Calling it
/// with K blocks of at most 512 (one block per call, accumulated in a fixed order) and with
/// enough rows (zero rows pad a small batch) keeps every call on the same kernels.
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
    let threads = rayon::current_num_threads();
    let slabs = if n * c * oc < PARALLEL_MIN_MACS || threads == 1 {
        1
    } else {
        (2 * threads).min(oc / SLAB_ALIGN).max(1)
    };
    let width = oc.div_ceil(slabs).div_ceil(SLAB_ALIGN) * SLAB_ALIGN;
    let mut bounds: Vec<(usize, usize)> = (0..oc)
        .step_by(width)
        .map(|o0| (o0, (o0 + width).min(oc)))
        .collect();
    if bounds.len() > 1 && bounds[bounds.len() - 1].1 - bounds[bounds.len() - 1].0 < SLAB_ALIGN {
        let (_, end) = bounds.pop().expect("more than one slab");
        bounds.last_mut().expect("more than one slab").1 = end;
    }
    let narrowest = bounds
        .iter()
        .map(|(o0, o1)| o1 - o0)
        .min()
        .expect("at least one slab");
    let rows = n.max(2).max(DOT_PATH_MAX_ELEMENTS / narrowest + 1);
    if rows > n {
        let mut padded = inp.to_vec();
        padded.resize(rows * c, 0.0);
        let mut out_padded = vec![0.0f32; rows * oc];
        gemm_slabs(&mut out_padded, &padded, weight, rows, c, oc, &bounds);
        out.copy_from_slice(&out_padded[..n * oc]);
    } else {
        gemm_slabs(out, inp, weight, n, c, oc, &bounds);
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

/// gemm switches to its dot-product kernels at or below this many outputs in one call.
const DOT_PATH_MAX_ELEMENTS: usize = 256;

/// out = inp @ weight^T over the column slabs `bounds`, in parallel when there are several.
fn gemm_slabs(
    out: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    n: usize,
    c: usize,
    oc: usize,
    bounds: &[(usize, usize)],
) {
    let dst = SendPtr(out.as_mut_ptr());
    let slab = |(o0, o1): (usize, usize)| {
        for k0 in (0..c).step_by(K_BLOCK) {
            let kb = K_BLOCK.min(c - k0);
            // SAFETY: slab [o0, o1) writes only columns o0..o1 of out, (n, oc) with row
            // stride oc, and slabs are disjoint; it reads columns k0..k0+kb of rows o0..o1
            // of weight, (o1 - o0, c) read as its transpose (row stride 1, column stride c),
            // and of inp, (n, c). The caller's asserts bound every index.
            unsafe {
                gemm::gemm(
                    n,
                    o1 - o0,
                    kb,
                    dst.get().add(o0),
                    1,
                    oc as isize,
                    k0 > 0,
                    inp.as_ptr().add(k0),
                    1,
                    c as isize,
                    weight.as_ptr().add(o0 * c + k0),
                    c as isize,
                    1,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
        }
    };
    if bounds.len() == 1 {
        slab(bounds[0]);
    } else {
        rayon::scope(|s| {
            for &b in bounds {
                s.spawn(move |_| slab(b));
            }
        });
    }
}

/// A raw output pointer shared by slabs that write disjoint columns.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: only used for slabs that write disjoint parts of one buffer, within rayon::scope.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
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

    #[test]
    fn a_rows_result_does_not_depend_on_its_batch_or_the_thread_count() {
        let (c, oc) = (688, 700);
        let w = randn(oc * c, 12);
        let rows = 70;
        let inp = randn(rows * c, 13);
        let product = |threads: usize, lo: usize, hi: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut out = vec![0.0f32; (hi - lo) * oc];
            pool.install(|| {
                matmul_forward(&mut out, &inp[lo * c..hi * c], &w, None, hi - lo, c, oc)
            });
            out
        };
        let reference = product(1, 0, rows);
        for (threads, lo, hi) in [
            (1, 5, 6),
            (2, 5, 6),
            (3, 0, 70),
            (2, 3, 40),
            (4, 69, 70),
            (1, 10, 12),
        ] {
            let got = product(threads, lo, hi);
            assert!(
                got == reference[lo * oc..hi * oc],
                "rows {lo}..{hi} on {threads} threads differ"
            );
        }
    }
}
