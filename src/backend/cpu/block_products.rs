//! Products that add into a block of columns of a wider matrix, and their backward: a LoRA
//! adapter's share s * t B^T of one projection's output (its block of a fused q/k/v or
//! gate/up product), read and written in place, with no copy of the block.
//!
//! f32 throughout, whatever the model's products: the adapter's products are thin (rank r
//! columns or rows), so their cost is the memory they touch, not their arithmetic.
//!
//! Each output element is one gemm sum over the whole inner dimension, and the work is split
//! into slabs of a fixed size (not one per thread), so results do not depend on the thread
//! count.

use super::check_lens;
use crate::backend::settings::Columns;
use anyhow::{bail, Result};
use gemm::Parallelism;
use rayon::prelude::*;

/// Rows (or output columns) per slab of work.
const SLAB: usize = 64;

/// A raw pointer shared by slabs that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct Ptr(*mut f32);
// SAFETY: only used for slabs that write disjoint parts of one buffer, within one call.
unsafe impl Send for Ptr {}
unsafe impl Sync for Ptr {}

impl Ptr {
    /// The pointer (a method, so that closures capture the whole `Ptr`, which is Send).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// A matrix operand: element (i, j) at ptr + i * rs + j * cs.
#[derive(Clone, Copy)]
struct View {
    ptr: *const f32,
    rs: usize,
    cs: usize,
}
// SAFETY: read-only views of buffers that outlive the call.
unsafe impl Send for View {}
unsafe impl Sync for View {}

impl View {
    fn at(self, i: usize, j: usize) -> View {
        // SAFETY: callers stay within the operand's checked extent.
        View {
            ptr: unsafe { self.ptr.add(i * self.rs + j * self.cs) },
            ..self
        }
    }
}

/// dst (m, n) at row stride `dst_rs` (+)= beta * lhs (m, k) @ rhs (k, n), one gemm call.
///
/// # Safety
/// Every element read or written must lie in its buffer, and no one else may access the
/// written elements of dst meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: View,
    rhs: View,
    m: usize,
    n: usize,
    k: usize,
    beta: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                std::ptr::write_bytes(dst.add(i * dst_rs), 0, n);
            }
        }
        return;
    }
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        lhs.ptr,
        lhs.cs as isize,
        lhs.rs as isize,
        rhs.ptr,
        rhs.cs as isize,
        rhs.rs as isize,
        1.0,
        beta,
        false,
        false,
        false,
        Parallelism::None,
    );
}

/// Checks that `cols` holds a block of `width` columns, and that a buffer of `len`
/// elements holds n rows of `cols.stride`.
fn check_block(op: &str, len: usize, cols: Columns, width: usize, n: usize) -> Result<()> {
    if cols.offset + width > cols.stride {
        bail!(
            "{op}: a block of {width} columns at {} of rows of {}",
            cols.offset,
            cols.stride
        );
    }
    check_lens(&format!("{op} block"), &[len], n * cols.stride)
}

/// out[:, cols] += scale * inp (N, C) @ weight (OC, C)^T, where out holds N rows of
/// `cols.stride` and the block is OC columns wide.
#[allow(clippy::too_many_arguments)]
pub fn add_product(
    out: &mut [f32],
    cols: Columns,
    inp: &[f32],
    weight: &[f32],
    n: usize,
    c: usize,
    oc: usize,
    scale: f32,
) -> Result<()> {
    check_block("add_product out", out.len(), cols, oc, n)?;
    check_lens("add_product inp", &[inp.len()], n * c)?;
    check_lens("add_product weight", &[weight.len()], oc * c)?;
    let dst = Ptr(out.as_mut_ptr());
    let lhs = View {
        ptr: inp.as_ptr(),
        rs: c,
        cs: 1,
    };
    // weight^T (C, OC): element (i, j) is weight[j * C + i].
    let rhs = View {
        ptr: weight.as_ptr(),
        rs: 1,
        cs: c,
    };
    (0..n.div_ceil(SLAB)).into_par_iter().for_each(|s| {
        let (r0, rows) = (s * SLAB, SLAB.min(n - s * SLAB));
        // SAFETY: slab s writes rows r0..r0 + rows of the block alone; every operand's
        // extent is checked above.
        unsafe {
            let at = dst.get().add(r0 * cols.stride + cols.offset);
            product(
                at,
                cols.stride,
                true,
                lhs.at(r0, 0),
                rhs,
                rows,
                oc,
                c,
                scale,
            );
        }
    });
    Ok(())
}

/// The backward of `add_product`: dinp (N, C) = scale * dout[:, cols] @ weight, added when
/// `accumulate` (else assigned), and dweight (OC, C) += scale * dout[:, cols]^T @ inp.
#[allow(clippy::too_many_arguments)]
pub fn add_product_backward(
    dinp: &mut [f32],
    accumulate: bool,
    dweight: &mut [f32],
    dout: &[f32],
    cols: Columns,
    inp: &[f32],
    weight: &[f32],
    n: usize,
    c: usize,
    oc: usize,
    scale: f32,
) -> Result<()> {
    let op = "add_product_backward";
    check_block(&format!("{op} dout"), dout.len(), cols, oc, n)?;
    check_lens(&format!("{op} dinp, inp"), &[dinp.len(), inp.len()], n * c)?;
    check_lens(
        &format!("{op} dweight, weight"),
        &[dweight.len(), weight.len()],
        oc * c,
    )?;
    // SAFETY (of the views): dout's block is checked to hold n rows of oc columns at
    // `cols`, the others their full extents.
    let dy = View {
        ptr: unsafe { dout.as_ptr().add(cols.offset) },
        rs: cols.stride,
        cs: 1,
    };
    let w = View {
        ptr: weight.as_ptr(),
        rs: c,
        cs: 1,
    };
    let x = View {
        ptr: inp.as_ptr(),
        rs: c,
        cs: 1,
    };
    let dx = Ptr(dinp.as_mut_ptr());
    (0..n.div_ceil(SLAB)).into_par_iter().for_each(|s| {
        let (r0, rows) = (s * SLAB, SLAB.min(n - s * SLAB));
        // SAFETY: slab s writes rows r0..r0 + rows of dinp alone.
        unsafe {
            let at = dx.get().add(r0 * c);
            product(at, c, accumulate, dy.at(r0, 0), w, rows, c, oc, scale);
        }
    });
    // dweight (OC, C) += dout_block^T (OC, N) @ inp (N, C): slabs of its wider side, each
    // element one sum over all N rows.
    let dyt = View {
        rs: 1,
        cs: cols.stride,
        ..dy
    };
    let dw = Ptr(dweight.as_mut_ptr());
    if oc >= c {
        (0..oc.div_ceil(SLAB)).into_par_iter().for_each(|s| {
            let (o0, m) = (s * SLAB, SLAB.min(oc - s * SLAB));
            // SAFETY: slab s writes rows o0..o0 + m of dweight alone.
            unsafe {
                product(
                    dw.get().add(o0 * c),
                    c,
                    true,
                    dyt.at(o0, 0),
                    x,
                    m,
                    c,
                    n,
                    scale,
                )
            }
        });
    } else {
        (0..c.div_ceil(SLAB)).into_par_iter().for_each(|s| {
            let (j0, width) = (s * SLAB, SLAB.min(c - s * SLAB));
            // SAFETY: slab s writes columns j0..j0 + width of dweight alone.
            unsafe {
                product(
                    dw.get().add(j0),
                    c,
                    true,
                    dyt,
                    x.at(0, j0),
                    oc,
                    width,
                    n,
                    scale,
                )
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::testutil::randn;

    /// out[:, block] += scale * x W^T in f64, the block `cols` of rows of `stride`.
    #[allow(clippy::too_many_arguments)]
    fn naive_add(
        out: &mut [f64],
        cols: Columns,
        x: &[f32],
        w: &[f32],
        n: usize,
        c: usize,
        oc: usize,
        s: f64,
    ) {
        for i in 0..n {
            for o in 0..oc {
                let dot: f64 = (0..c)
                    .map(|k| x[i * c + k] as f64 * w[o * c + k] as f64)
                    .sum();
                out[i * cols.stride + cols.offset + o] += s * dot;
            }
        }
    }

    fn close(got: &[f32], want: &[f64], what: &str) {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (*g as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "{what} [{i}]: {g} vs {w}"
            );
        }
    }

    /// Odd shapes over several slabs, a block in the middle of wider rows, both sides of the
    /// dweight split; the same bits on 1 and 3 threads.
    #[test]
    fn block_products_and_their_backward_match_f64_on_any_thread_count() {
        for &(n, c, oc, stride, offset) in
            &[(1, 3, 2, 5, 1), (130, 16, 70, 90, 20), (67, 150, 16, 16, 0)]
        {
            let cols = Columns { stride, offset };
            let (x, w) = (randn(n * c, 1), randn(oc * c, 2));
            let out0 = randn(n * stride, 3);
            let dout = randn(n * stride, 4);
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| {
                    let mut out = out0.clone();
                    add_product(&mut out, cols, &x, &w, n, c, oc, 0.5).unwrap();
                    let mut dx = randn(n * c, 5);
                    let mut dw = randn(oc * c, 6);
                    add_product_backward(
                        &mut dx, true, &mut dw, &dout, cols, &x, &w, n, c, oc, 0.5,
                    )
                    .unwrap();
                    let mut assigned = vec![f32::NAN; n * c];
                    let mut dw2 = dw.clone();
                    add_product_backward(
                        &mut assigned,
                        false,
                        &mut dw2,
                        &dout,
                        cols,
                        &x,
                        &w,
                        n,
                        c,
                        oc,
                        0.5,
                    )
                    .unwrap();
                    (out, dx, dw, assigned)
                })
            };
            let (out, dx, dw, assigned) = run(1);
            let mut want = out0.iter().map(|&v| v as f64).collect::<Vec<_>>();
            naive_add(&mut want, cols, &x, &w, n, c, oc, 0.5);
            close(&out, &want, "out");
            let (dx0, dw0) = (randn(n * c, 5), randn(oc * c, 6));
            let mut want_dx: Vec<f64> = vec![0.0; n * c];
            let mut want_dw: Vec<f64> = dw0.iter().map(|&v| v as f64).collect();
            for i in 0..n {
                for o in 0..oc {
                    let g = 0.5 * dout[i * stride + offset + o] as f64;
                    for k in 0..c {
                        want_dx[i * c + k] += g * w[o * c + k] as f64;
                        want_dw[o * c + k] += g * x[i * c + k] as f64;
                    }
                }
            }
            close(&assigned, &want_dx, "dinp assigned");
            let acc: Vec<f64> = want_dx
                .iter()
                .zip(&dx0)
                .map(|(a, b)| a + *b as f64)
                .collect();
            close(&dx, &acc, "dinp accumulated");
            close(&dw, &want_dw, "dweight");
            assert!(run(3) == (out, dx, dw, assigned), "3 threads differ");
        }
    }

    #[test]
    fn a_block_beyond_its_rows_is_an_error() {
        let cols = Columns {
            stride: 4,
            offset: 2,
        };
        let err = add_product(&mut [0.0; 8], cols, &[0.0; 6], &[0.0; 9], 2, 3, 3, 1.0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "add_product out: a block of 3 columns at 2 of rows of 4"
        );
    }
}
