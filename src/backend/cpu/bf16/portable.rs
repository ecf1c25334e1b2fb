//! The bf16 block kernel for any CPU: each bf16 widened to f32, then f32 multiply-adds, in
//! the pair order of the other kernels.

use super::layout::{BLOCK, PANEL};

#[inline]
fn widen(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// out (32, 32) = lhs panels (a0: rows 0..16, a1: rows 16..32) @ rhs panels (b0: columns
/// 0..16, b1: columns 16..32) over `blocks` blocks of k.
///
/// # Safety
/// Each pointer is the first line of a panel of at least `blocks` blocks.
pub unsafe fn block(
    a0: *const u16,
    a1: *const u16,
    b0: *const u16,
    b1: *const u16,
    blocks: usize,
    out: &mut [f32; 4 * PANEL * PANEL],
) {
    let block_len = PANEL * BLOCK;
    for r in 0..2 * PANEL {
        let a = if r < PANEL { a0 } else { a1 };
        let mut acc = [0.0f32; 2 * PANEL];
        for kb in 0..blocks {
            let line =
                std::slice::from_raw_parts(a.add(kb * block_len + (r % PANEL) * BLOCK), BLOCK);
            for q in 0..PANEL {
                let (x0, x1) = (widen(line[2 * q]), widen(line[2 * q + 1]));
                for (half, b) in [b0, b1].into_iter().enumerate() {
                    let pairs =
                        std::slice::from_raw_parts(b.add(kb * block_len + q * BLOCK), BLOCK);
                    let acc = &mut acc[half * PANEL..(half + 1) * PANEL];
                    for (c, sum) in acc.iter_mut().enumerate() {
                        *sum += x0 * widen(pairs[2 * c]) + x1 * widen(pairs[2 * c + 1]);
                    }
                }
            }
        }
        out[r * 2 * PANEL..(r + 1) * 2 * PANEL].copy_from_slice(&acc);
    }
}
