//! f32 to bf16 by integer arithmetic, rounding to nearest even: the scalar packers' and the
//! tests' conversion. The AVX-512 packers use `vcvtne2ps2bf16`, the same rounding but for
//! denormal inputs, which it takes as zero.

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
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = to_bf16(s);
    }
}
