//! The packers of `pack.rs` on AVX-512 with AVX512-BF16, for the two layouts each operand
//! comes in (rows or columns contiguous): 32 values converted by one `vcvtne2ps2bf16`, pairs
//! interleaved by one `vpermw`, and a whole line stored at once, or 16 pairs scattered to the
//! 16 lines of a block by one `vpscatterdd` where the operand runs across lines. Tails load
//! masked (zeros), so they write the zeros the padding holds anyway. The same values as the
//! scalar packers (round to nearest even), but denormal inputs become zero.

use super::layout::{Line, BLOCK, PANEL};
use super::Strided;
use std::arch::x86_64::*;

/// u16 lane 2c takes lane c, lane 2c + 1 takes lane 16 + c: two rows of 16 into 16 pairs.
static INTERLEAVE: [u16; 32] = [
    0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28,
    13, 29, 14, 30, 15, 31,
];

/// Byte offsets of the 16 lines of a block, for the scatters.
static LINE_OFFSETS: [i32; 16] = [
    0, 64, 128, 192, 256, 320, 384, 448, 512, 576, 640, 704, 768, 832, 896, 960,
];

#[inline(always)]
fn mask(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

/// 16 f32 from p, the first n of them (the rest zero).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn load16(p: *const f32, n: usize) -> __m512 {
    if n == 0 {
        _mm512_setzero_ps()
    } else {
        _mm512_maskz_loadu_ps(mask(n), p)
    }
}

/// lo and hi to 32 bf16: lanes 0..16 from lo, 16..32 from hi.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn convert(lo: __m512, hi: __m512) -> __m512i {
    std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo))
}

/// Rows i0..i0 + rows of lhs into one panel, for lhs rows (cs == 1) or columns (rs == 1)
/// contiguous; false for any other layout.
///
/// # Safety
/// As `pack::lhs_panel`; the CPU has AVX512-BF16 and AVX512BW.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn lhs_panel(
    src: Strided,
    i0: usize,
    rows: usize,
    k: usize,
    panel: &mut [Line],
) -> bool {
    if src.cs == 1 {
        for r in 0..rows {
            let row = src.ptr.add((i0 + r) * src.rs);
            for (b, l0) in (0..k).step_by(BLOCK).enumerate() {
                let n = (k - l0).min(BLOCK);
                let lo = load16(row.add(l0), n.min(16));
                let hi = load16(row.add(l0 + 16), n.saturating_sub(16));
                _mm512_store_si512(panel[b * PANEL + r].0.as_mut_ptr().cast(), convert(lo, hi));
            }
        }
        true
    } else if src.rs == 1 {
        // Two k at a time: 16 rows' pairs, scattered to the 16 lines of the block.
        let idx = _mm512_loadu_si512(INTERLEAVE.as_ptr().cast());
        let lines = _mm512_loadu_si512(LINE_OFFSETS.as_ptr().cast());
        for l in (0..k).step_by(2) {
            let lo = load16(src.ptr.add(i0 + l * src.cs), rows);
            let hi = if l + 1 < k {
                load16(src.ptr.add(i0 + (l + 1) * src.cs), rows)
            } else {
                _mm512_setzero_ps()
            };
            let pairs = _mm512_permutexvar_epi16(idx, convert(lo, hi));
            let base = panel[(l / BLOCK) * PANEL].0.as_mut_ptr().add(l % BLOCK);
            _mm512_i32scatter_epi32::<1>(base.cast(), lines, pairs);
        }
        true
    } else {
        false
    }
}

/// Columns c0..c0 + cols of rhs into one pair-interleaved panel, for rhs rows (cs == 1) or
/// columns (rs == 1) contiguous; false for any other layout.
///
/// # Safety
/// As `pack::rhs_panel`; the CPU has AVX512-BF16 and AVX512BW.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn rhs_panel(
    src: Strided,
    c0: usize,
    cols: usize,
    k: usize,
    panel: &mut [Line],
) -> bool {
    if src.cs == 1 {
        // Rows l and l + 1 make one line, interleaved.
        let idx = _mm512_loadu_si512(INTERLEAVE.as_ptr().cast());
        for l in (0..k).step_by(2) {
            let lo = load16(src.ptr.add(l * src.rs + c0), cols);
            let hi = if l + 1 < k {
                load16(src.ptr.add((l + 1) * src.rs + c0), cols)
            } else {
                _mm512_setzero_ps()
            };
            let line = &mut panel[(l / BLOCK) * PANEL + (l % BLOCK) / 2];
            _mm512_store_si512(
                line.0.as_mut_ptr().cast(),
                _mm512_permutexvar_epi16(idx, convert(lo, hi)),
            );
        }
        true
    } else if src.rs == 1 {
        // A column's 32 values of a block are its 16 pairs in order: one per line.
        let lines = _mm512_loadu_si512(LINE_OFFSETS.as_ptr().cast());
        for c in 0..cols {
            let col = src.ptr.add((c0 + c) * src.cs);
            for (b, l0) in (0..k).step_by(BLOCK).enumerate() {
                let n = (k - l0).min(BLOCK);
                let lo = load16(col.add(l0), n.min(16));
                let hi = load16(col.add(l0 + 16), n.saturating_sub(16));
                let base = panel[b * PANEL].0.as_mut_ptr().add(2 * c);
                _mm512_i32scatter_epi32::<1>(base.cast(), lines, convert(lo, hi));
            }
        }
        true
    } else {
        false
    }
}
