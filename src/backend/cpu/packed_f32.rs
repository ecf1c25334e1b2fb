//! f32 products against a weight packed once (AVX-512): out (m, oc) = inp (m, c) @ weight^T,
//! for a run whose weights do not change (a generation). The gemm crate packs its right
//! operand on every call; at a decode step's few rows that packing cost as much as the
//! products (40% of a 135m generation's time in perf).
//!
//! Layout: the weight's transpose (c, oc) in panels of 16 output columns; panel p holds,
//! for each l < c, the 16 values weight[16p..16p + 16][l] as one 64-byte line. The panel
//! count is even (a zero panel pads an odd one), so the kernel always reads two panels.
//!
//! The kernel computes a block of up to `ROWS` rows x 32 columns over all of c: per l, two
//! 16-wide loads of the panels, one broadcast of each row's inp[r][l], and two FMAs per row,
//! with the sums in 2 x `ROWS` zmm registers. Every element is one FMA chain over l in
//! order, started at zero, so a row's result is the same whatever other rows, block or
//! thread it runs with (batch and thread invariance), and equals `block_scalar` (its scalar
//! twin, `f32::mul_add` in the same order) bit for bit.

use super::matmul::SendPtr;

/// Output columns per panel (one zmm of f32).
pub const PANEL: usize = 16;
/// Rows per kernel call: 2 x 12 accumulators, 2 panel loads and a broadcast fit the 32 zmm.
const ROWS: usize = 12;
/// Column chunk width (a multiple of 2 panels) handed to one task; at most this so that a
/// decode step's LM head splits into enough tasks to share among threads.
const MAX_CHUNK: usize = 256;
/// The l covered by one pass over the rows: two panels' slice of 16 KiB.
const K_SLICE: usize = 128;
/// Below this many multiply-adds a product runs on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 18;

/// Whether this CPU runs the packed f32 kernel (AVX-512F), asked once.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One line of a panel: 16 output columns at one l.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Line([f32; PANEL]);

/// A weight (oc, c) packed as the forward's right operand (c, oc).
pub struct PackedF32 {
    /// panels x c lines; panel p's line l at p * c + l.
    lines: Vec<Line>,
    c: usize,
    oc: usize,
}

impl PackedF32 {
    /// Packs weight (oc, c), row-major as stored in checkpoints; panels in parallel.
    pub fn new(weight: &[f32], c: usize, oc: usize) -> PackedF32 {
        use rayon::prelude::*;
        assert_eq!(weight.len(), oc * c, "weight is (oc, c)");
        let panels = oc.div_ceil(2 * PANEL) * 2;
        let mut lines = vec![Line::default(); panels * c];
        if c > 0 {
            lines.par_chunks_mut(c).enumerate().for_each(|(p, panel)| {
                for j in p * PANEL..oc.min((p + 1) * PANEL) {
                    let row = &weight[j * c..(j + 1) * c];
                    for (line, &w) in panel.iter_mut().zip(row) {
                        line.0[j % PANEL] = w;
                    }
                }
            });
        }
        PackedF32 { lines, c, oc }
    }

    pub fn c(&self) -> usize {
        self.c
    }

    pub fn oc(&self) -> usize {
        self.oc
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.lines.len() * std::mem::size_of::<Line>()
    }
}

/// out (m, oc) = inp (m, c) @ weight^T, in parallel column chunks.
///
/// Panics unless out is m x oc, inp m x c and this CPU has AVX-512F (`available`); the
/// caller checks the shapes and the CPU.
pub fn forward(out: &mut [f32], inp: &[f32], weight: &PackedF32, m: usize) {
    let (c, oc) = (weight.c, weight.oc);
    assert!(
        out.len() == m * oc && inp.len() == m * c,
        "shapes checked by the caller"
    );
    assert!(available(), "the packed f32 kernel needs AVX-512F");
    if m == 0 || oc == 0 {
        return;
    }
    let chunks = column_chunks(oc, m * c * oc);
    let dst = SendPtr(out.as_mut_ptr());
    let work = |(j0, j1): (usize, usize)| {
        // SAFETY: the chunk writes columns j0..j1 of out (m, oc) only and chunks are
        // disjoint; every read is within inp (m, c) and the packed panels (shapes asserted
        // above); the CPU has AVX-512F (asserted above).
        unsafe { chunk(dst.get(), oc, inp, c, weight, m, j0, j1) }
    };
    if chunks.len() == 1 {
        chunks.into_iter().for_each(work);
    } else {
        let work = &work;
        rayon::scope(|s| {
            for ch in chunks {
                s.spawn(move |_| work(ch));
            }
        });
    }
}

/// Column chunks of out, multiples of 2 panels wide (but the last): at most `MAX_CHUNK`,
/// two per thread on a product worth splitting.
fn column_chunks(oc: usize, macs: usize) -> Vec<(usize, usize)> {
    let want = if macs < PARALLEL_MIN_MACS {
        1
    } else {
        2 * rayon::current_num_threads()
    };
    let width = oc
        .div_ceil(want)
        .div_ceil(2 * PANEL)
        .max(1)
        .saturating_mul(2 * PANEL)
        .min(MAX_CHUNK);
    (0..oc)
        .step_by(width)
        .map(|j0| (j0, (j0 + width).min(oc)))
        .collect()
}

/// Columns j0..j1 of out, every block of rows, over l in slices of `K_SLICE`: a slice of
/// the two panels (16 KiB) stays in L1 while every block of rows reads it. A block's sums
/// go to out between slices and come back for the next, which keeps each element one FMA
/// chain (f32 stores and loads are exact).
///
/// # Safety
/// out (m, ldo) writable at columns j0..j1 by this call alone; inp (m, c); j0 a multiple of
/// 2 panels; the CPU has AVX-512F.
#[allow(clippy::too_many_arguments)]
unsafe fn chunk(
    out: *mut f32,
    ldo: usize,
    inp: &[f32],
    c: usize,
    weight: &PackedF32,
    m: usize,
    j0: usize,
    j1: usize,
) {
    // Rows split evenly into blocks of at most ROWS (64 rows: 11, 11, 11, 11, 10, 10).
    let blocks = m.div_ceil(ROWS);
    let (base, extra) = (m / blocks, m % blocks);
    for jp in (j0..j1).step_by(2 * PANEL) {
        let panels = weight.lines.as_ptr().add((jp / PANEL) * c).cast::<f32>();
        let cols = (j1 - jp).min(2 * PANEL);
        for l0 in (0..c.max(1)).step_by(K_SLICE) {
            let len = (c - l0.min(c)).min(K_SLICE);
            // The slice the next pass reads: this pair's next one, or the next pair's first.
            let (next, next_len) = if l0 + K_SLICE < c {
                (
                    panels.add((l0 + K_SLICE) * PANEL),
                    (c - l0 - K_SLICE).min(K_SLICE),
                )
            } else if jp + 2 * PANEL < j1 {
                (panels.add(2 * c * PANEL), c.min(K_SLICE))
            } else {
                (panels, 0)
            };
            let mut i0 = 0;
            for b in 0..blocks {
                let rows = base + usize::from(b < extra);
                let a = inp.as_ptr().add(i0 * c + l0);
                let o = out.add(i0 * ldo + jp);
                // The first block fetches the next slice into cache while it computes.
                let slice = Slice {
                    first: l0 == 0,
                    len,
                    next,
                    next_len: if b == 0 { next_len } else { 0 },
                };
                block(
                    rows,
                    a,
                    c,
                    panels.add(l0 * PANEL),
                    c * PANEL,
                    o,
                    ldo,
                    cols,
                    slice,
                );
                i0 += rows;
            }
        }
    }
}

/// Which part of l a kernel call sums: `len` steps, starting the sums at zero when
/// `first`, else from out.
/// `next` (the first of two panels, as `block`'s `panels`) is prefetched for `next_len`
/// steps of l as the block runs.
#[derive(Clone, Copy)]
struct Slice {
    first: bool,
    len: usize,
    next: *const f32,
    next_len: usize,
}

/// out[r][j] (+)= sum over the slice's l of a[r][l] * panels (l, j), for r < rows, j < cols
/// (<= 32); `a` has row stride lda, the second panel starts `panel_stride` floats after
/// the first.
///
/// # Safety
/// a (rows, len) with row stride lda, the panels' slice, out (rows, ldo) with cols columns
/// in bounds; the CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    rows: usize,
    a: *const f32,
    lda: usize,
    panels: *const f32,
    panel_stride: usize,
    out: *mut f32,
    ldo: usize,
    cols: usize,
    slice: Slice,
) {
    let f = match rows {
        12 => avx512::block::<12>,
        11 => avx512::block::<11>,
        10 => avx512::block::<10>,
        9 => avx512::block::<9>,
        8 => avx512::block::<8>,
        7 => avx512::block::<7>,
        6 => avx512::block::<6>,
        5 => avx512::block::<5>,
        4 => avx512::block::<4>,
        3 => avx512::block::<3>,
        2 => avx512::block::<2>,
        _ => avx512::block::<1>,
    };
    f(a, lda, panels, panel_stride, out, ldo, cols, slice);
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    _: usize,
    _: *const f32,
    _: usize,
    _: *const f32,
    _: usize,
    _: *mut f32,
    _: usize,
    _: usize,
    _: Slice,
) {
    unreachable!("AVX-512F is never available off x86_64")
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Slice, PANEL};
    use std::arch::x86_64::*;

    /// `super::block` for R rows.
    ///
    /// # Safety
    /// As `super::block`.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn block<const R: usize>(
        a: *const f32,
        lda: usize,
        panels: *const f32,
        panel_stride: usize,
        out: *mut f32,
        ldo: usize,
        cols: usize,
        slice: Slice,
    ) {
        let mask = |first: usize| -> __mmask16 {
            let n = cols.saturating_sub(first).min(PANEL);
            ((1u32 << n) - 1) as __mmask16
        };
        let (m0, m1) = (mask(0), mask(PANEL));
        let mut acc0 = [_mm512_setzero_ps(); R];
        let mut acc1 = [_mm512_setzero_ps(); R];
        if !slice.first {
            for r in 0..R {
                let row = out.add(r * ldo);
                acc0[r] = _mm512_maskz_loadu_ps(m0, row);
                // wrapping: past the end of out when cols <= 16 (the mask reads nothing there).
                acc1[r] = _mm512_maskz_loadu_ps(m1, row.wrapping_add(PANEL));
            }
        }
        let second = panels.add(panel_stride);
        let (next0, next1) = (slice.next, slice.next.wrapping_add(panel_stride));
        for l in 0..slice.len {
            if l < slice.next_len {
                _mm_prefetch::<_MM_HINT_T0>(next0.wrapping_add(l * PANEL).cast());
                _mm_prefetch::<_MM_HINT_T0>(next1.wrapping_add(l * PANEL).cast());
            }
            let b0 = _mm512_load_ps(panels.add(l * PANEL));
            let b1 = _mm512_load_ps(second.add(l * PANEL));
            for r in 0..R {
                let x = _mm512_set1_ps(*a.add(r * lda + l));
                acc0[r] = _mm512_fmadd_ps(x, b0, acc0[r]);
                acc1[r] = _mm512_fmadd_ps(x, b1, acc1[r]);
            }
        }
        for r in 0..R {
            let row = out.add(r * ldo);
            _mm512_mask_storeu_ps(row, m0, acc0[r]);
            _mm512_mask_storeu_ps(row.wrapping_add(PANEL), m1, acc1[r]);
        }
    }
}

/// The scalar twin of the kernel: out (m, oc) = inp (m, c) @ weight^T, each element one
/// `mul_add` chain over l in order from zero, as the kernel's lanes run.
pub fn forward_scalar(out: &mut [f32], inp: &[f32], weight: &PackedF32, m: usize) {
    let (c, oc) = (weight.c, weight.oc);
    assert!(
        out.len() == m * oc && inp.len() == m * c,
        "shapes checked by the caller"
    );
    for (row, x) in out
        .chunks_exact_mut(oc.max(1))
        .zip(inp.chunks_exact(c.max(1)))
    {
        for (j, o) in row.iter_mut().enumerate() {
            let panel = &weight.lines[(j / PANEL) * c..(j / PANEL + 1) * c];
            *o = panel.iter().zip(x).fold(0.0f32, |acc, (line, &xl)| {
                xl.mul_add(line.0[j % PANEL], acc)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::testutil::{assert_close, randn};

    fn reference(inp: &[f32], weight: &[f32], m: usize, c: usize, oc: usize) -> Vec<f64> {
        let mut out = vec![0.0f64; m * oc];
        for i in 0..m {
            for j in 0..oc {
                out[i * oc + j] = (0..c)
                    .map(|l| inp[i * c + l] as f64 * weight[j * c + l] as f64)
                    .sum();
            }
        }
        out
    }

    const SHAPES: [(usize, usize, usize); 7] = [
        (1, 1, 1),
        (3, 5, 17),
        (12, 16, 32),
        (13, 33, 47),
        (25, 70, 100),
        (64, 576, 960),
        (7, 1, 65),
    ];

    /// The scalar twin against an f64 sum, on odd shapes.
    #[test]
    fn the_scalar_twin_sums_the_products() {
        for (m, c, oc) in SHAPES {
            let (inp, weight) = (randn(m * c, 1), randn(oc * c, 2));
            let packed = PackedF32::new(&weight, c, oc);
            let mut out = vec![f32::NAN; m * oc];
            forward_scalar(&mut out, &inp, &packed, m);
            let tol = 1e-5 * (c as f64).sqrt();
            assert_close(&out, &reference(&inp, &weight, m, c, oc), tol, tol);
        }
    }

    /// The AVX-512 kernel equals its scalar twin bit for bit, writes nothing past oc, and a
    /// row's result does not depend on the rows beside it or the thread count.
    #[test]
    fn the_kernel_equals_its_twin_and_is_batch_invariant() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512F");
            return;
        }
        for (m, c, oc) in SHAPES {
            let (inp, weight) = (randn(m * c, 3), randn(oc * c, 4));
            let packed = PackedF32::new(&weight, c, oc);
            let mut want = vec![f32::NAN; m * oc];
            forward_scalar(&mut want, &inp, &packed, m);
            let mut got = vec![f32::NAN; m * oc];
            forward(&mut got, &inp, &packed, m);
            assert_eq!(got, want, "m {m} c {c} oc {oc}");
            let last = m - 1;
            let mut alone = vec![f32::NAN; oc];
            forward(&mut alone, &inp[last * c..], &packed, 1);
            assert_eq!(alone, want[last * oc..], "row alone, m {m} c {c} oc {oc}");
            let one = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap();
            let mut single = vec![f32::NAN; m * oc];
            one.install(|| forward(&mut single, &inp, &packed, m));
            assert_eq!(single, want, "one thread, m {m} c {c} oc {oc}");
        }
    }

    /// A block writes its own columns only: the columns beyond oc in a wider out stay.
    #[test]
    fn the_kernel_writes_no_column_past_oc() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512F");
            return;
        }
        let (m, c, oc, ldo) = (13, 9, 17, 40);
        let (inp, weight) = (randn(m * c, 5), randn(oc * c, 6));
        let packed = PackedF32::new(&weight, c, oc);
        let mut out = vec![7.0f32; m * ldo];
        // SAFETY: out (m, ldo) holds columns 0..oc; inp (m, c); the CPU has AVX-512F.
        unsafe { chunk(out.as_mut_ptr(), ldo, &inp, c, &packed, m, 0, oc) };
        let mut want = vec![0.0f32; m * oc];
        forward_scalar(&mut want, &inp, &packed, m);
        for i in 0..m {
            assert_eq!(
                out[i * ldo..i * ldo + oc],
                want[i * oc..(i + 1) * oc],
                "row {i}"
            );
            assert!(out[i * ldo + oc..(i + 1) * ldo].iter().all(|&x| x == 7.0));
        }
    }
}
