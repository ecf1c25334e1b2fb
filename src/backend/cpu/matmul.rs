//! Matrix product with a Hugging Face `Linear` weight, out = inp @ weight^T (+ bias), and its
//! backward. Both run as a few single-threaded `gemm` calls on slabs, in parallel with rayon.

use super::check_lens;
use anyhow::Result;
use gemm::Parallelism;

/// Below this many multiply-adds a product runs on one thread: splitting it costs more
/// than it saves.
const PARALLEL_MIN_MACS: usize = 1 << 18;

/// Slab widths are a multiple of this (the microkernels' width).
const SLAB_ALIGN: usize = 16;

/// The inner dimension is summed in blocks of at most this many, one gemm call each.
const K_BLOCK: usize = 512;

/// K block of dweight += dout^T @ inp, whose left operand is read transposed (stride OC).
/// Measured on 2 cores at N = 2048: 12% faster than 512 at OC = 8192, the same elsewhere.
const DWEIGHT_K_BLOCK: usize = 256;

/// gemm switches to its dot-product kernels at or below this many outputs in one call.
const DOT_PATH_MAX_ELEMENTS: usize = 256;

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
) -> Result<()> {
    check_forward(out, inp, weight.len(), bias, n, c, oc)?;
    if n == 0 || oc == 0 {
        return Ok(());
    }
    let bounds = slab_bounds(oc, slab_count(n * c * oc), SLAB_ALIGN);
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
    add_bias(out, bias, oc);
    Ok(())
}

/// The forward's shape checks: out (n, oc), inp (n, c), a weight of `weight` elements
/// (oc, c), bias (oc).
pub(super) fn check_forward(
    out: &[f32],
    inp: &[f32],
    weight: usize,
    bias: Option<&[f32]>,
    n: usize,
    c: usize,
    oc: usize,
) -> Result<()> {
    check_lens("matmul_forward out", &[out.len()], n * oc)?;
    check_lens("matmul_forward inp", &[inp.len()], n * c)?;
    check_lens("matmul_forward weight", &[weight], oc * c)?;
    if let Some(bias) = bias {
        check_lens("matmul_forward bias", &[bias.len()], oc)?;
    }
    Ok(())
}

/// The frozen-weight backward's shape checks: dinp (n, c), dout (n, oc), weight (oc, c).
pub(super) fn check_backward_dx(
    dinp: &[f32],
    dout: &[f32],
    weight: &[f32],
    n: usize,
    c: usize,
    oc: usize,
) -> Result<()> {
    check_lens("matmul_backward dinp", &[dinp.len()], n * c)?;
    check_lens("matmul_backward weight", &[weight.len()], oc * c)?;
    check_lens("matmul_backward dout", &[dout.len()], n * oc)
}

/// The backward's shape checks: dinp and inp (n, c), dweight and a weight of `weight`
/// elements (oc, c), dout (n, oc), a dbias of `dbias` elements (oc).
#[allow(clippy::too_many_arguments)]
pub(super) fn check_backward(
    dinp: &[f32],
    dweight: &[f32],
    dbias: Option<usize>,
    dout: &[f32],
    inp: &[f32],
    weight: usize,
    n: usize,
    c: usize,
    oc: usize,
) -> Result<()> {
    check_lens("matmul_backward dinp", &[dinp.len(), inp.len()], n * c)?;
    check_lens("matmul_backward dweight", &[dweight.len(), weight], oc * c)?;
    check_lens("matmul_backward dout", &[dout.len()], n * oc)?;
    if let Some(dbias) = dbias {
        check_lens("matmul_backward dbias", &[dbias], oc)?;
    }
    Ok(())
}

/// Adds bias (OC) to every row of out (N, OC).
pub(super) fn add_bias(out: &mut [f32], bias: Option<&[f32]>, oc: usize) {
    if let Some(bias) = bias {
        for row in out.chunks_exact_mut(oc) {
            row.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
        }
    }
}

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
    run_slabs(bounds.to_vec(), |(o0, o1)| {
        // SAFETY: slab [o0, o1) writes only columns o0..o1 of out, (n, oc) with row stride
        // oc, and slabs are disjoint; it reads rows o0..o1 of weight, (o1 - o0, c) read as
        // its transpose, and inp, (n, c). The caller's checks bound every index.
        unsafe {
            gemm_k_blocked(
                dst.get().add(o0),
                oc,
                false,
                K_BLOCK,
                Operand::new(inp, c, 1),
                Operand::new(&weight[o0 * c..], 1, c),
                n,
                o1 - o0,
                c,
            );
        }
    });
}

/// dinp: (N, C) assigned; dweight: (OC, C) accumulated; dbias: (OC) accumulated;
/// dout: (N, OC); inp: (N, C); weight: (OC, C).
///
/// dinp = dout @ weight splits the rows of N into slabs, and dweight += dout^T @ inp splits
/// the rows of OC (dbias with them), two slabs per thread each, so every slab writes
/// contiguous rows. The result is bit-for-bit the same whatever the thread count: as in the
/// forward, K-blocked gemm calls sum every element in an order fixed by the inner dimension
/// alone, and slabs have enough rows to stay off the GEMV and dot-product paths.
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward(
    dinp: &mut [f32],
    dweight: &mut [f32],
    dbias: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    n: usize,
    c: usize,
    oc: usize,
) -> Result<()> {
    let dbias_len = dbias.as_ref().map(|d| d.len());
    check_backward(dinp, dweight, dbias_len, dout, inp, weight.len(), n, c, oc)?;
    if oc == 0 {
        // An empty sum: nothing flows back.
        dinp.fill(0.0);
        return Ok(());
    }
    if n == 0 {
        return Ok(());
    }
    let slabs = slab_count(n * c * oc);
    let oc_bounds = slab_bounds(oc, slabs, SLAB_ALIGN);
    let mut dweight_slabs = grad_slabs(dweight, &oc_bounds, c);
    if let Some(dbias) = dbias {
        for (slab, part) in dweight_slabs
            .iter_mut()
            .zip(grad_slabs(dbias, &oc_bounds, 1))
        {
            slab.dbias = Some(part.grad);
        }
    }
    let dweight_slab = |slab: GradSlab| {
        let (o0, o1) = (slab.r0, slab.r1);
        // SAFETY: slab.grad is rows o0..o1 of dweight, (o1 - o0, c); it reads columns o0..o1
        // of dout, (n, oc), as their transpose, and inp, (n, c), bounded by the checks above.
        unsafe {
            gemm_k_blocked(
                slab.grad.as_mut_ptr(),
                c,
                true,
                DWEIGHT_K_BLOCK,
                Operand::new(&dout[o0..], 1, oc),
                Operand::new(inp, c, 1),
                o1 - o0,
                c,
                n,
            );
        }
        if let Some(dbias) = slab.dbias {
            for row in dout.chunks_exact(oc) {
                for (b, d) in dbias.iter_mut().zip(&row[o0..o1]) {
                    *b += d;
                }
            }
        }
    };
    if slabs == 1 {
        dinp_product(dinp, dout, weight, n, c, oc, slabs);
        run_slabs(dweight_slabs, dweight_slab);
    } else {
        rayon::join(
            || dinp_product(dinp, dout, weight, n, c, oc, slabs),
            || run_slabs(dweight_slabs, dweight_slab),
        );
    }
    Ok(())
}

/// dinp (N, C) = dout (N, OC) @ weight (OC, C) alone: the backward through a frozen weight,
/// whose gradient is never formed. The same products, bit for bit, as `matmul_backward`'s
/// dinp.
pub fn matmul_backward_dx(
    dinp: &mut [f32],
    dout: &[f32],
    weight: &[f32],
    n: usize,
    c: usize,
    oc: usize,
) -> Result<()> {
    check_backward_dx(dinp, dout, weight, n, c, oc)?;
    if oc == 0 {
        dinp.fill(0.0);
        return Ok(());
    }
    if n == 0 {
        return Ok(());
    }
    dinp_product(dinp, dout, weight, n, c, oc, slab_count(n * c * oc));
    Ok(())
}

/// dinp = dout @ weight over `slabs` row slabs (checked shapes, n and oc positive).
fn dinp_product(
    dinp: &mut [f32],
    dout: &[f32],
    weight: &[f32],
    n: usize,
    c: usize,
    oc: usize,
    slabs: usize,
) {
    // Enough rows per slab that rows x C stays above the dot-product path.
    let row_align = SLAB_ALIGN.max(DOT_PATH_MAX_ELEMENTS / c.max(1) + 1);
    let row_bounds = slab_bounds(n, slabs, row_align);
    let dinp_slabs = grad_slabs(dinp, &row_bounds, c);
    run_slabs(dinp_slabs, |slab: GradSlab| {
        let (r0, r1) = (slab.r0, slab.r1);
        // SAFETY: slab.grad is rows r0..r1 of dinp, (r1 - r0, c); it reads rows r0..r1 of
        // dout, (r1 - r0, oc), and all of weight, (oc, c), bounded by the callers' checks.
        unsafe {
            gemm_k_blocked(
                slab.grad.as_mut_ptr(),
                c,
                false,
                K_BLOCK,
                Operand::new(&dout[r0 * oc..], oc, 1),
                Operand::new(weight, c, 1),
                r1 - r0,
                c,
                oc,
            );
        }
    });
}

/// How many slabs a product of `macs` multiply-adds is split into: two per thread.
fn slab_count(macs: usize) -> usize {
    let threads = rayon::current_num_threads();
    if macs < PARALLEL_MIN_MACS || threads == 1 {
        1
    } else {
        2 * threads
    }
}

/// Splits 0..len into at most `slabs` ranges of equal width, a multiple of `align`; a last
/// range narrower than `align` joins the one before.
fn slab_bounds(len: usize, slabs: usize, align: usize) -> Vec<(usize, usize)> {
    let slabs = slabs.min(len / align).max(1);
    let width = len.div_ceil(slabs).div_ceil(align) * align;
    let mut bounds: Vec<(usize, usize)> = (0..len)
        .step_by(width)
        .map(|i0| (i0, (i0 + width).min(len)))
        .collect();
    if bounds.len() > 1 && bounds[bounds.len() - 1].1 - bounds[bounds.len() - 1].0 < align {
        let (_, end) = bounds.pop().expect("more than one slab");
        bounds.last_mut().expect("more than one slab").1 = end;
    }
    bounds
}

/// Rows r0..r1 of a gradient buffer, which one slab of the backward writes; for a slab of
/// dweight, dbias holds the same rows of dbias.
struct GradSlab<'a> {
    r0: usize,
    r1: usize,
    grad: &'a mut [f32],
    dbias: Option<&'a mut [f32]>,
}

/// The rows `bounds` of a row-major buffer with rows of `row_len`, as disjoint slabs.
fn grad_slabs<'a>(
    mut buf: &'a mut [f32],
    bounds: &[(usize, usize)],
    row_len: usize,
) -> Vec<GradSlab<'a>> {
    bounds
        .iter()
        .map(|&(r0, r1)| {
            let (grad, rest) = std::mem::take(&mut buf).split_at_mut((r1 - r0) * row_len);
            buf = rest;
            GradSlab {
                r0,
                r1,
                grad,
                dbias: None,
            }
        })
        .collect()
}

/// Runs `work` on every slab: on this thread when there is one, else in parallel.
fn run_slabs<T: Send>(slabs: Vec<T>, work: impl Fn(T) + Sync) {
    if slabs.len() == 1 {
        slabs.into_iter().for_each(work);
    } else {
        let work = &work;
        rayon::scope(|s| {
            for slab in slabs {
                s.spawn(move |_| work(slab));
            }
        });
    }
}

/// A strided matrix operand: element (i, j) at ptr + i * rs + j * cs.
#[derive(Clone, Copy)]
struct Operand {
    ptr: *const f32,
    rs: usize,
    cs: usize,
}

impl Operand {
    fn new(data: &[f32], rs: usize, cs: usize) -> Operand {
        Operand {
            ptr: data.as_ptr(),
            rs,
            cs,
        }
    }
}

/// dst (m, n) with row stride dst_rs = lhs (m, k) @ rhs (k, n), added to dst when
/// `accumulate`. The inner dimension goes in blocks of `k_block` (at most 512), one gemm
/// call each, added in order: gemm never re-blocks a K of 512 or less, so every element is
/// summed in an order fixed by k alone, whatever m and n.
///
/// # Safety
/// For i < m, j < n, l < k: dst + i * dst_rs + j, lhs (i, l) and rhs (l, j) must be in
/// bounds, and no one else may access the written elements of dst meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_k_blocked(
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    k_block: usize,
    lhs: Operand,
    rhs: Operand,
    m: usize,
    n: usize,
    k: usize,
) {
    for k0 in (0..k).step_by(k_block) {
        gemm::gemm(
            m,
            n,
            k_block.min(k - k0),
            dst,
            1,
            dst_rs as isize,
            accumulate || k0 > 0,
            lhs.ptr.add(k0 * lhs.cs),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.ptr.add(k0 * rhs.rs),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// A raw output pointer shared by slabs that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
pub(super) struct SendPtr(pub(super) *mut f32);
// SAFETY: only used for slabs that write disjoint parts of one buffer, within rayon::scope.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::testutil::{
        assert_close, numeric_grad, plus, randn, to_f64, weighted_sum, GRAD_TOL,
    };

    fn naive(
        inp: &[f64],
        w: &[f64],
        bias: Option<&[f64]>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Vec<f64> {
        let mut out = vec![0.0f64; n * oc];
        for i in 0..n {
            for o in 0..oc {
                let mut acc = bias.map_or(0.0, |b| b[o]);
                for k in 0..c {
                    acc += inp[i * c + k] * w[o * c + k];
                }
                out[i * oc + o] = acc;
            }
        }
        out
    }

    /// (rows, cols) -> (cols, rows).
    fn transpose(x: &[f64], rows: usize, cols: usize) -> Vec<f64> {
        (0..cols * rows)
            .map(|i| x[(i % rows) * cols + i / rows])
            .collect()
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
                matmul_forward(&mut out, &inp, &w, bias, n, c, oc).unwrap();
                let want = naive(
                    &to_f64(&inp),
                    &to_f64(&w),
                    bias.map(to_f64).as_deref(),
                    n,
                    c,
                    oc,
                );
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
            })
            .unwrap();
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

    /// Gradients of one backward call, parameter buffers started at `dweight0`/`dbias0`.
    struct Grads {
        dinp: Vec<f32>,
        dweight: Vec<f32>,
        dbias: Vec<f32>,
    }

    #[allow(clippy::too_many_arguments)]
    fn backward(
        dout: &[f32],
        inp: &[f32],
        w: &[f32],
        dweight0: &[f32],
        dbias0: Option<&[f32]>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Grads {
        let mut dinp = vec![f32::NAN; n * c];
        let mut dweight = dweight0.to_vec();
        let mut dbias = dbias0.map_or(vec![], |b| b.to_vec());
        let dbias_arg = dbias0.is_some().then_some(dbias.as_mut_slice());
        matmul_backward(&mut dinp, &mut dweight, dbias_arg, dout, inp, w, n, c, oc).unwrap();
        Grads {
            dinp,
            dweight,
            dbias,
        }
    }

    /// dinp (NaN before) is overwritten; dweight and dbias add to nonzero starting values.
    #[test]
    fn backward_matches_finite_differences_and_accumulates_parameter_gradients() {
        for &(n, c, oc) in &[(1, 1, 1), (3, 7, 5), (4, 16, 9), (2, 33, 3)] {
            let (inp, w, b) = (randn(n * c, 30), randn(oc * c, 31), randn(oc, 32));
            let dout = randn(n * oc, 33);
            let (dweight0, dbias0) = (randn(oc * c, 34), randn(oc, 35));
            let (inp64, w64, b64) = (to_f64(&inp), to_f64(&w), to_f64(&b));
            for with_bias in [false, true] {
                let bias = with_bias.then_some(b64.as_slice());
                let loss = |x: &[f64], w: &[f64], b: Option<&[f64]>| {
                    weighted_sum(&dout, &naive(x, w, b, n, c, oc))
                };
                let got = backward(
                    &dout,
                    &inp,
                    &w,
                    &dweight0,
                    with_bias.then_some(dbias0.as_slice()),
                    n,
                    c,
                    oc,
                );
                let dinp = numeric_grad(&inp64, |x| loss(x, &w64, bias));
                assert_close(&got.dinp, &dinp, GRAD_TOL, GRAD_TOL);
                let dweight = numeric_grad(&w64, |w| loss(&inp64, w, bias));
                assert_close(&got.dweight, &plus(&dweight, &dweight0), GRAD_TOL, GRAD_TOL);
                if with_bias {
                    let dbias = numeric_grad(&b64, |b| loss(&inp64, &w64, Some(b)));
                    assert_close(&got.dbias, &plus(&dbias, &dbias0), GRAD_TOL, GRAD_TOL);
                }
            }
        }
    }

    /// Both shapes split into several slabs of rows and of output rows. The first has
    /// several K blocks each way and widths that are no multiple of the slab alignment; in
    /// the second (C = 1) row slabs of 16 rows would take gemm's dot-product path.
    #[test]
    fn backward_is_identical_on_1_2_and_3_threads_and_matches_naive() {
        for (n, c, oc) in [(600, 129, 530), (1024, 1, 512)] {
            check_thread_invariance_and_naive(n, c, oc);
        }
    }

    fn check_thread_invariance_and_naive(n: usize, c: usize, oc: usize) {
        let (inp, w, dout) = (randn(n * c, 40), randn(oc * c, 41), randn(n * oc, 42));
        let (dweight0, dbias0) = (randn(oc * c, 43), randn(oc, 44));
        let on_threads = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| backward(&dout, &inp, &w, &dweight0, Some(&dbias0), n, c, oc))
        };
        let one = on_threads(1);
        for threads in [1, 2, 3] {
            // A frozen weight's backward: the same dinp, bit for bit, and nothing else.
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut dx = vec![f32::NAN; n * c];
            pool.install(|| matmul_backward_dx(&mut dx, &dout, &w, n, c, oc))
                .unwrap();
            assert!(dx == one.dinp, "dinp alone differs on {threads} threads");
        }
        for threads in [2, 3] {
            let got = on_threads(threads);
            assert!(got.dinp == one.dinp, "dinp differs on {threads} threads");
            assert!(
                got.dweight == one.dweight,
                "dweight differs on {threads} threads"
            );
            assert!(got.dbias == one.dbias, "dbias differs on {threads} threads");
        }
        let dout64 = to_f64(&dout);
        let dout_t = transpose(&dout64, n, oc);
        let dinp = naive(&dout64, &transpose(&to_f64(&w), oc, c), None, n, oc, c);
        let inp_t = transpose(&to_f64(&inp), n, c);
        let dweight = naive(&dout_t, &inp_t, None, oc, n, c);
        let ones = vec![1.0; n];
        let dbias = naive(&dout_t, &ones, None, oc, n, 1);
        let tol = 1e-5 * (n as f64).sqrt();
        assert_close(&one.dinp, &dinp, tol, tol);
        assert_close(&one.dweight, &plus(&dweight, &dweight0), tol, tol);
        assert_close(&one.dbias, &plus(&dbias, &dbias0), tol, tol);
    }

    #[test]
    fn bad_shapes_are_errors_naming_the_op() {
        let err = |r: Result<()>| r.unwrap_err().to_string();
        let (n, c, oc) = (2, 3, 4);
        let (inp, w) = (randn(n * c, 45), randn(oc * c, 46));
        assert_eq!(
            err(matmul_forward(&mut [0.0; 7], &inp, &w, None, n, c, oc)),
            "matmul_forward out: a buffer of 7 elements, expected 8"
        );
        assert_eq!(
            err(matmul_forward(
                &mut [0.0; 8],
                &inp,
                &w,
                Some(&[0.0; 3]),
                n,
                c,
                oc
            )),
            "matmul_forward bias: a buffer of 3 elements, expected 4"
        );
        let dout = randn(n * oc, 47);
        assert_eq!(
            err(matmul_backward(
                &mut [0.0; 6],
                &mut [0.0; 11],
                None,
                &dout,
                &inp,
                &w,
                n,
                c,
                oc
            )),
            "matmul_backward dweight: a buffer of 11 elements, expected 12"
        );
    }
}
