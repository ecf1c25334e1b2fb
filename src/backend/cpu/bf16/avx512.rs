//! The bf16 block kernel on AVX512-BF16: `vdpbf16ps` adds, for 16 columns at once, the
//! products of one lhs pair (broadcast) with the columns' rhs pairs. Eight rows at a time,
//! 16 accumulators of 16 f32.

#[cfg(target_arch = "x86_64")]
use super::layout::{BLOCK, PANEL};

/// Whether the CPU has AVX512-BF16 (and AVX512F).
pub fn available() -> bool {
    super::features::avx512_bf16()
}

/// As `portable::block`.
///
/// # Safety
/// As `portable::block`, and the CPU has AVX512-BF16 (`available`).
#[cfg(target_arch = "x86_64")]
pub unsafe fn block(
    a0: *const u16,
    a1: *const u16,
    b0: *const u16,
    b1: *const u16,
    blocks: usize,
    out: &mut [f32; 4 * PANEL * PANEL],
) {
    for group in 0..4 {
        let a = if group < 2 { a0 } else { a1 };
        let first = (group % 2) * 8;
        rows8(a, first, b0, b1, blocks, &mut out[group * 8 * 2 * PANEL..]);
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub unsafe fn block(
    _: *const u16,
    _: *const u16,
    _: *const u16,
    _: *const u16,
    _: usize,
    _: &mut [f32; 4 * super::pack::PANEL * super::pack::PANEL],
) {
    unreachable!("AVX512-BF16 is never available off x86_64")
}

/// Rows first..first + 8 of lhs panel `a` against both rhs panels, into out's first 8 rows
/// of 32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn rows8(
    a: *const u16,
    first: usize,
    b0: *const u16,
    b1: *const u16,
    blocks: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let block_len = PANEL * BLOCK;
    let mut acc = [[_mm512_setzero_ps(); 2]; 8];
    for kb in 0..blocks {
        let a_block = a.add(kb * block_len + first * BLOCK);
        for q in 0..PANEL {
            let rhs0: __m512bh = std::mem::transmute(_mm512_loadu_si512(
                b0.add(kb * block_len + q * BLOCK).cast(),
            ));
            let rhs1: __m512bh = std::mem::transmute(_mm512_loadu_si512(
                b1.add(kb * block_len + q * BLOCK).cast(),
            ));
            for (r, acc) in acc.iter_mut().enumerate() {
                let pair = a_block
                    .add(r * BLOCK + 2 * q)
                    .cast::<i32>()
                    .read_unaligned();
                let lhs: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                acc[0] = _mm512_dpbf16_ps(acc[0], lhs, rhs0);
                acc[1] = _mm512_dpbf16_ps(acc[1], lhs, rhs1);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        _mm512_storeu_ps(out[r * 2 * PANEL..].as_mut_ptr(), acc[0]);
        _mm512_storeu_ps(out[r * 2 * PANEL + PANEL..].as_mut_ptr(), acc[1]);
    }
}
