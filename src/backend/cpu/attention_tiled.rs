//! The tiled path of causal attention, for sequences with many query rows (prefill and
//! training): flash attention's algorithm on the CPU. A tile of consecutive query positions,
//! times the query heads that share one key/value head, is one matrix of rows; its scores
//! against every key the tile can see, and every product of the backward, are single-threaded
//! GEMMs. A task owns its tile (forward) or its (sequence, kv head) (backward), so nothing is
//! shared, and every sum runs in an order fixed by the sequence's own shape: the result does
//! not depend on the other sequences in the batch or on the thread count.
//!
//! Shapes: a tile holds R positions and M = R * group stacked rows, row m = position m / group,
//! query head m % group of the kv head; its K keys are those its last position sees.

use super::attention_rows::{scale, GroupOut, KvView};
use super::math::{dot, exp, max, sum};
use crate::backend::settings::AttentionDims;
use gemm::Parallelism;
use std::ops::Range;

/// Stacked rows (positions x grouped query heads) of a tile: big enough for the GEMMs to run
/// near their peak, small enough that the causal mask wastes little of the last block of
/// keys and that (M, K) scores stay in cache. Forward/backward of the 8 x 256 training
/// benchmark on 2 cores: 4.7/7.8 ms at 64 rows, 4.0/7.2 ms at 128, 4.2/8.8 ms at 256.
const TILE_ROWS: usize = 128;

/// Query positions per tile for `group` query heads per kv head.
pub(super) fn tile_positions(group: usize) -> usize {
    (TILE_ROWS / group).max(1)
}

/// Buffers of a forward tile, reused across the tiles a thread runs.
#[derive(Default)]
pub(super) struct ForwardScratch {
    /// (M, D) the tile's queries, stacked.
    q: Vec<f32>,
    /// (M, K) scores, then unnormalized softmax weights.
    s: Vec<f32>,
    /// (M) each row's softmax normalizer.
    z: Vec<f32>,
    /// (M, D) unnormalized outputs.
    o: Vec<f32>,
}

/// Causal attention of the query rows `rows` of q (N, H, D), consecutive positions of one
/// sequence from `first_pos` on, for the query heads of kv head `g` over the sequence's
/// cache. dst[i] receives row rows.start + i's outputs and lse.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward_tile(
    dst: &mut [GroupOut],
    q: &[f32],
    rows: Range<usize>,
    first_pos: usize,
    cache: KvView,
    g: usize,
    dims: AttentionDims,
    scratch: &mut ForwardScratch,
) {
    let AttentionDims {
        n_head,
        n_kv_head,
        head_dim: d,
    } = dims;
    let group = n_head / n_kv_head;
    let (m, keys) = (rows.len() * group, first_pos + rows.len());
    let kv_stride = n_kv_head * d;
    assert_eq!(dst.len(), rows.len(), "one destination per row");
    assert!(
        cache.k.len() >= keys * kv_stride && cache.v.len() >= keys * kv_stride,
        "cache shorter than the rows' positions"
    );
    let ForwardScratch { q: qt, s, z, o } = scratch;
    gather_heads(qt, q, n_head, rows, g * group, group, d);
    // (K, D): the kv head inside the cache's (T, Hkv, D) rows.
    let k = Mat::new(&cache.k[g * d..], kv_stride, 1);
    let v = Mat::new(&cache.v[g * d..], kv_stride, 1);
    s.resize(m * keys, 0.0);
    gemm(s, false, scale(d), Mat::new(qt, d, 1), k.t(), (m, keys, d));
    z.clear();
    for (i, s) in s.chunks_exact_mut(keys).enumerate() {
        let (seen, unseen) = s.split_at_mut(first_pos + i / group + 1);
        unseen.fill(0.0);
        let top = max(seen);
        for x in seen.iter_mut() {
            *x = exp(*x - top);
        }
        z.push(sum(seen));
        dst[i / group].lse[i % group] = top + z[i].ln();
    }
    o.resize(m * d, 0.0);
    gemm(o, false, 1.0, Mat::new(s, keys, 1), v, (m, d, keys));
    for ((out, o), z) in dst
        .iter_mut()
        .flat_map(|dst| dst.out.chunks_exact_mut(d))
        .zip(o.chunks_exact(d))
        .zip(z.iter())
    {
        for (out, o) in out.iter_mut().zip(o) {
            *out = o / z;
        }
    }
}

/// One (sequence, kv head) task of the backward: the gradient rows it writes, each row's
/// block of the sequence's rows in order.
pub(super) struct BackwardTask<'a> {
    /// The sequence's rows of the packed (N, ...) tensors.
    pub rows: Range<usize>,
    /// The kv head.
    pub g: usize,
    /// (group, D) per row: the query heads of kv head g.
    pub dq: Vec<&'a mut [f32]>,
    /// (D) per row.
    pub dk: Vec<&'a mut [f32]>,
    /// (D) per row.
    pub dv: Vec<&'a mut [f32]>,
}

/// The backward of one (sequence, kv head) over the whole sequence (positions 0..T), one
/// query tile after another; dq/dk/dv assigned. Shapes as in `attention_backward`.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_task(
    task: BackwardTask,
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    dims: AttentionDims,
) {
    let AttentionDims {
        n_head,
        n_kv_head,
        head_dim: d,
    } = dims;
    let group = n_head / n_kv_head;
    let BackwardTask { rows, g, .. } = task;
    let (r0, t) = (rows.start, rows.len());
    for (x, width) in [(&task.dq, group * d), (&task.dk, d), (&task.dv, d)] {
        assert_eq!(x.len(), t, "one gradient block per row");
        assert!(x.iter().all(|x| x.len() == width), "gradient block shape");
    }
    let h0 = g * group;
    let scale = scale(d);
    // (T * group, D) each: the sequence's rows of the task's query heads, stacked.
    let (mut qs, mut douts) = (Vec::new(), Vec::new());
    gather_heads(&mut qs, q, n_head, rows.clone(), h0, group, d);
    gather_heads(&mut douts, dout, n_head, rows.clone(), h0, group, d);
    // (T * group) each: lse and delta_i = dout_i . out_i of the stacked rows.
    let (mut lses, mut deltas) = (Vec::new(), Vec::new());
    gather_heads(&mut lses, lse, n_head, rows.clone(), h0, group, 1);
    for r in rows.clone() {
        for h in h0..h0 + group {
            let at = (r * n_head + h) * d;
            deltas.push(dot(&dout[at..at + d], &out[at..at + d]));
        }
    }
    // (T, D) each: the kv head inside the (N, Hkv, D) rows, and its gradients.
    let kv_stride = n_kv_head * d;
    let kh = Mat::new(&k[r0 * kv_stride + g * d..], kv_stride, 1);
    let vh = Mat::new(&v[r0 * kv_stride + g * d..], kv_stride, 1);
    let (mut dk, mut dv) = (vec![0.0f32; t * d], vec![0.0f32; t * d]);
    // (M, K) the tile's softmax weights P and dS; (M, D) its dq.
    let (mut p, mut ds, mut dq) = (Vec::new(), Vec::new(), Vec::new());
    let mut dq_rows = task.dq;
    for p0 in (0..t).step_by(tile_positions(group)) {
        let keys = (p0 + tile_positions(group)).min(t);
        let (m0, m) = (p0 * group, (keys - p0) * group);
        let qt = Mat::new(&qs[m0 * d..], d, 1);
        let dout_t = Mat::new(&douts[m0 * d..], d, 1);
        p.resize(m * keys, 0.0);
        ds.resize(m * keys, 0.0);
        gemm(&mut p, false, scale, qt, kh.t(), (m, keys, d));
        gemm(&mut ds, false, 1.0, dout_t, vh.t(), (m, keys, d));
        for (i, (p, ds)) in p
            .chunks_exact_mut(keys)
            .zip(ds.chunks_exact_mut(keys))
            .enumerate()
        {
            // Flash attention's recomputation: P_ij = exp(scale q_i.k_j - lse_i), and the
            // softmax's backward dS_ij = P_ij (dout_i.v_j - delta_i).
            let seen = p0 + i / group + 1;
            let (lse, delta) = (lses[m0 + i], deltas[m0 + i]);
            for x in &mut p[..seen] {
                *x = exp(*x - lse);
            }
            p[seen..].fill(0.0);
            for (ds, p) in ds.iter_mut().zip(p.iter()) {
                *ds = p * (*ds - delta);
            }
        }
        // dq = scale dS K; dk += scale dS^T Q; dv += P^T dout.
        dq.resize(m * d, 0.0);
        gemm(
            &mut dq,
            false,
            scale,
            Mat::new(&ds, keys, 1),
            kh,
            (m, d, keys),
        );
        let ds_t = Mat::new(&ds, keys, 1).t();
        gemm(&mut dk[..keys * d], true, scale, ds_t, qt, (keys, d, m));
        let pt = Mat::new(&p, keys, 1).t();
        gemm(&mut dv[..keys * d], true, 1.0, pt, dout_t, (keys, d, m));
        for (dst, dq) in dq_rows[p0..keys].iter_mut().zip(dq.chunks_exact(group * d)) {
            dst.copy_from_slice(dq);
        }
    }
    for (dst, src) in task.dk.into_iter().zip(dk.chunks_exact(d)) {
        dst.copy_from_slice(src);
    }
    for (dst, src) in task.dv.into_iter().zip(dv.chunks_exact(d)) {
        dst.copy_from_slice(src);
    }
}

/// Into `buf`, (rows, count, D): heads h0..h0 + count of `rows` of x (N, heads, D). The heads
/// are adjacent, so each row is one copy.
fn gather_heads(
    buf: &mut Vec<f32>,
    x: &[f32],
    heads: usize,
    rows: Range<usize>,
    h0: usize,
    count: usize,
    d: usize,
) {
    buf.clear();
    for r in rows {
        buf.extend_from_slice(&x[(r * heads + h0) * d..][..count * d]);
    }
}

/// A strided matrix: element (i, j) at data[i * rs + j * cs].
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    fn new(data: &'a [f32], rs: usize, cs: usize) -> Mat<'a> {
        Mat { data, rs, cs }
    }

    /// The transpose: the same elements, strides swapped.
    fn t(self) -> Mat<'a> {
        Mat::new(self.data, self.cs, self.rs)
    }

    /// Whether every element of a (rows, cols) matrix lies in data.
    fn holds(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// dst (m, n) row-major = beta * lhs (m, k) @ rhs (k, n), added to dst when `accumulate`:
/// one single-threaded gemm call, as the tasks are the parallelism.
fn gemm(
    dst: &mut [f32],
    accumulate: bool,
    beta: f32,
    lhs: Mat,
    rhs: Mat,
    (m, n, k): (usize, usize, usize),
) {
    assert!(dst.len() >= m * n, "gemm dst shape");
    assert!(lhs.holds(m, k) && rhs.holds(k, n), "gemm operand shapes");
    // SAFETY: the asserts keep every element gemm touches inside the three slices, and the
    // exclusive borrow of dst keeps anyone else from it.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            beta,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::attention::{attend_row, attention_backward, attention_over_caches};
    use super::*;
    use crate::backend::cpu::testutil::{
        assert_close, naive_attention, naive_attention_backward, pack, randn, to_f64, GRAD_TOL,
    };

    /// (H, Hkv) of GQA ratios 1, 2 and 4.
    const HEADS: [(usize, usize); 3] = [(4, 4), (4, 2), (8, 2)];
    const D: usize = 8;

    /// Sequences of random q/k/v, each from its own seed, packed row after row.
    struct Batch {
        dims: AttentionDims,
        seqs: Vec<Range<usize>>,
        row_seq: Vec<usize>,
        row_pos: Vec<usize>,
        /// (N, H, D)
        q: Vec<f32>,
        /// (N, Hkv, D) each.
        k: Vec<f32>,
        v: Vec<f32>,
        /// (N, H, D)
        dout: Vec<f32>,
    }

    /// Outputs of the forward and gradients of the backward over a batch.
    #[derive(PartialEq)]
    struct Results {
        out: Vec<f32>,
        lse: Vec<f32>,
        dq: Vec<f32>,
        dk: Vec<f32>,
        dv: Vec<f32>,
    }

    impl Batch {
        /// `seqs` of (length, seed).
        fn new(seqs: &[(usize, u64)], n_head: usize, n_kv_head: usize) -> Batch {
            let lens: Vec<usize> = seqs.iter().map(|s| s.0).collect();
            let (row_seq, row_pos, ranges) = pack(&lens);
            let data = |width: usize, salt: u64| -> Vec<f32> {
                seqs.iter()
                    .flat_map(|&(t, seed)| randn(t * width, 4 * seed + salt))
                    .collect()
            };
            Batch {
                dims: AttentionDims {
                    n_head,
                    n_kv_head,
                    head_dim: D,
                },
                seqs: ranges,
                row_seq,
                row_pos,
                q: data(n_head * D, 0),
                k: data(n_kv_head * D, 1),
                v: data(n_kv_head * D, 2),
                dout: data(n_head * D, 3),
            }
        }

        fn run(&self) -> Results {
            let (n, qd) = (self.row_seq.len(), self.dims.n_head * D);
            let kvd = self.dims.n_kv_head * D;
            let kv: Vec<KvView> = self
                .seqs
                .iter()
                .map(|r| {
                    KvView::new(
                        &self.k[r.start * kvd..r.end * kvd],
                        &self.v[r.start * kvd..r.end * kvd],
                    )
                })
                .collect();
            let (mut out, mut lse) = (vec![f32::NAN; n * qd], vec![f32::NAN; n * qd / D]);
            attention_over_caches(
                &mut out,
                &mut lse,
                &self.q,
                &kv,
                &self.row_seq,
                &self.row_pos,
                self.dims,
            )
            .unwrap();
            let mut dq = vec![f32::NAN; n * qd];
            let (mut dk, mut dv) = (vec![f32::NAN; n * kvd], vec![f32::NAN; n * kvd]);
            attention_backward(
                &mut dq, &mut dk, &mut dv, &self.dout, &self.q, &self.k, &self.v, &out, &lse,
                &self.seqs, self.dims,
            )
            .unwrap();
            Results {
                out,
                lse,
                dq,
                dk,
                dv,
            }
        }
    }

    /// Sequences of 1, tile - 1, tile + 1 and 3 tiles + 5 positions (all but the first on the
    /// tiled path of the forward, all on it in the backward) against the f64 reference.
    #[test]
    fn forward_and_backward_match_f64_at_tile_boundaries() {
        for (h, hkv) in HEADS {
            let tile = tile_positions(h / hkv);
            let lens = [1, tile - 1, tile + 1, 3 * tile + 5];
            let seqs: Vec<(usize, u64)> = lens.iter().map(|&t| (t, t as u64)).collect();
            let batch = Batch::new(&seqs, h, hkv);
            let got = batch.run();
            let (qd, kvd) = (h * D, hkv * D);
            for (r, &t) in batch.seqs.iter().zip(&lens) {
                let (qs, ks) = (r.start * qd..r.end * qd, r.start * kvd..r.end * kvd);
                let (q, k) = (to_f64(&batch.q[qs.clone()]), to_f64(&batch.k[ks.clone()]));
                let v = to_f64(&batch.v[ks.clone()]);
                let (out, lse) = naive_attention(&q, &k, &v, t, h, hkv, D);
                let dout = to_f64(&batch.dout[qs.clone()]);
                let (dq, dk, dv) = naive_attention_backward(&dout, &q, &k, &v, t, h, hkv, D);
                assert_close(&got.out[qs.clone()], &out, 1e-5, 1e-5);
                assert_close(&got.lse[r.start * h..r.end * h], &lse, 1e-5, 1e-5);
                assert_close(&got.dq[qs], &dq, GRAD_TOL, GRAD_TOL);
                assert_close(&got.dk[ks.clone()], &dk, GRAD_TOL, GRAD_TOL);
                assert_close(&got.dv[ks], &dv, GRAD_TOL, GRAD_TOL);
            }
        }
    }

    /// A prefill that continues a cache, its tiles starting mid-sequence, against each row
    /// alone (a decode step: row by row over a short cache, in a tile of one position over a
    /// long one) and against the row-by-row path at every position.
    #[test]
    fn tiled_prefill_over_a_cache_agrees_with_each_row_alone_and_row_by_row() {
        for (h, hkv) in HEADS {
            let t = 2 * tile_positions(h / hkv) + 9;
            let (kvd, qd) = (hkv * D, h * D);
            let (k, v) = (randn(t * kvd, 61), randn(t * kvd, 62));
            let cache = KvView::new(&k, &v);
            let first = 7;
            let rows = t - first;
            let q = randn(rows * qd, 63);
            let dims = AttentionDims {
                n_head: h,
                n_kv_head: hkv,
                head_dim: D,
            };
            let (mut out, mut lse) = (vec![0.0; rows * qd], vec![0.0; rows * h]);
            let positions: Vec<usize> = (first..t).collect();
            let row_seq = vec![0; rows];
            attention_over_caches(&mut out, &mut lse, &q, &[cache], &row_seq, &positions, dims)
                .unwrap();
            let mut scores = Vec::new();
            for (i, pos) in positions.into_iter().enumerate() {
                let qi = &q[i * qd..(i + 1) * qd];
                let (mut alone, mut alone_lse) = (vec![0.0; qd], vec![0.0; h]);
                attention_over_caches(&mut alone, &mut alone_lse, qi, &[cache], &[0], &[pos], dims)
                    .unwrap();
                let (mut by_row, mut by_row_lse) = (vec![0.0; qd], vec![0.0; h]);
                let group = h / hkv;
                let blocks = by_row
                    .chunks_exact_mut(group * D)
                    .zip(by_row_lse.chunks_exact_mut(group));
                for (g, (out, lse)) in blocks.enumerate() {
                    let dst = GroupOut { out, lse };
                    attend_row(dst, qi, 0, pos + 1, cache, g, dims, &mut scores);
                }
                for (want, want_lse) in [(&alone, &alone_lse), (&by_row, &by_row_lse)] {
                    assert_close(&out[i * qd..(i + 1) * qd], &to_f64(want), 1e-5, 1e-5);
                    assert_close(&lse[i * h..(i + 1) * h], &to_f64(want_lse), 1e-5, 1e-5);
                }
            }
        }
    }

    /// Bitwise: a sequence's outputs and gradients alone, or batched with others, on 1, 2
    /// or 3 threads.
    #[test]
    fn a_sequences_results_do_not_depend_on_its_batch_or_the_thread_count() {
        let (h, hkv) = (4, 2);
        let long = (tile_positions(2) + 3, 1);
        let others = [(40, 2), (3, 3), (2 * tile_positions(2), 4)];
        let on_threads = |threads: usize, seqs: &[(usize, u64)]| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| Batch::new(seqs, h, hkv).run())
        };
        let alone = on_threads(1, &[long]);
        for threads in [1, 2, 3] {
            let got = on_threads(threads, &[others[0], long, others[1], others[2]]);
            let r = others[0].0..others[0].0 + long.0;
            let (qd, kvd) = (h * D, hkv * D);
            let (qs, ks) = (r.start * qd..r.end * qd, r.start * kvd..r.end * kvd);
            let within = Results {
                out: got.out[qs.clone()].to_vec(),
                lse: got.lse[r.start * h..r.end * h].to_vec(),
                dq: got.dq[qs].to_vec(),
                dk: got.dk[ks.clone()].to_vec(),
                dv: got.dv[ks].to_vec(),
            };
            assert!(within == alone, "batched on {threads} threads");
            assert!(
                on_threads(threads, &[long]) == alone,
                "alone on {threads} threads"
            );
        }
    }
}
