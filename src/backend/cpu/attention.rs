//! Causal attention of new query rows over key/value caches, with grouped-query heads.
//!
//! One function serves prefill and decode: a packed batch of N query rows, row n belonging to
//! sequence `row_seq[n]` at position `row_pos[n]`, attends to positions 0..=row_pos[n] of its
//! sequence's cache (which already holds the keys/values of the new rows). Sequences of
//! different lengths are packed without padding, so padding costs nothing.
//!
//! The backward serves training: whole sequences packed row after row, no cache.

use super::math::{dot, exp};
use rayon::prelude::*;
use std::ops::Range;

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

/// out: (N, H, D), lse: (N, H) the log of each softmax's normaliser (natural log of
/// sum_t exp(score_t), scores already scaled by 1/sqrt(D)), q: (N, H, D), kv[s]: (T_s, Hkv, D)
/// each.
pub fn attention_forward(
    out: &mut [f32],
    lse: &mut [f32],
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
    assert_eq!(lse.len(), n * n_head, "attention lse shape");
    assert!(
        n_kv_head > 0 && n_head % n_kv_head == 0,
        "heads must group evenly"
    );
    let group = n_head / n_kv_head;
    let kv_stride = n_kv_head * d;
    let scale = 1.0 / (d as f32).sqrt();
    out.par_chunks_mut(d)
        .zip(lse.par_iter_mut())
        .zip(q.par_chunks(d))
        .enumerate()
        .with_min_len(4)
        .for_each_init(Vec::new, |scores, (i, ((o, lse), qh))| {
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
            *lse = max + sum.ln();
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

/// Backward of causal self-attention over packed whole sequences (training, no cache): the
/// rows `seqs[s]` (ranges that tile 0..N in order) hold sequence s at positions 0, 1, ...
/// dq: (N, H, D), dk, dv: (N, Hkv, D) assigned; dout, q, out: (N, H, D); k, v: (N, Hkv, D);
/// lse: (N, H) from attention_forward.
///
/// Flash-attention's recomputation: the softmax weights P_ij = exp(scale q_i.k_j - lse_i)
/// come back from lse without a saved (N, N) matrix, and with delta_i = dout_i.out_i the
/// softmax's backward is dS_ij = P_ij (dout_i.v_j - delta_i).
///
/// One task per (sequence, kv head) owns that head's dk/dv rows in the sequence and the dq
/// of its query heads: no two tasks add to the same element, and each sums in a fixed
/// order, so the result does not depend on the thread count.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    seqs: &[Range<usize>],
    dims: AttentionDims,
) {
    let AttentionDims {
        n_head,
        n_kv_head,
        head_dim: d,
    } = dims;
    assert!(
        n_kv_head > 0 && n_head % n_kv_head == 0,
        "heads must group evenly"
    );
    let mut n = 0;
    for rows in seqs {
        assert_eq!(rows.start, n, "sequences must tile the rows in order");
        n = rows.end;
    }
    assert_eq!(lse.len(), n * n_head, "attention lse shape");
    for x in [&*dq, dout, q, out] {
        assert_eq!(x.len(), n * n_head * d, "attention query-side shapes");
    }
    for x in [&*dk, &*dv, k, v] {
        assert_eq!(x.len(), n * n_kv_head * d, "attention key-side shapes");
    }
    let group = n_head / n_kv_head;
    let scale = 1.0 / (d as f32).sqrt();
    let tasks: Vec<(usize, usize)> = (0..seqs.len())
        .flat_map(|s| (0..n_kv_head).map(move |g| (s, g)))
        .collect();
    let grads: Vec<KvHeadGrads> = tasks
        .par_iter()
        .map(|&(s, g)| {
            let (r0, t) = (seqs[s].start, seqs[s].len());
            let mut grads = KvHeadGrads {
                dq: vec![0.0; t * group * d],
                dk: vec![0.0; t * d],
                dv: vec![0.0; t * d],
            };
            // (T, D): the task's key/value head, gathered so that the passes below stream
            // through it rather than stride across the other heads.
            let gather = |x: &[f32]| -> Vec<f32> {
                (r0..r0 + t)
                    .flat_map(|r| head_row(x, n_kv_head, r, g, d))
                    .copied()
                    .collect()
            };
            let (kh, vh) = (gather(k), gather(v));
            // (i + 1): row i's softmax weights P_ij, then its dS_ij.
            let (mut p, mut ds) = (Vec::with_capacity(t), Vec::with_capacity(t));
            for hq in 0..group {
                let h = g * group + hq;
                for i in 0..t {
                    let qi = head_row(q, n_head, r0 + i, h, d);
                    let douti = head_row(dout, n_head, r0 + i, h, d);
                    let delta = dot(douti, head_row(out, n_head, r0 + i, h, d));
                    let lse_i = lse[(r0 + i) * n_head + h];
                    // One pass per quantity over the keys 0..=i: each pass's iterations are
                    // independent, where one loop would chain dot, exp and the updates.
                    p.clear();
                    p.extend(kh.chunks_exact(d).take(i + 1).map(|kj| dot(qi, kj)));
                    for x in p.iter_mut() {
                        *x = exp(*x * scale - lse_i);
                    }
                    ds.clear();
                    ds.extend(vh.chunks_exact(d).take(i + 1).map(|vj| dot(douti, vj)));
                    for (x, p) in ds.iter_mut().zip(&p) {
                        *x = p * (*x - delta);
                    }
                    let dqi = &mut grads.dq[(i * group + hq) * d..][..d];
                    for (ds, kj) in ds.iter().zip(kh.chunks_exact(d)) {
                        for (a, b) in dqi.iter_mut().zip(kj) {
                            *a += ds * b;
                        }
                    }
                    for a in dqi.iter_mut() {
                        *a *= scale;
                    }
                    let dk_rows = grads.dk.chunks_exact_mut(d);
                    for ((dkj, dvj), (ds, p)) in dk_rows
                        .zip(grads.dv.chunks_exact_mut(d))
                        .zip(ds.iter().zip(&p))
                    {
                        for (a, b) in dkj.iter_mut().zip(qi) {
                            *a += scale * ds * b;
                        }
                        for (a, b) in dvj.iter_mut().zip(douti) {
                            *a += p * b;
                        }
                    }
                }
            }
            grads
        })
        .collect();
    for (&(s, g), grads) in tasks.iter().zip(&grads) {
        for (i, row) in seqs[s].clone().enumerate() {
            dq[(row * n_head + g * group) * d..][..group * d]
                .copy_from_slice(&grads.dq[i * group * d..][..group * d]);
            let kv = (row * n_kv_head + g) * d;
            dk[kv..kv + d].copy_from_slice(&grads.dk[i * d..][..d]);
            dv[kv..kv + d].copy_from_slice(&grads.dv[i * d..][..d]);
        }
    }
}

/// Head `head` of row `row` of a (N, heads, D) tensor: (D).
fn head_row(x: &[f32], heads: usize, row: usize, head: usize, d: usize) -> &[f32] {
    &x[(row * heads + head) * d..][..d]
}

/// One (sequence, kv head) task's gradients, copied into place once all tasks are done.
struct KvHeadGrads {
    /// (T, H/Hkv, D): the task's query heads.
    dq: Vec<f32>,
    /// (T, D)
    dk: Vec<f32>,
    /// (T, D)
    dv: Vec<f32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::testutil::{
        assert_close, numeric_grad, randn, to_f64, weighted_sum, GRAD_TOL,
    };

    /// Full causal attention of one sequence in f64: q (T, H, D), k/v (T, Hkv, D); returns
    /// out (T, H, D) and lse (T, H).
    fn naive(
        q: &[f64],
        k: &[f64],
        v: &[f64],
        t: usize,
        h: usize,
        hkv: usize,
        d: usize,
    ) -> (Vec<f64>, Vec<f64>) {
        let mut out = vec![0.0f64; t * h * d];
        let mut lse = vec![0.0f64; t * h];
        for i in 0..t {
            for head in 0..h {
                let kvh = head / (h / hkv);
                let qv = &q[(i * h + head) * d..][..d];
                let scores: Vec<f64> = (0..=i)
                    .map(|j| {
                        let kj = &k[(j * hkv + kvh) * d..][..d];
                        qv.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() / (d as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                lse[i * h + head] = max + z.ln();
                for (j, s) in scores.iter().enumerate() {
                    let w = (s - max).exp() / z;
                    for e in 0..d {
                        out[(i * h + head) * d + e] += w * v[(j * hkv + kvh) * d + e];
                    }
                }
            }
        }
        (out, lse)
    }

    fn dims(n_head: usize, n_kv_head: usize, head_dim: usize) -> AttentionDims {
        AttentionDims {
            n_head,
            n_kv_head,
            head_dim,
        }
    }

    /// Sequences of `lens` packed row after row: each row's sequence and position, and each
    /// sequence's rows.
    fn pack(lens: &[usize]) -> (Vec<usize>, Vec<usize>, Vec<Range<usize>>) {
        let (mut row_seq, mut row_pos, mut seqs) = (vec![], vec![], vec![]);
        for (s, &t) in lens.iter().enumerate() {
            seqs.push(row_seq.len()..row_seq.len() + t);
            row_seq.extend(std::iter::repeat_n(s, t));
            row_pos.extend(0..t);
        }
        (row_seq, row_pos, seqs)
    }

    #[test]
    fn packed_prefill_of_unequal_sequences_matches_naive_per_sequence() {
        for &(h, hkv, d) in &[(4, 4, 8), (6, 2, 16), (8, 1, 4)] {
            let lens = [5usize, 1, 9];
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
            let (row_seq, row_pos, _) = pack(&lens);
            let mut out = vec![f32::NAN; q.len()];
            let mut lse = vec![f32::NAN; row_seq.len() * h];
            attention_forward(
                &mut out,
                &mut lse,
                &q,
                &kv,
                &row_seq,
                &row_pos,
                dims(h, hkv, d),
            );
            let (mut want_out, mut want_lse) = (vec![], vec![]);
            for (s, &t) in seqs.iter().zip(&lens) {
                let (o, l) = naive(&to_f64(&s.0), &to_f64(&s.1), &to_f64(&s.2), t, h, hkv, d);
                want_out.extend(o);
                want_lse.extend(l);
            }
            assert_close(&out, &want_out, 1e-5, 1e-5);
            assert_close(&lse, &want_lse, 1e-5, 1e-5);
        }
    }

    #[test]
    fn decode_row_sees_its_whole_cache() {
        let (h, hkv, d, t) = (4, 2, 8, 7);
        let q = randn(t * h * d, 20);
        let k = randn(t * hkv * d, 21);
        let v = randn(t * hkv * d, 22);
        let (full, full_lse) = naive(&to_f64(&q), &to_f64(&k), &to_f64(&v), t, h, hkv, d);
        let last_q = &q[(t - 1) * h * d..];
        let mut out = vec![0.0; h * d];
        let mut lse = vec![0.0; h];
        attention_forward(
            &mut out,
            &mut lse,
            last_q,
            &[KvView { k: &k, v: &v }],
            &[0],
            &[t - 1],
            dims(h, hkv, d),
        );
        assert_close(&out, &full[(t - 1) * h * d..], 1e-5, 1e-5);
        assert_close(&lse, &full_lse[(t - 1) * h..], 1e-5, 1e-5);
    }

    /// The training forward (each sequence's views slices of the packed k/v) then the
    /// backward, against central differences of the f64 forward, for GQA ratios 1, 2 and 4.
    /// dq/dk/dv start as NaN, so every element must be written.
    #[test]
    fn backward_matches_finite_differences_on_packed_sequences() {
        let cases: [(usize, usize, usize, &[usize]); 3] = [
            (4, 4, 8, &[5, 1, 4]),
            (4, 2, 4, &[3, 6]),
            (8, 2, 8, &[2, 7, 3]),
        ];
        for (h, hkv, d, lens) in cases {
            let (row_seq, row_pos, seqs) = pack(lens);
            let n = row_seq.len();
            let (qd, kvd) = (h * d, hkv * d);
            let (q, k, v) = (randn(n * qd, 110), randn(n * kvd, 111), randn(n * kvd, 112));
            let dout = randn(n * qd, 113);
            let kv: Vec<KvView> = seqs
                .iter()
                .map(|r| KvView {
                    k: &k[r.start * kvd..r.end * kvd],
                    v: &v[r.start * kvd..r.end * kvd],
                })
                .collect();
            let (mut out, mut lse) = (vec![0.0; n * qd], vec![0.0; n * h]);
            attention_forward(
                &mut out,
                &mut lse,
                &q,
                &kv,
                &row_seq,
                &row_pos,
                dims(h, hkv, d),
            );
            let mut dq = vec![f32::NAN; n * qd];
            let (mut dk, mut dv) = (vec![f32::NAN; n * kvd], vec![f32::NAN; n * kvd]);
            attention_backward(
                &mut dq,
                &mut dk,
                &mut dv,
                &dout,
                &q,
                &k,
                &v,
                &out,
                &lse,
                &seqs,
                dims(h, hkv, d),
            );
            let loss = |q: &[f64], k: &[f64], v: &[f64]| {
                let out: Vec<f64> = seqs
                    .iter()
                    .flat_map(|r| {
                        let (qs, ks) = (r.start * qd..r.end * qd, r.start * kvd..r.end * kvd);
                        naive(&q[qs], &k[ks.clone()], &v[ks], r.len(), h, hkv, d).0
                    })
                    .collect();
                weighted_sum(&dout, &out)
            };
            let (q64, k64, v64) = (to_f64(&q), to_f64(&k), to_f64(&v));
            let want_dq = numeric_grad(&q64, |q| loss(q, &k64, &v64));
            let want_dk = numeric_grad(&k64, |k| loss(&q64, k, &v64));
            let want_dv = numeric_grad(&v64, |v| loss(&q64, &k64, v));
            assert_close(&dq, &want_dq, GRAD_TOL, GRAD_TOL);
            assert_close(&dk, &want_dk, GRAD_TOL, GRAD_TOL);
            assert_close(&dv, &want_dv, GRAD_TOL, GRAD_TOL);
        }
    }
}
