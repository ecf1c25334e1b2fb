//! Causal attention of new query rows over key/value caches, with grouped-query heads.
//!
//! One function serves prefill and decode: a packed batch of N query rows, row n belonging to
//! sequence `row_seq[n]` at position `row_pos[n]`, attends to positions 0..=row_pos[n] of its
//! sequence's cache (which already holds the keys/values of the new rows). Sequences of
//! different lengths are packed without padding, so padding costs nothing.

use super::math::{dot, exp};
use rayon::prelude::*;

/// The key/value cache of one sequence in one layer: each (T, Hkv, D).
#[derive(Clone, Copy)]
pub struct KvView<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
}

/// Head counts and size of an attention layer.
#[derive(Clone, Copy, Debug)]
pub struct AttentionDims {
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
}

/// out: (N, H, D), q: (N, H, D), kv[s]: (T_s, Hkv, D) each.
pub fn attention_forward(
    out: &mut [f32],
    q: &[f32],
    kv: &[KvView],
    row_seq: &[usize],
    row_pos: &[usize],
    dims: AttentionDims,
) {
    let AttentionDims {
        n_head,
        n_kv_head,
        head_dim: d,
    } = dims;
    let n = row_seq.len();
    assert_eq!(row_pos.len(), n, "attention row shapes");
    assert_eq!(q.len(), n * n_head * d, "attention q shape");
    assert_eq!(out.len(), q.len(), "attention out shape");
    assert!(
        n_kv_head > 0 && n_head % n_kv_head == 0,
        "heads must group evenly"
    );
    let group = n_head / n_kv_head;
    let kv_stride = n_kv_head * d;
    let scale = 1.0 / (d as f32).sqrt();
    out.par_chunks_mut(d)
        .zip(q.par_chunks(d))
        .enumerate()
        .with_min_len(4)
        .for_each_init(Vec::new, |scores, (i, (o, qh))| {
            let (row, h) = (i / n_head, i % n_head);
            let cache = kv[row_seq[row]];
            let len = row_pos[row] + 1;
            assert!(
                cache.k.len() >= len * kv_stride,
                "cache shorter than the row's position"
            );
            let kvh = h / group;
            scores.clear();
            let mut max = f32::NEG_INFINITY;
            for t in 0..len {
                let s = dot(qh, &cache.k[t * kv_stride + kvh * d..][..d]) * scale;
                max = max.max(s);
                scores.push(s);
            }
            for s in scores.iter_mut() {
                *s = exp(*s - max);
            }
            let sum: f32 = scores.iter().sum();
            o.fill(0.0);
            for (t, s) in scores.iter().enumerate() {
                let w = s / sum;
                let v = &cache.v[t * kv_stride + kvh * d..][..d];
                for (o, v) in o.iter_mut().zip(v) {
                    *o += w * v;
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::testutil::{assert_close, randn};

    /// Full causal attention of one sequence in f64: q (T, H, D), k/v (T, Hkv, D).
    fn naive(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        t: usize,
        h: usize,
        hkv: usize,
        d: usize,
    ) -> Vec<f64> {
        let mut out = vec![0.0f64; t * h * d];
        for i in 0..t {
            for head in 0..h {
                let kvh = head / (h / hkv);
                let qv = &q[(i * h + head) * d..][..d];
                let scores: Vec<f64> = (0..=i)
                    .map(|j| {
                        let kj = &k[(j * hkv + kvh) * d..][..d];
                        qv.iter()
                            .zip(kj)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                for (j, s) in scores.iter().enumerate() {
                    let w = (s - max).exp() / z;
                    for e in 0..d {
                        out[(i * h + head) * d + e] += w * v[(j * hkv + kvh) * d + e] as f64;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn packed_prefill_of_unequal_sequences_matches_naive_per_sequence() {
        for &(h, hkv, d) in &[(4, 4, 8), (6, 2, 16), (8, 1, 4)] {
            let lens = [5usize, 1, 9];
            let dims = AttentionDims {
                n_head: h,
                n_kv_head: hkv,
                head_dim: d,
            };
            let seqs: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = lens
                .iter()
                .enumerate()
                .map(|(s, &t)| {
                    let seed = 100 + 3 * s as u64;
                    (
                        randn(t * h * d, seed),
                        randn(t * hkv * d, seed + 1),
                        randn(t * hkv * d, seed + 2),
                    )
                })
                .collect();
            let q: Vec<f32> = seqs.iter().flat_map(|s| s.0.clone()).collect();
            let kv: Vec<KvView> = seqs.iter().map(|s| KvView { k: &s.1, v: &s.2 }).collect();
            let (mut row_seq, mut row_pos) = (vec![], vec![]);
            for (s, &t) in lens.iter().enumerate() {
                row_seq.extend(std::iter::repeat_n(s, t));
                row_pos.extend(0..t);
            }
            let mut out = vec![f32::NAN; q.len()];
            attention_forward(&mut out, &q, &kv, &row_seq, &row_pos, dims);
            let want: Vec<f64> = seqs
                .iter()
                .zip(&lens)
                .flat_map(|(s, &t)| naive(&s.0, &s.1, &s.2, t, h, hkv, d))
                .collect();
            assert_close(&out, &want, 1e-5, 1e-5);
        }
    }

    #[test]
    fn decode_row_sees_its_whole_cache() {
        let (h, hkv, d, t) = (4, 2, 8, 7);
        let dims = AttentionDims {
            n_head: h,
            n_kv_head: hkv,
            head_dim: d,
        };
        let q = randn(t * h * d, 20);
        let k = randn(t * hkv * d, 21);
        let v = randn(t * hkv * d, 22);
        let full = naive(&q, &k, &v, t, h, hkv, d);
        let last_q = &q[(t - 1) * h * d..];
        let mut out = vec![0.0; h * d];
        attention_forward(
            &mut out,
            last_q,
            &[KvView { k: &k, v: &v }],
            &[0],
            &[t - 1],
            dims,
        );
        assert_close(&out, &full[(t - 1) * h * d..], 1e-5, 1e-5);
    }
}
