//! Packing f32 operands into the bf16 blocks the kernels read.
//!
//! A block covers 32 along k and is 16 lines of 64 bytes (32 bf16), one tile's worth:
//! - lhs (m, k): a panel of 16 rows; line r holds row r's 32 values of the block's k.
//! - rhs (k, n): a panel of 16 columns in pair-interleaved (VNNI) order; line q holds k
//!   rows 2q and 2q + 1 of the block, column c's pair at elements 2c and 2c + 1.
//!
//! A panel's blocks follow each other along k, so a kernel walks k with one pointer per
//! panel. Rows, columns and k beyond the operand are zeros; the panel count is even, so a
//! kernel always has two panels (32 rows or columns) to read.
//!
//! Every layout the Linear products use has one operand direction contiguous; packing reads
//! along it, 32 or 16 values at a time, converts them at once (`convert.rs`) and places
//! them. Large lhs operands are packed in parallel, a pair of panels per task.

use super::convert::{to_bf16, to_bf16_slice};
pub use super::layout::{Line, BLOCK, PANEL};
use super::Strided;
use rayon::prelude::*;

/// Packed panels: panel p's block b is lines (p * blocks + b) * PANEL ...
pub struct Packed {
    lines: Vec<Line>,
    /// Blocks along k per panel.
    pub blocks: usize,
}

impl Packed {
    /// The first line of panel p, whose `blocks` blocks follow contiguously.
    pub fn panel(&self, p: usize) -> *const u16 {
        self.lines[p * self.blocks * PANEL..].as_ptr().cast()
    }
}

/// Whether the AVX-512 packers run here (AVX512-BF16 and AVX512BW).
#[cfg(target_arch = "x86_64")]
pub fn fast_packing() -> bool {
    static FAST: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FAST.get_or_init(|| super::features::avx512_bf16() && is_x86_feature_detected!("avx512bw"))
}

/// Panels enough for `len` rows or columns: a multiple of two (32).
fn panels(len: usize) -> usize {
    len.div_ceil(2 * PANEL) * 2
}

/// Below this many elements an lhs is packed on one thread.
const PARALLEL_MIN: usize = 1 << 16;

/// lhs (m, k) in 16-row panels.
///
/// # Safety
/// src (i, l) in bounds for i < m, l < k.
pub unsafe fn pack_lhs(src: Strided, m: usize, k: usize) -> Packed {
    let blocks = k.div_ceil(BLOCK);
    let mut lines = vec![Line([0; BLOCK]); panels(m) * blocks * PANEL];
    let pair_len = 2 * blocks * PANEL;
    let fill = |(pair, lines): (usize, &mut [Line])| {
        for (half, panel) in lines.chunks_exact_mut(blocks * PANEL).enumerate() {
            let i0 = (2 * pair + half) * PANEL;
            if i0 < m {
                // SAFETY: rows i0..min(i0 + 16, m) of src, in bounds by the caller.
                unsafe { lhs_panel(src, i0, (m - i0).min(PANEL), k, panel) };
            }
        }
    };
    if m * k >= PARALLEL_MIN {
        lines.par_chunks_mut(pair_len).enumerate().for_each(fill);
    } else {
        lines.chunks_mut(pair_len).enumerate().for_each(fill);
    }
    Packed { lines, blocks }
}

/// Rows i0..i0 + rows of lhs into one panel's lines (blocks x 16).
unsafe fn lhs_panel(src: Strided, i0: usize, rows: usize, k: usize, panel: &mut [Line]) {
    #[cfg(target_arch = "x86_64")]
    if fast_packing() && super::pack_avx512::lhs_panel(src, i0, rows, k, panel) {
        return;
    }
    lhs_panel_scalar(src, i0, rows, k, panel)
}

/// `lhs_panel` for any CPU and layout.
pub(super) unsafe fn lhs_panel_scalar(
    src: Strided,
    i0: usize,
    rows: usize,
    k: usize,
    panel: &mut [Line],
) {
    if src.cs == 1 {
        for r in 0..rows {
            let row = std::slice::from_raw_parts(src.ptr.add((i0 + r) * src.rs), k);
            for (b, part) in row.chunks(BLOCK).enumerate() {
                to_bf16_slice(part, &mut panel[b * PANEL + r].0[..part.len()]);
            }
        }
    } else if src.rs == 1 {
        // Columns contiguous (an operand read transposed): 16 rows' values of one k at a time.
        let mut wide = [0u16; PANEL];
        for l in 0..k {
            let col = std::slice::from_raw_parts(src.ptr.add(i0 + l * src.cs), rows);
            to_bf16_slice(col, &mut wide[..rows]);
            let block = &mut panel[(l / BLOCK) * PANEL..];
            for (r, &x) in wide[..rows].iter().enumerate() {
                block[r].0[l % BLOCK] = x;
            }
        }
    } else {
        for r in 0..rows {
            for l in 0..k {
                let x = *src.ptr.add((i0 + r) * src.rs + l * src.cs);
                panel[(l / BLOCK) * PANEL + r].0[l % BLOCK] = to_bf16(x);
            }
        }
    }
}

/// Columns j0..j1 of rhs (k, n) in 16-column pair-interleaved panels.
///
/// # Safety
/// src (l, j) in bounds for l < k, j0 <= j < j1.
pub unsafe fn pack_rhs(src: Strided, k: usize, j0: usize, j1: usize) -> Packed {
    let blocks = k.div_ceil(BLOCK);
    let mut lines = vec![Line([0; BLOCK]); panels(j1 - j0) * blocks * PANEL];
    for (p, panel) in lines.chunks_exact_mut(blocks * PANEL).enumerate() {
        let c0 = j0 + p * PANEL;
        if c0 < j1 {
            rhs_panel(src, c0, (j1 - c0).min(PANEL), k, panel);
        }
    }
    Packed { lines, blocks }
}

/// Columns c0..c0 + cols of rhs into one panel's lines (blocks x 16).
unsafe fn rhs_panel(src: Strided, c0: usize, cols: usize, k: usize, panel: &mut [Line]) {
    #[cfg(target_arch = "x86_64")]
    if fast_packing() && super::pack_avx512::rhs_panel(src, c0, cols, k, panel) {
        return;
    }
    rhs_panel_scalar(src, c0, cols, k, panel)
}

/// `rhs_panel` for any CPU and layout.
pub(super) unsafe fn rhs_panel_scalar(
    src: Strided,
    c0: usize,
    cols: usize,
    k: usize,
    panel: &mut [Line],
) {
    let mut wide = [0u16; BLOCK];
    if src.rs == 1 {
        // Each column contiguous along k (a Linear weight read as its transpose): a block's
        // 32 values of column c are its 16 pairs, one per line.
        for c in 0..cols {
            let col = std::slice::from_raw_parts(src.ptr.add((c0 + c) * src.cs), k);
            for (b, part) in col.chunks(BLOCK).enumerate() {
                wide.fill(0);
                to_bf16_slice(part, &mut wide[..part.len()]);
                let block = &mut panel[b * PANEL..(b + 1) * PANEL];
                for (q, line) in block.iter_mut().enumerate() {
                    line.0[2 * c] = wide[2 * q];
                    line.0[2 * c + 1] = wide[2 * q + 1];
                }
            }
        }
    } else if src.cs == 1 {
        // Rows contiguous along n: two rows of k make one line, interleaved.
        let (even, odd) = wide.split_at_mut(PANEL);
        for l in (0..k).step_by(2) {
            let row = |l: usize| std::slice::from_raw_parts(src.ptr.add(l * src.rs + c0), cols);
            to_bf16_slice(row(l), &mut even[..cols]);
            if l + 1 < k {
                to_bf16_slice(row(l + 1), &mut odd[..cols]);
            } else {
                odd.fill(0);
            }
            let line = &mut panel[(l / BLOCK) * PANEL + (l % BLOCK) / 2].0;
            for c in 0..cols {
                line[2 * c] = even[c];
                line[2 * c + 1] = odd[c];
            }
        }
    } else {
        for c in 0..cols {
            for l in 0..k {
                let x = *src.ptr.add(l * src.rs + (c0 + c) * src.cs);
                panel[(l / BLOCK) * PANEL + (l % BLOCK) / 2].0[2 * c + l % 2] = to_bf16(x);
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::backend::cpu::testutil::randn;

    /// The AVX-512 packers write what the scalar ones do, for both layouts of each operand,
    /// with partial panels and blocks.
    #[test]
    fn the_avx512_packers_match_the_scalar_ones() {
        if !fast_packing() {
            eprintln!("AVX-512 packers not tested: this CPU lacks AVX512-BF16 or AVX512BW");
            return;
        }
        for &(len, k) in &[(16, 32), (5, 7), (16, 70), (11, 33), (1, 1)] {
            let data = randn((len + 3) * (k + 3), 9);
            let blocks = k.div_ceil(BLOCK);
            // (rs, cs) of an operand whose rows (k along a row) or columns are contiguous.
            for (rs, cs) in [(k + 3, 1), (1, len + 2)] {
                let src = Strided::new(&data, rs, cs);
                let fresh = || vec![Line([0; BLOCK]); blocks * PANEL];
                let (mut want, mut got) = (fresh(), fresh());
                // SAFETY: (len, k) through (rs, cs) stays within data.
                unsafe {
                    lhs_panel_scalar(src, 0, len, k, &mut want);
                    assert!(super::super::pack_avx512::lhs_panel(
                        src, 0, len, k, &mut got
                    ));
                }
                let lines = |x: &[Line]| x.iter().map(|l| l.0.to_vec()).collect::<Vec<_>>();
                assert_eq!(
                    lines(&got),
                    lines(&want),
                    "lhs ({len}, {k}) rs {rs} cs {cs}"
                );
                // The same data read as rhs (k, len): (l, j) at l * cs' + j * rs'.
                let src = Strided::new(&data, cs, rs);
                let (mut want, mut got) = (fresh(), fresh());
                // SAFETY: as above, transposed.
                unsafe {
                    rhs_panel_scalar(src, 0, len, k, &mut want);
                    assert!(super::super::pack_avx512::rhs_panel(
                        src, 0, len, k, &mut got
                    ));
                }
                assert_eq!(
                    lines(&got),
                    lines(&want),
                    "rhs ({k}, {len}) rs {cs} cs {rs}"
                );
            }
        }
    }
}
