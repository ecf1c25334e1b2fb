//! f32 to bf16, rounding to nearest even: `vcvtne2ps2bf16` where the CPU has AVX512-BF16,
//! else the same rounding by integer arithmetic. Both flush nothing but the instruction
//! treats denormal inputs as zero; no operand of a product here is that small in practice,
//! and within one process every operand goes through the same one.

/// f32 to bf16 bits, rounding to nearest even; NaN stays NaN.
#[inline]
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// dst[i] = to_bf16(src[i]); the slices have one length.
#[inline]
pub fn to_bf16_slice(src: &[f32], dst: &mut [u16]) {
    debug_assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    if fast::available() {
        // SAFETY: the CPU has AVX512-BF16 (checked).
        unsafe { fast::convert(src, dst) };
        return;
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = to_bf16(s);
    }
}

#[cfg(target_arch = "x86_64")]
mod fast {
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    pub fn available() -> bool {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(super::super::features::avx512_bf16)
    }

    #[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
    pub unsafe fn convert(src: &[f32], dst: &mut [u16]) {
        let n = src.len();
        let mut i = 0;
        while i + 32 <= n {
            let lo = _mm512_loadu_ps(src.as_ptr().add(i));
            let hi = _mm512_loadu_ps(src.as_ptr().add(i + 16));
            let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(dst.as_mut_ptr().add(i).cast(), both);
            i += 32;
        }
        if i < n {
            let rest = (n - i) as u32;
            let lo_mask: __mmask16 = if rest >= 16 {
                0xffff
            } else {
                (1u16 << rest) - 1
            };
            let hi_mask: __mmask16 = if rest > 16 {
                (1u16 << (rest - 16)) - 1
            } else {
                0
            };
            let lo = _mm512_maskz_loadu_ps(lo_mask, src.as_ptr().add(i));
            let hi = _mm512_maskz_loadu_ps(hi_mask, src.as_ptr().add(i + 16));
            let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            let mask: __mmask32 = (1u32 << rest) - 1;
            _mm512_mask_storeu_epi16(dst.as_mut_ptr().add(i).cast(), mask, both);
        }
    }
}
