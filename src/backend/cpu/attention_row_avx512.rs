//! One query row's attention over its cache, for the query heads of one kv head, in AVX-512:
//! the decode step's path on CPUs with AVX-512F, for head dims of 32, 64 or 128.
//!
//! A decode row sees its whole cache with one query per head, too little work for a GEMM:
//! the tiled path's packing cost more than its products (about 20% of a 135m generation's
//! time went to the gemm crate's packing and kernels on 3 x 64 tiles). Here one pass over
//! the keys scores every head of the group, a dot product per key and head in 16 lanes; the
//! softmax is `attend_row`'s; one pass over the values sums the outputs of up to 16 / (D/16)
//! heads at once in registers. The keys and values are each read once from memory.
//!
//! Every head's result depends only on its own query and cache, in a fixed order, so it is
//! the same whatever batch or thread it runs in. It differs from the portable row path and
//! the tiled path by rounding (16-lane dot products).

use super::attention_rows::{GroupOut, Piece};

/// Whether this CPU and head dim `d` take the AVX-512 row path.
pub fn available(d: usize) -> bool {
    matches!(d, 32 | 64 | 128) && super::packed_f32::available()
}

/// The group's outputs (group, D) and log-normalisers (group) for queries qs: (group, D)
/// over the positions of `pieces` in order (a shared prefix, then the sequence's own rows):
/// each piece's row t at t * kv_stride + off, D wide. scores: (group, positions) scratch.
///
/// Panics unless `available(d)` and the slices hold what the shapes say; the caller checks.
pub(super) fn attend(
    dst: GroupOut,
    qs: &[f32],
    pieces: &[Piece; 2],
    kv_stride: usize,
    off: usize,
    d: usize,
    scores: &mut Vec<f32>,
) {
    assert!(
        available(d),
        "the AVX-512 row path needs AVX-512F and D of 32, 64 or 128"
    );
    let group = qs.len() / d;
    let len: usize = pieces.iter().map(|p| p.2).sum();
    assert!(
        qs.len() == group * d
            && dst.out.len() == group * d
            && dst.lse.len() == group
            && len > 0
            && off + d <= kv_stride
            && pieces
                .iter()
                .all(|&(k, v, n)| k.len() >= n * kv_stride && v.len() >= n * kv_stride),
        "shapes checked by the caller"
    );
    scores.clear();
    scores.resize(group * len, 0.0);
    let scale = super::attention_rows::scale(d);
    let mut t0 = 0;
    for &(k, _, n) in pieces {
        // SAFETY: every read is of a key row t < n of the piece at t * kv_stride + off ..
        // + d, within k (asserted), of the group's queries (group, d), and every write of
        // scores (group, len) at columns t0 + t < len; the CPU has AVX-512F (asserted
        // through `available`).
        unsafe {
            let at = (t0, len);
            match d {
                32 => avx512::scores::<2>(scores, at, qs, k, kv_stride, off, n, scale),
                64 => avx512::scores::<4>(scores, at, qs, k, kv_stride, off, n, scale),
                _ => avx512::scores::<8>(scores, at, qs, k, kv_stride, off, n, scale),
            }
        }
        t0 += n;
    }
    for (s, lse) in scores.chunks_exact_mut(len).zip(dst.lse.iter_mut()) {
        *lse = super::attention_rows::softmax_in_place(s);
    }
    // SAFETY: as above, for the value rows and out (group, d).
    unsafe {
        match d {
            32 => avx512::weighted_values::<2, 8>(dst.out, scores, pieces, kv_stride, off),
            64 => avx512::weighted_values::<4, 4>(dst.out, scores, pieces, kv_stride, off),
            _ => avx512::weighted_values::<8, 2>(dst.out, scores, pieces, kv_stride, off),
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Rows ahead of the one being read whose lines are prefetched.
    const AHEAD: usize = 24;

    /// scores[h][t0 + t] = (q[h] . k row t) * scale for t < len, for C chunks of 16
    /// (D = 16 C); scores has rows of `row_len`.
    ///
    /// # Safety
    /// As `super::attend`: rows t < len of k at t * kv_stride + off, D wide; q (group, D);
    /// scores (group, row_len) with t0 + len <= row_len; AVX-512F.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn scores<const C: usize>(
        scores: &mut [f32],
        (t0, row_len): (usize, usize),
        q: &[f32],
        k: &[f32],
        kv_stride: usize,
        off: usize,
        len: usize,
        scale: f32,
    ) {
        let group = q.len() / (16 * C);
        let k = k.as_ptr().add(off);
        let q = q.as_ptr();
        for t in 0..len {
            let row = k.add(t * kv_stride);
            if t + AHEAD < len {
                let ahead = k.add((t + AHEAD) * kv_stride);
                for c in 0..C {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.add(16 * c).cast());
                }
            }
            let mut kc = [_mm512_setzero_ps(); C];
            for (c, kc) in kc.iter_mut().enumerate() {
                *kc = _mm512_loadu_ps(row.add(16 * c));
            }
            for h in 0..group {
                let qh = q.add(h * 16 * C);
                let mut acc = _mm512_mul_ps(_mm512_loadu_ps(qh), kc[0]);
                for (c, kc) in kc.iter().enumerate().skip(1) {
                    acc = _mm512_fmadd_ps(_mm512_loadu_ps(qh.add(16 * c)), *kc, acc);
                }
                *scores.get_unchecked_mut(h * row_len + t0 + t) = _mm512_reduce_add_ps(acc) * scale;
            }
        }
    }

    /// out[h] = sum over t of w[h][t] * v row t, the rows of the pieces in order, for C
    /// chunks of 16 (D = 16 C), H heads' sums at a time in registers (H C <= 16).
    ///
    /// # Safety
    /// As `super::attend`: each piece's rows t < n at t * kv_stride + off, D wide;
    /// out (group, D); w (group, positions of all pieces); AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn weighted_values<const C: usize, const H: usize>(
        out: &mut [f32],
        w: &[f32],
        pieces: &[super::Piece; 2],
        kv_stride: usize,
        off: usize,
    ) {
        let group = out.len() / (16 * C);
        let len = w.len() / group;
        for h0 in (0..group).step_by(H) {
            let heads = (group - h0).min(H);
            let mut acc = [[_mm512_setzero_ps(); C]; H];
            let mut t0 = 0;
            for &(_, v, n) in pieces {
                let v = v.as_ptr().add(off);
                for t in 0..n {
                    let row = v.add(t * kv_stride);
                    if h0 == 0 && t + AHEAD < n {
                        let ahead = v.add((t + AHEAD) * kv_stride);
                        for c in 0..C {
                            _mm_prefetch::<_MM_HINT_T0>(ahead.add(16 * c).cast());
                        }
                    }
                    let mut vc = [_mm512_setzero_ps(); C];
                    for (c, vc) in vc.iter_mut().enumerate() {
                        *vc = _mm512_loadu_ps(row.add(16 * c));
                    }
                    for (h, acc) in acc.iter_mut().enumerate().take(heads) {
                        let wt = _mm512_set1_ps(*w.get_unchecked((h0 + h) * len + t0 + t));
                        for (acc, vc) in acc.iter_mut().zip(&vc) {
                            *acc = _mm512_fmadd_ps(wt, *vc, *acc);
                        }
                    }
                }
                t0 += n;
            }
            for (h, acc) in acc.iter().enumerate().take(heads) {
                let o = out.as_mut_ptr().add((h0 + h) * 16 * C);
                for (c, acc) in acc.iter().enumerate() {
                    _mm512_storeu_ps(o.add(16 * c), *acc);
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod avx512 {
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn scores<const C: usize>(
        _: &mut [f32],
        _: (usize, usize),
        _: &[f32],
        _: &[f32],
        _: usize,
        _: usize,
        _: usize,
        _: f32,
    ) {
        unreachable!("AVX-512F is never available off x86_64")
    }

    pub unsafe fn weighted_values<const C: usize, const H: usize>(
        _: &mut [f32],
        _: &[f32],
        _: &[super::Piece; 2],
        _: usize,
        _: usize,
    ) {
        unreachable!("AVX-512F is never available off x86_64")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::testutil::randn;

    /// One head's attention in f64: (out (D), lse).
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        stride: usize,
        off: usize,
        len: usize,
    ) -> (Vec<f64>, f64) {
        let d = q.len();
        let s: Vec<f64> = (0..len)
            .map(|t| {
                let kt = &k[t * stride + off..][..d];
                q.iter()
                    .zip(kt)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum::<f64>()
                    / (d as f64).sqrt()
            })
            .collect();
        let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = s.iter().map(|x| (x - max).exp()).sum();
        let mut out = vec![0.0f64; d];
        for (t, x) in s.iter().enumerate() {
            let w = (x - max).exp() / sum;
            for (o, vt) in out.iter_mut().zip(&v[t * stride + off..][..d]) {
                *o += w * *vt as f64;
            }
        }
        (out, max + sum.ln())
    }

    #[test]
    fn every_head_dim_and_group_split_matches_f64() {
        if !available(64) {
            eprintln!("skipped: this CPU has no AVX-512F");
            return;
        }
        assert!(!available(48) && !available(16), "only D of 32, 64, 128");
        let mut seed = 1;
        // Groups that fill the value pass's register batches exactly, leave a remainder, or
        // are a single head; lengths across the prefetch distance.
        for (d, group, n_kv) in [
            (64, 3, 3),
            (64, 8, 2),
            (32, 9, 1),
            (128, 3, 2),
            (128, 1, 4),
            (32, 1, 1),
        ] {
            for len in [1, 2, 23, 24, 25, 61] {
                seed += 1;
                let stride = n_kv * d;
                let g = n_kv - 1;
                let qs = randn(group * d, seed);
                let k = randn(len * stride, seed + 100);
                let v = randn(len * stride, seed + 200);
                let (mut out, mut lse) = (vec![f32::NAN; group * d], vec![f32::NAN; group]);
                let dst = GroupOut {
                    out: &mut out,
                    lse: &mut lse,
                };
                // The cache in two pieces, as a sample sharing its prompt's sees it.
                let p = len / 3;
                let (pk, ok) = k.split_at(p * stride);
                let (pv, ov) = v.split_at(p * stride);
                let pieces = [(pk, pv, p), (ok, ov, len - p)];
                attend(dst, &qs, &pieces, stride, g * d, d, &mut Vec::new());
                for h in 0..group {
                    let (want, want_lse) = reference(&qs[h * d..][..d], &k, &v, stride, g * d, len);
                    let what = format!("D {d}, group {group}, len {len}, head {h}");
                    assert!(
                        (lse[h] as f64 - want_lse).abs() < 1e-5,
                        "{what}: lse {} vs {want_lse}",
                        lse[h]
                    );
                    for (i, (&o, &w)) in out[h * d..][..d].iter().zip(&want).enumerate() {
                        assert!(
                            (o as f64 - w).abs() < 1e-5,
                            "{what}, element {i}: {o} vs {w}"
                        );
                    }
                }
            }
        }
    }
}
