//! The fused causal attention kernels (kernels/attention.cu) against their CPU twins on
//! fresh random inputs, in f32 and bf16: packed sequences of odd lengths spanning several
//! tiles, GQA ratios 1 to 8, every head dim with a kernel (bf16 at head dims 64 and 128 runs
//! the tensor-core forward and backward, everything else the scalar kernels). Skipped, with
//! the reason printed, where there is no GPU; scripts/gpu-check.sh sets TPO_REQUIRE_GPU,
//! where a skip fails.

mod common;

use common::gpu::*;
use half::bf16;
use std::ops::Range;
use tpo_engine::backend::cpu::attention::{attention_backward, attention_over_caches, KvView};
use tpo_engine::backend::cuda::attention::PackedSeqs;
use tpo_engine::backend::cuda::Gpu;
use tpo_engine::backend::settings::AttentionDims;

/// Relative tolerance of an element of type T against the f32 CPU result.
fn tol<T: Storage>() -> f32 {
    if T::SUFFIX == "bf16" {
        1.6e-2
    } else {
        1e-4
    }
}

/// Sequences of these lengths packed row after row: each row's sequence and position, each
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

/// One forward and backward against the CPU. q is passed as a view `pad` elements into a
/// larger buffer, as the model passes it: pad 5 leaves it unaligned (the tensor-core
/// backward then loads Q element by element), pad 8 keeps bf16 rows 16-byte aligned (its
/// cp.async path).
fn attention_case<T: Storage>(
    gpu: &Gpu,
    lens: &[usize],
    dims: AttentionDims,
    seed: u64,
    pad: usize,
) {
    let AttentionDims {
        n_head: h,
        n_kv_head: hkv,
        head_dim: d,
    } = dims;
    let what = format!(
        "attention {} {lens:?} H {h} Hkv {hkv} D {d} pad {pad}",
        std::any::type_name::<T>()
    );
    let (row_seq, row_pos, seqs) = pack(lens);
    let n = row_seq.len();
    let (qd, kvd) = (h * d, hkv * d);
    let round = round_to::<T>;
    // Queries scaled up so that the softmax is peaked somewhere, not flat everywhere.
    let q = round(random(n * qd, seed).iter().map(|x| 3.0 * x).collect());
    let k = round(random(n * kvd, seed + 1));
    let v = round(random(n * kvd, seed + 2));
    let dout = round(random(n * qd, seed + 3));

    let kv: Vec<KvView> = seqs
        .iter()
        .map(|r| {
            KvView::new(
                &k[r.start * kvd..r.end * kvd],
                &v[r.start * kvd..r.end * kvd],
            )
        })
        .collect();
    let (mut want, mut want_lse) = (vec![0.0; n * qd], vec![0.0; n * h]);
    attention_over_caches(&mut want, &mut want_lse, &q, &kv, &row_seq, &row_pos, dims).unwrap();

    let starts: Vec<i32> = std::iter::once(0)
        .chain(seqs.iter().map(|r| r.end as i32))
        .collect();
    let starts = gpu.stream.clone_htod(&starts).unwrap();
    let packed = PackedSeqs {
        starts: &starts,
        max_len: lens.iter().copied().max().unwrap_or(0),
    };
    // q and out as views into larger buffers, as the model passes them.
    let mut q_big = vec![0.5; pad];
    q_big.extend(&q);
    q_big.extend([0.5; 3]);
    let gq_big = upload::<T>(gpu, &q_big);
    let gq = gq_big.slice(pad..pad + n * qd);
    let (gk, gv) = (upload::<T>(gpu, &k), upload::<T>(gpu, &v));
    let mut out_big = nans::<T>(gpu, n * qd + 2 * pad);
    let mut lse = nans::<f32>(gpu, n * h);
    gpu.attention_forward(
        &mut out_big.slice_mut(pad..pad + n * qd),
        &mut lse,
        &gq,
        &gk,
        &gv,
        &packed,
        dims,
    )
    .unwrap();
    let out_all = download(gpu, &out_big);
    assert!(
        out_all[..pad]
            .iter()
            .chain(&out_all[pad + n * qd..])
            .all(|x| x.is_nan()),
        "{what}: forward wrote outside its view"
    );
    let out = out_all[pad..pad + n * qd].to_vec();
    assert_close(&format!("{what} out"), &out, &want, tol::<T>());
    let lse_got = gpu.stream.clone_dtoh(&lse).unwrap();
    assert_close(&format!("{what} lse"), &lse_got, &want_lse, 1e-4);

    // The backward from the GPU's own out and lse, on both sides, so that the comparison
    // sees the same inputs (the bf16 out is rounded).
    let (mut want_dq, mut want_dk, mut want_dv) =
        (vec![0.0; n * qd], vec![0.0; n * kvd], vec![0.0; n * kvd]);
    attention_backward(
        &mut want_dq,
        &mut want_dk,
        &mut want_dv,
        &dout,
        &q,
        &k,
        &v,
        &out,
        &lse_got,
        &seqs,
        dims,
    )
    .unwrap();
    let gout = upload::<T>(gpu, &out);
    let mut dq = nans::<T>(gpu, n * qd);
    let (mut dk, mut dv) = (nans::<T>(gpu, n * kvd), nans::<T>(gpu, n * kvd));
    gpu.attention_backward(
        &mut dq,
        &mut dk,
        &mut dv,
        &upload::<T>(gpu, &dout),
        &gq,
        &gk,
        &gv,
        &gout,
        &lse,
        &packed,
        dims,
    )
    .unwrap();
    let tol = 2.0 * tol::<T>();
    assert_close(&format!("{what} dq"), &download(gpu, &dq), &want_dq, tol);
    assert_close(&format!("{what} dk"), &download(gpu, &dk), &want_dk, tol);
    assert_close(&format!("{what} dv"), &download(gpu, &dv), &want_dv, tol);
}

fn dims(n_head: usize, n_kv_head: usize, head_dim: usize) -> AttentionDims {
    AttentionDims {
        n_head,
        n_kv_head,
        head_dim,
    }
}

#[test]
fn attention_matches_its_cpu_twin_on_packed_sequences() {
    let Some(gpu) = gpu() else { return };
    // One row, short, across a tile boundary, several tiles; the forward's query tiles are
    // 64 rows, the backward's key and query tiles 32.
    let lens = [1, 7, 33, 70];
    // GQA ratios 1, 2, 4 and a single kv head, at head dims 16, 64, 128 and the small ones.
    let cases = [
        dims(2, 2, 16),
        dims(4, 2, 64),
        dims(8, 2, 128),
        dims(4, 1, 16),
        dims(3, 1, 128),
        dims(4, 4, 64),
        dims(2, 1, 4),
        dims(2, 2, 8),
        dims(4, 2, 32),
        dims(2, 1, 96),
    ];
    for (i, &dims) in cases.iter().enumerate() {
        let seed = 100 + 10 * i as u64;
        attention_case::<f32>(&gpu, &lens, dims, seed, 5);
        attention_case::<bf16>(&gpu, &lens, dims, seed, 5);
    }
}

#[test]
fn attention_over_long_sequences_matches_its_cpu_twin() {
    let Some(gpu) = gpu() else { return };
    // Many tiles each way, a tile-exact length, and sequences in no particular order.
    let lens = [300, 64, 1, 129];
    for (i, dims) in [dims(4, 2, 128), dims(8, 8, 64)].into_iter().enumerate() {
        attention_case::<f32>(&gpu, &lens, dims, 500 + 10 * i as u64, 5);
        attention_case::<bf16>(&gpu, &lens, dims, 500 + 10 * i as u64, 5);
    }
}

/// The bf16 kernels on tensor cores (head dims 64 and 128; the backward's key and query
/// tiles are 64): lengths just under, at and over multiples of 64 (partial key tiles, a
/// last query tile of one row), GQA ratios 1, 2, 4 and 8, Q both 16-byte aligned and not.
#[test]
fn tensor_core_attention_matches_its_cpu_twin_at_tile_edges() {
    let Some(gpu) = gpu() else { return };
    let lens = [63, 64, 65, 1, 127, 129, 2, 192, 257];
    let cases = [
        dims(4, 4, 64),
        dims(4, 2, 128),
        dims(8, 2, 64),
        dims(8, 1, 128),
        dims(2, 2, 128),
        dims(6, 3, 64),
    ];
    for (i, &dims) in cases.iter().enumerate() {
        let seed = 700 + 10 * i as u64;
        attention_case::<bf16>(&gpu, &lens, dims, seed, 8);
        attention_case::<bf16>(&gpu, &lens, dims, seed + 1, 5);
    }
    // A single sequence of one tile and one of one row.
    attention_case::<bf16>(&gpu, &[64], dims(2, 1, 128), 790, 8);
    attention_case::<bf16>(&gpu, &[1], dims(2, 1, 64), 791, 8);
}

/// Many sequences of mixed lengths in one batch (the grid's sequence index is the fastest
/// one), on the tensor-core kernels and, at D 96, the scalar ones.
#[test]
fn attention_over_many_sequences_matches_its_cpu_twin() {
    let Some(gpu) = gpu() else { return };
    // 48 lengths from 1 to 200, a fixed spread (no two neighbours alike).
    let lens: Vec<usize> = (0..48).map(|i| 1 + (i * 37 + i * i * 11) % 200).collect();
    attention_case::<bf16>(&gpu, &lens, dims(4, 2, 128), 900, 8);
    attention_case::<bf16>(&gpu, &lens, dims(8, 2, 64), 910, 8);
    attention_case::<bf16>(&gpu, &lens, dims(4, 1, 96), 920, 8);
    attention_case::<f32>(&gpu, &lens, dims(4, 2, 64), 930, 8);
}

#[test]
fn attention_rejects_what_it_cannot_compute() {
    let Some(gpu) = gpu() else { return };
    let starts = gpu.stream.clone_htod(&[0i32, 3]).unwrap();
    let seqs = PackedSeqs {
        starts: &starts,
        max_len: 3,
    };
    let call = |dims: AttentionDims, n: usize| {
        let mut out = nans::<f32>(&gpu, n * dims.n_head * dims.head_dim);
        let mut lse = nans::<f32>(&gpu, n * dims.n_head);
        let q = upload::<f32>(&gpu, &random(n * dims.n_head * dims.head_dim, 1));
        let kv = upload::<f32>(&gpu, &random(n * dims.n_kv_head * dims.head_dim, 2));
        gpu.attention_forward(&mut out, &mut lse, &q, &kv, &kv, &seqs, dims)
    };
    assert!(call(dims(2, 1, 16), 3).is_ok());
    let err = call(dims(2, 1, 12), 3).unwrap_err().to_string();
    assert!(err.contains("head dim 12"), "{err}");
    assert!(call(dims(3, 2, 16), 3).is_err(), "heads that do not group");
    // max_len larger than the batch: the offsets cannot be right.
    let wrong = PackedSeqs {
        starts: &starts,
        max_len: 4,
    };
    let mut out = nans::<f32>(&gpu, 3 * 16);
    let mut lse = nans::<f32>(&gpu, 3);
    let q = upload::<f32>(&gpu, &random(3 * 16, 3));
    assert!(gpu
        .attention_forward(&mut out, &mut lse, &q, &q, &q, &wrong, dims(1, 1, 16))
        .is_err());
    // An empty batch is nothing to do.
    let empty = gpu.stream.clone_htod(&[0i32]).unwrap();
    let none = PackedSeqs {
        starts: &empty,
        max_len: 0,
    };
    // (Empty views: the driver allocates no zero-byte buffers.)
    let (mut out, mut lse) = (nans::<f32>(&gpu, 1), nans::<f32>(&gpu, 1));
    let z = nans::<f32>(&gpu, 1);
    let z = z.slice(0..0);
    assert!(gpu
        .attention_forward(
            &mut out.slice_mut(0..0),
            &mut lse.slice_mut(0..0),
            &z,
            &z,
            &z,
            &none,
            dims(2, 1, 16)
        )
        .is_ok());
}
