//! Causal attention of new query rows over key/value caches, with grouped-query heads.
//!
//! One function serves prefill and decode: a packed batch of N query rows, row n belonging to
//! sequence `row_seq[n]` at position `row_pos[n]`, attends to positions 0..=row_pos[n] of its
//! sequence's cache (which already holds the keys/values of the new rows). Sequences of
//! different lengths are packed without padding, so padding costs nothing.
//!
//! The backward serves training: whole sequences packed row after row, no cache. Both run the
//! many-row work as GEMMs on tiles (attention_tiled); this file holds the entry points, the
//! split into parallel work, and the row-by-row path: decode steps over short caches, and
//! every decode row where the CPU has AVX-512 (attention_row_avx512).

use super::attention_row_avx512;
pub use super::attention_rows::KvView;
use super::attention_rows::{scale, softmax_in_place, GroupOut};
use super::attention_tiled::{
    backward_task, forward_tile, tile_positions, BackwardTask, ForwardScratch,
};
use super::math::dot;
use super::{check_lens, check_rows};
use crate::backend::settings::AttentionDims;
use anyhow::{bail, Result};
use rayon::prelude::*;
use std::ops::Range;

/// A run of rows goes in tiles when its rows see at least this many keys in all; below, a
/// GEMM's packing costs more than it saves and it goes row by row. Measured on 2 cores at
/// the benchmark shapes (32 sequences, one row each): about 22 us row by row against 40 us
/// tiled over a 4-key cache, 65 against 55 us at 32 keys, 130 against 85 us at 64 keys.
const TILED_MIN_KEYS: usize = 32;

/// Whether a decode row with heads of `head_dim` reads a cache in two pieces in place (the
/// AVX-512 row path). Elsewhere a decode row past `TILED_MIN_KEYS` keys goes in tiles,
/// which would join the pieces into a copy on every step: a sample should copy its prompt's
/// cache once instead.
pub fn decode_reads_pieces(head_dim: usize) -> bool {
    attention_row_avx512::available(head_dim)
}

/// out: (N, H, D), lse: (N, H) the log of each softmax's normaliser (natural log of
/// sum_t exp(score_t), scores already scaled by 1/sqrt(D)), q: (N, H, D), kv[s]: (T_s, Hkv, D)
/// each.
///
/// The rows that continue one sequence position by position (a prefill, a training
/// sequence, a decode row) form a run; a run that sees many keys goes in tiles of GEMMs
/// (attention_tiled), a small one row by row. Either way a row's result depends only on its
/// own sequence's run, so it is the same whatever else shares the batch and whatever the
/// thread count.
pub fn attention_over_caches(
    out: &mut [f32],
    lse: &mut [f32],
    q: &[f32],
    kv: &[KvView],
    row_seq: &[usize],
    row_pos: &[usize],
    dims: AttentionDims,
) -> Result<()> {
    over_caches(
        "attention_over_caches",
        out,
        lse,
        q,
        kv,
        row_seq,
        row_pos,
        dims,
    )
}

/// `attention_over_caches`, its errors naming `op`.
#[allow(clippy::too_many_arguments)]
fn over_caches(
    op: &str,
    out: &mut [f32],
    lse: &mut [f32],
    q: &[f32],
    kv: &[KvView],
    row_seq: &[usize],
    row_pos: &[usize],
    dims: AttentionDims,
) -> Result<()> {
    let AttentionDims {
        n_head,
        n_kv_head,
        head_dim: d,
    } = dims;
    check_heads(op, dims)?;
    let n = row_seq.len();
    check_lens(&format!("{op} row_pos"), &[row_pos.len()], n)?;
    check_rows(op, &[q.len(), out.len()], n, n_head * d)?;
    check_lens(&format!("{op} lse"), &[lse.len()], n * n_head)?;
    let kvd = n_kv_head * d;
    for (r, (&s, &p)) in row_seq.iter().zip(row_pos).enumerate() {
        let Some(cache) = kv.get(s) else {
            bail!("{op}: row {r} of sequence {s}, of {} caches", kv.len());
        };
        let positions = cache.positions(kvd);
        if p >= positions {
            bail!("{op}: row {r} at position {p} of a cache of {positions} positions");
        }
    }
    let group = n_head / n_kv_head;
    // (N * Hkv): row r's query heads of kv head g at r * Hkv + g, each taken by one work item.
    let mut blocks: Vec<Option<GroupOut>> = out
        .chunks_exact_mut(group * d)
        .zip(lse.chunks_exact_mut(group))
        .map(|(out, lse)| Some(GroupOut { out, lse }))
        .collect();
    let mut take = |row: usize, g: usize| {
        blocks[row * n_kv_head + g]
            .take()
            .expect("one work item per block")
    };
    let mut work = Vec::new();
    // Sequences whose tiles need their cache in one piece (a shared prefix joined to it).
    let mut to_join = vec![false; kv.len()];
    let mut r0 = 0;
    while r0 < n {
        let mut r1 = r0 + 1;
        while r1 < n && row_seq[r1] == row_seq[r0] && row_pos[r1] == row_pos[r1 - 1] + 1 {
            r1 += 1;
        }
        let keys_seen: usize = row_pos[r0..r1].iter().map(|p| p + 1).sum();
        // A decode row (a run of one) goes row by row wherever the AVX-512 row path runs:
        // at the 135m shape it took 0.6 of the tiles' time (`benches/ops.rs`).
        let one_fast_row = r1 - r0 == 1 && attention_row_avx512::available(d);
        if keys_seen >= TILED_MIN_KEYS && !one_fast_row {
            to_join[row_seq[r0]] |= kv[row_seq[r0]].has_prefix();
            for t0 in (r0..r1).step_by(tile_positions(group)) {
                let t1 = (t0 + tile_positions(group)).min(r1);
                for g in 0..n_kv_head {
                    let dst = (t0..t1).map(|r| take(r, g)).collect();
                    work.push(Work::Tile {
                        rows: t0..t1,
                        g,
                        dst,
                    });
                }
            }
        } else {
            for row in r0..r1 {
                for g in 0..n_kv_head {
                    let dst = take(row, g);
                    work.push(Work::Row { row, g, dst });
                }
            }
        }
        r0 = r1;
    }
    let joined: Vec<Option<(Vec<f32>, Vec<f32>)>> = kv
        .iter()
        .zip(&to_join)
        .map(|(c, &join)| join.then(|| c.joined()))
        .collect();
    let tile_views: Vec<KvView> = kv
        .iter()
        .zip(&joined)
        .map(|(c, j)| j.as_ref().map_or(*c, |(k, v)| KvView::new(k, v)))
        .collect();
    work.into_par_iter()
        .for_each_init(Scratch::default, |scratch, work| match work {
            Work::Row { row, g, dst } => {
                let cache = kv[row_seq[row]];
                attend_row(
                    dst,
                    q,
                    row,
                    row_pos[row] + 1,
                    cache,
                    g,
                    dims,
                    &mut scratch.row,
                );
            }
            Work::Tile { rows, g, mut dst } => {
                let (first_pos, cache) = (row_pos[rows.start], tile_views[row_seq[rows.start]]);
                forward_tile(
                    &mut dst,
                    q,
                    rows,
                    first_pos,
                    cache,
                    g,
                    dims,
                    &mut scratch.tile,
                );
            }
        });
    Ok(())
}

/// Checks that the query heads group evenly over the kv heads, of a nonzero dimension.
fn check_heads(op: &str, dims: AttentionDims) -> Result<()> {
    let AttentionDims {
        n_head,
        n_kv_head,
        head_dim,
    } = dims;
    if n_head == 0 || n_kv_head == 0 || !n_head.is_multiple_of(n_kv_head) {
        bail!("{op}: {n_head} heads do not group over {n_kv_head}");
    }
    if head_dim == 0 {
        bail!("{op}: head dim 0");
    }
    Ok(())
}

/// Checks that `seqs` tile the rows 0..n in order.
fn check_tiling(op: &str, seqs: &[Range<usize>], n: usize) -> Result<()> {
    let mut end = 0;
    for (i, s) in seqs.iter().enumerate() {
        if s.start != end || s.end < s.start {
            bail!("{op}: sequence {i} at rows {s:?} does not follow row {end}");
        }
        end = s.end;
    }
    if end != n {
        bail!("{op}: sequences of {end} rows in a batch of {n}");
    }
    Ok(())
}

/// A unit of the forward's parallel work: one row, or one tile of a run, for one kv head.
enum Work<'a> {
    Row {
        row: usize,
        g: usize,
        dst: GroupOut<'a>,
    },
    Tile {
        rows: Range<usize>,
        g: usize,
        /// One per row of the tile.
        dst: Vec<GroupOut<'a>>,
    },
}

/// Buffers a thread reuses across its work items.
#[derive(Default)]
struct Scratch {
    /// (T) one head's scores over its cache.
    row: Vec<f32>,
    tile: ForwardScratch,
}

/// Row `row` of q (N, H, D), which sees `len` positions of its cache, for the query heads of
/// kv head g. One pass over the keys scores every head of the group (a dot product per key
/// and head), one pass over the values sums every head's output, so the group's keys and
/// values are read once. Each head's arithmetic is that of a head on its own: its scores,
/// max, exps and sum in key order, and its output summed over the keys in order.
#[allow(clippy::too_many_arguments)]
pub(super) fn attend_row<'a>(
    dst: GroupOut,
    q: &[f32],
    row: usize,
    len: usize,
    cache: KvView<'a>,
    g: usize,
    dims: AttentionDims,
    scores: &mut Vec<f32>,
) {
    let AttentionDims {
        n_head,
        n_kv_head,
        head_dim: d,
    } = dims;
    let group = n_head / n_kv_head;
    let kv_stride = n_kv_head * d;
    assert!(
        cache.positions(kv_stride) >= len,
        "cache shorter than the row's position"
    );
    let qs = &q[(row * n_head + g * group) * d..][..group * d];
    // The cache's pieces cut to the row's `len` positions: (keys, values, positions).
    let mut left = len;
    let pieces = cache.pieces(kv_stride).map(|(k, v, n)| {
        let n = n.min(left);
        left -= n;
        (k, v, n)
    });
    if attention_row_avx512::available(d) {
        attention_row_avx512::attend(dst, qs, &pieces, kv_stride, g * d, d, scores);
        return;
    }
    let scale = scale(d);
    // (group, len): each head's scores, then its softmax weights.
    scores.clear();
    scores.resize(group * len, 0.0);
    // Row t's slice of kv head g in the keys (values) of the pieces, in position order.
    let head = |rows: &'a [f32], n: usize| {
        rows[..n * kv_stride]
            .chunks_exact(kv_stride)
            .map(move |r| &r[g * d..][..d])
    };
    let keys = pieces.iter().flat_map(|&(k, _, n)| head(k, n));
    let values = pieces.iter().flat_map(|&(_, v, n)| head(v, n));
    for (t, k) in keys.enumerate() {
        for (h, qh) in qs.chunks_exact(d).enumerate() {
            scores[h * len + t] = dot(qh, k) * scale;
        }
    }
    for ((s, lse), o) in scores
        .chunks_exact_mut(len)
        .zip(dst.lse.iter_mut())
        .zip(dst.out.chunks_exact_mut(d))
    {
        *lse = softmax_in_place(s);
        o.fill(0.0);
    }
    for (t, v) in values.enumerate() {
        for (h, o) in dst.out.chunks_exact_mut(d).enumerate() {
            let w = scores[h * len + t];
            for (o, v) in o.iter_mut().zip(v) {
                *o += w * v;
            }
        }
    }
}

/// Where each sequence of a packed batch of whole sequences lies: its rows, and each row's
/// sequence and position (the row-level view `attention_over_caches` takes).
pub struct PackedSeqs {
    pub seqs: Vec<Range<usize>>,
    pub row_seq: Vec<usize>, // (N)
    pub row_pos: Vec<usize>, // (N)
}

impl PackedSeqs {
    /// seqs: ranges that tile 0..N in order.
    pub fn new(seqs: &[Range<usize>]) -> PackedSeqs {
        let mut p = PackedSeqs {
            seqs: seqs.to_vec(),
            row_seq: vec![],
            row_pos: vec![],
        };
        for (s, r) in seqs.iter().enumerate() {
            p.row_seq.extend(std::iter::repeat_n(s, r.len()));
            p.row_pos.extend(0..r.len());
        }
        p
    }
}

/// Causal self-attention of packed whole sequences over their own keys (training, a
/// prefill, a classifier): out: (N, H, D), lse: (N, H); q: (N, H, D); k, v: (N, Hkv, D).
/// The same computation as `attention_over_caches` with each sequence's keys as its cache.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward(
    out: &mut [f32],
    lse: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seqs: &PackedSeqs,
    dims: AttentionDims,
) -> Result<()> {
    let op = "attention_forward";
    check_heads(op, dims)?;
    let n = seqs.row_seq.len();
    let kvd = dims.n_kv_head * dims.head_dim;
    check_rows(&format!("{op} k, v"), &[k.len(), v.len()], n, kvd)?;
    check_tiling(op, &seqs.seqs, n)?;
    let views: Vec<KvView> = seqs
        .seqs
        .iter()
        .map(|s| {
            KvView::new(
                &k[s.start * kvd..s.end * kvd],
                &v[s.start * kvd..s.end * kvd],
            )
        })
        .collect();
    over_caches(op, out, lse, q, &views, &seqs.row_seq, &seqs.row_pos, dims)
}

/// Backward of causal self-attention over packed whole sequences (training, no cache): the
/// rows `seqs[s]` (ranges that tile 0..N in order) hold sequence s at positions 0, 1, ...
/// dq: (N, H, D), dk, dv: (N, Hkv, D) assigned; dout, q, out: (N, H, D); k, v: (N, Hkv, D);
/// lse: (N, H) from attention_over_caches.
///
/// One task per (sequence, kv head), run in tiles of GEMMs (attention_tiled), owns that
/// head's dk/dv rows in the sequence and the dq of its query heads: no two tasks write the
/// same element, and each sums in a fixed order, so the result does not depend on the
/// thread count.
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
) -> Result<()> {
    let AttentionDims {
        n_head,
        n_kv_head,
        head_dim: d,
    } = dims;
    let op = "attention_backward";
    check_heads(op, dims)?;
    let n = seqs.last().map_or(0, |s| s.end);
    check_tiling(op, seqs, n)?;
    check_lens(&format!("{op} lse"), &[lse.len()], n * n_head)?;
    let q_lens = [dq.len(), dout.len(), q.len(), out.len()];
    check_rows(op, &q_lens, n, n_head * d)?;
    let kv_lens = [dk.len(), dv.len(), k.len(), v.len()];
    check_rows(&format!("{op} k, v"), &kv_lens, n, n_kv_head * d)?;
    let group = n_head / n_kv_head;
    // Row r's blocks come in kv head order, (group, D) of dq and (D) of dk and dv each.
    let mut dq_blocks = dq.chunks_exact_mut(group * d);
    let (mut dk_blocks, mut dv_blocks) = (dk.chunks_exact_mut(d), dv.chunks_exact_mut(d));
    let mut tasks = Vec::with_capacity(seqs.len() * n_kv_head);
    for rows in seqs {
        let first = tasks.len();
        tasks.extend((0..n_kv_head).map(|g| BackwardTask {
            rows: rows.clone(),
            g,
            dq: Vec::with_capacity(rows.len()),
            dk: Vec::with_capacity(rows.len()),
            dv: Vec::with_capacity(rows.len()),
        }));
        for _ in rows.clone() {
            for task in &mut tasks[first..] {
                let next = "a block per row and kv head";
                task.dq.push(dq_blocks.next().expect(next));
                task.dk.push(dk_blocks.next().expect(next));
                task.dv.push(dv_blocks.next().expect(next));
            }
        }
    }
    tasks
        .into_par_iter()
        .for_each(|task| backward_task(task, dout, q, k, v, out, lse, dims));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::testutil::{
        assert_close, naive_attention as naive, numeric_grad, pack, randn, to_f64, weighted_sum,
        GRAD_TOL,
    };

    fn dims(n_head: usize, n_kv_head: usize, head_dim: usize) -> AttentionDims {
        AttentionDims {
            n_head,
            n_kv_head,
            head_dim,
        }
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
            let kv: Vec<KvView> = seqs.iter().map(|s| KvView::new(&s.1, &s.2)).collect();
            let (row_seq, row_pos, _) = pack(&lens);
            let mut out = vec![f32::NAN; q.len()];
            let mut lse = vec![f32::NAN; row_seq.len() * h];
            attention_over_caches(
                &mut out,
                &mut lse,
                &q,
                &kv,
                &row_seq,
                &row_pos,
                dims(h, hkv, d),
            )
            .unwrap();
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
        attention_over_caches(
            &mut out,
            &mut lse,
            last_q,
            &[KvView::new(&k, &v)],
            &[0],
            &[t - 1],
            dims(h, hkv, d),
        )
        .unwrap();
        assert_close(&out, &full[(t - 1) * h * d..], 1e-5, 1e-5);
        assert_close(&lse, &full_lse[(t - 1) * h..], 1e-5, 1e-5);
    }

    /// Samples that continue a shared prompt cache (a view in two pieces) get bit for bit
    /// what a copy of the prompt in one piece gives: decode rows on the row paths (D 64 is
    /// the AVX-512 kernel's where the CPU has it, D 8 the portable one's) and a run of
    /// rows on the tiles (past 32 keys).
    #[test]
    fn a_shared_prompt_piece_gives_what_a_copied_prompt_gives() {
        for (h, hkv, d) in [(9, 3, 64), (4, 2, 8)] {
            let kvd = hkv * d;
            let (prompt, own) = (37, [1usize, 6, 20]);
            let pk = randn(prompt * kvd, 30);
            let pv = randn(prompt * kvd, 31);
            let ks: Vec<Vec<f32>> = own.iter().map(|&n| randn(n * kvd, 32 + n as u64)).collect();
            let vs: Vec<Vec<f32>> = own.iter().map(|&n| randn(n * kvd, 52 + n as u64)).collect();
            let shared: Vec<KvView> = ks
                .iter()
                .zip(&vs)
                .map(|(k, v)| KvView {
                    prefix_k: &pk,
                    prefix_v: &pv,
                    k,
                    v,
                })
                .collect();
            let copies: Vec<(Vec<f32>, Vec<f32>)> = shared.iter().map(|c| c.joined()).collect();
            let copied: Vec<KvView> = copies.iter().map(|(k, v)| KvView::new(k, v)).collect();
            // Each sample's rows: all its own positions (one decode row for the first).
            let (mut row_seq, mut row_pos) = (vec![], vec![]);
            for (s, &n) in own.iter().enumerate() {
                row_seq.extend(std::iter::repeat_n(s, n));
                row_pos.extend(prompt..prompt + n);
            }
            let q = randn(row_seq.len() * h * d, 33);
            let run = |kv: &[KvView]| {
                let mut out = vec![f32::NAN; q.len()];
                let mut lse = vec![f32::NAN; row_seq.len() * h];
                attention_over_caches(
                    &mut out,
                    &mut lse,
                    &q,
                    kv,
                    &row_seq,
                    &row_pos,
                    dims(h, hkv, d),
                )
                .unwrap();
                (out, lse)
            };
            let (got, want) = (run(&shared), run(&copied));
            assert!(
                got.0.iter().all(|x| x.is_finite()),
                "D {d}: every output written"
            );
            assert_eq!(got, want, "D {d}");
        }
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
                .map(|r| {
                    KvView::new(
                        &k[r.start * kvd..r.end * kvd],
                        &v[r.start * kvd..r.end * kvd],
                    )
                })
                .collect();
            let (mut out, mut lse) = (vec![0.0; n * qd], vec![0.0; n * h]);
            attention_over_caches(
                &mut out,
                &mut lse,
                &q,
                &kv,
                &row_seq,
                &row_pos,
                dims(h, hkv, d),
            )
            .unwrap();
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
            )
            .unwrap();
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

    #[test]
    fn bad_shapes_are_errors_naming_the_op() {
        let err = |r: Result<()>| r.unwrap_err().to_string();
        let (h, hkv, d, t) = (4, 2, 8, 3);
        let (q, k, v) = (
            randn(t * h * d, 23),
            randn(t * hkv * d, 24),
            randn(t * hkv * d, 25),
        );
        let (mut out, mut lse) = (vec![0.0; t * h * d], vec![0.0; t * h]);
        let seqs = PackedSeqs::new(&[0..1, 1..t]);
        assert_eq!(
            err(attention_forward(
                &mut out,
                &mut lse,
                &q,
                &k,
                &v,
                &seqs,
                dims(3, 2, d)
            )),
            "attention_forward: 3 heads do not group over 2"
        );
        assert_eq!(
            err(attention_forward(
                &mut out,
                &mut lse[1..],
                &q,
                &k,
                &v,
                &seqs,
                dims(h, hkv, d)
            )),
            "attention_forward lse: a buffer of 11 elements, expected 12"
        );
        let cache = KvView::new(&k, &v);
        assert_eq!(
            err(attention_over_caches(
                &mut out[..h * d],
                &mut lse[..h],
                &q[..h * d],
                &[cache],
                &[0],
                &[t],
                dims(h, hkv, d)
            )),
            "attention_over_caches: row 0 at position 3 of a cache of 3 positions"
        );
        let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
        assert_eq!(
            err(attention_backward(
                &mut dq,
                &mut dk,
                &mut dv,
                &out,
                &q,
                &k,
                &v,
                &out,
                &lse,
                &[0..1, 2..3],
                dims(h, hkv, d)
            )),
            "attention_backward: sequence 1 at rows 2..3 does not follow row 1"
        );
    }
}
