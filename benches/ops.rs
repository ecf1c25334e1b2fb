//! Each CPU op at the shapes of the benchmark model (the `tiny` defaults: Llama, C=256,
//! 4 layers, H=8, Hkv=4, D=32, I=688, V=8192), for a decode step of 32 sequences and for
//! a prefill, and the matrix products' and attention's forward and backward for a training
//! batch. Matrix
//! products and attention report FLOP/s (criterion's "elem/s"); the
//! element-wise ops report the bytes they read and write.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;
use tpo_engine::backend::cpu::attention::{attention_backward, attention_over_caches, KvView};
use tpo_engine::backend::cpu::matmul::{matmul_backward, matmul_forward};
use tpo_engine::backend::cpu::rmsnorm::rmsnorm_forward;
use tpo_engine::backend::cpu::rope::rope_forward;
use tpo_engine::backend::cpu::swiglu::swiglu_row_forward;
use tpo_engine::backend::rng::Rng;
use tpo_engine::backend::rope_table::{inv_frequencies, RopeScaling, RopeTable};
use tpo_engine::backend::settings::AttentionDims;

const C: usize = 256;
const N_HEAD: usize = 8;
const N_KV_HEAD: usize = 4;
const HEAD_DIM: usize = 32;
const INTERMEDIATE: usize = 688;
const VOCAB: usize = 8192;
/// Sequences decoded at once: one row each in a decode step.
const DECODE_ROWS: usize = 32;
const PREFILL_ROWS: usize = 128;
/// Tokens of a training batch.
const TRAIN_ROWS: usize = 2048;
/// A training batch of TRAIN_ROWS: sequences of this many tokens.
const TRAIN_SEQ_LEN: usize = 256;

const F32: u64 = std::mem::size_of::<f32>() as u64;

fn randn(n: usize, scale: f32, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| scale * rng.normal()).collect()
}

fn matmul(c: &mut Criterion) {
    let mut group = c.benchmark_group("matmul_forward");
    let shapes = [
        ("decode_q_proj", DECODE_ROWS, C, N_HEAD * HEAD_DIM),
        ("decode_gate_proj", DECODE_ROWS, C, INTERMEDIATE),
        ("decode_down_proj", DECODE_ROWS, INTERMEDIATE, C),
        ("decode_lm_head", DECODE_ROWS, C, VOCAB),
        ("prefill_q_proj", PREFILL_ROWS, C, N_HEAD * HEAD_DIM),
        ("prefill_lm_head", PREFILL_ROWS, C, VOCAB),
        ("train_gate_up_proj", TRAIN_ROWS, C, 2 * INTERMEDIATE),
        ("train_lm_head", TRAIN_ROWS, C, VOCAB),
    ];
    for (name, n, ic, oc) in shapes {
        let inp = randn(n * ic, 1.0, 1);
        let weight = randn(oc * ic, 0.02, 2);
        let mut out = vec![0.0f32; n * oc];
        group.throughput(Throughput::Elements((2 * n * ic * oc) as u64));
        group.bench_function(BenchmarkId::new(name, format!("{n}x{ic}x{oc}")), |b| {
            b.iter(|| {
                matmul_forward(
                    black_box(&mut out),
                    black_box(&inp),
                    black_box(&weight),
                    None,
                    n,
                    ic,
                    oc,
                )
                .unwrap()
            })
        });
    }
    group.finish();
}

/// The products of one training layer and the head, q, k and v fused as are gate and up.
fn matmul_train_backward(c: &mut Criterion) {
    let mut group = c.benchmark_group("matmul_backward");
    let n = TRAIN_ROWS;
    let kv_dim = N_KV_HEAD * HEAD_DIM;
    let shapes = [
        ("qkv_proj", C, N_HEAD * HEAD_DIM + 2 * kv_dim),
        ("o_proj", N_HEAD * HEAD_DIM, C),
        ("gate_up_proj", C, 2 * INTERMEDIATE),
        ("down_proj", INTERMEDIATE, C),
        ("lm_head", C, VOCAB),
    ];
    for (name, ic, oc) in shapes {
        let inp = randn(n * ic, 1.0, 1);
        let weight = randn(oc * ic, 0.02, 2);
        let dout = randn(n * oc, 1.0, 3);
        let mut dinp = vec![0.0f32; n * ic];
        let mut dweight = vec![0.0f32; oc * ic];
        // dinp = dout @ weight and dweight += dout^T @ inp: twice the forward's FLOPs.
        group.throughput(Throughput::Elements((4 * n * ic * oc) as u64));
        group.bench_function(BenchmarkId::new(name, format!("{n}x{ic}x{oc}")), |b| {
            b.iter(|| {
                matmul_backward(
                    black_box(&mut dinp),
                    black_box(&mut dweight),
                    None,
                    black_box(&dout),
                    black_box(&inp),
                    black_box(&weight),
                    n,
                    ic,
                    oc,
                )
                .unwrap()
            })
        });
    }
    group.finish();
}

fn rmsnorm(c: &mut Criterion) {
    let mut group = c.benchmark_group("rmsnorm_forward");
    let weight = randn(C, 1.0, 3);
    for n in [DECODE_ROWS, PREFILL_ROWS] {
        let inp = randn(n * C, 1.0, 4);
        let mut out = vec![0.0f32; n * C];
        // Reads the rows and the weight, writes the rows.
        group.throughput(Throughput::Bytes(F32 * (2 * n * C + C) as u64));
        group.bench_function(BenchmarkId::from_parameter(format!("{n}x{C}")), |b| {
            b.iter(|| {
                rmsnorm_forward(black_box(&mut out), black_box(&inp), &weight, 1e-5, C).unwrap()
            })
        });
    }
    group.finish();
}

fn rope(c: &mut Criterion) {
    let mut group = c.benchmark_group("rope_forward");
    let n = DECODE_ROWS;
    // Decode rows of sequences at different depths.
    let positions: Vec<usize> = (0..n).map(|i| 32 + 7 * i).collect();
    let inv_freq = inv_frequencies(HEAD_DIM, 10000.0, &RopeScaling::None);
    let table = RopeTable::for_positions(&inv_freq, &positions);
    // Rotating in place keeps the norms, so the values stay finite however often it runs.
    let mut x = randn(n * N_HEAD * HEAD_DIM, 1.0, 5);
    // Reads and writes x, reads one cos and one sin row per position.
    group.throughput(Throughput::Bytes(
        F32 * (2 * n * N_HEAD * HEAD_DIM + n * HEAD_DIM) as u64,
    ));
    group.bench_function(
        BenchmarkId::from_parameter(format!("{n}x{N_HEAD}x{HEAD_DIM}")),
        |b| b.iter(|| rope_forward(black_box(&mut x), &table, N_HEAD).unwrap()),
    );
    group.finish();
}

fn swiglu(c: &mut Criterion) {
    let mut group = c.benchmark_group("swiglu_forward");
    let n = DECODE_ROWS;
    let gate = randn(n * INTERMEDIATE, 1.0, 6);
    let up = randn(n * INTERMEDIATE, 1.0, 7);
    let mut out = vec![0.0f32; n * INTERMEDIATE];
    // Reads gate and up, writes out.
    group.throughput(Throughput::Bytes(F32 * (3 * n * INTERMEDIATE) as u64));
    group.bench_function(
        BenchmarkId::from_parameter(format!("{n}x{INTERMEDIATE}")),
        |b| {
            b.iter(|| {
                swiglu_row_forward(black_box(&mut out), black_box(&gate), black_box(&up)).unwrap()
            })
        },
    );
    group.finish();
}

/// A packed attention batch: `rows_per_seq` query rows at the end of each of `seqs`
/// caches of `cache_len` positions (the rows' own keys/values included, as in the model).
struct AttentionCase {
    dims: AttentionDims,
    q: Vec<f32>,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    row_seq: Vec<usize>,
    row_pos: Vec<usize>,
}

impl AttentionCase {
    fn new(
        dims: AttentionDims,
        seqs: usize,
        cache_len: usize,
        rows_per_seq: usize,
    ) -> AttentionCase {
        let kvd = dims.n_kv_head * dims.head_dim;
        let n = seqs * rows_per_seq;
        let (mut row_seq, mut row_pos) = (vec![], vec![]);
        for s in 0..seqs {
            row_seq.extend(std::iter::repeat_n(s, rows_per_seq));
            row_pos.extend(cache_len - rows_per_seq..cache_len);
        }
        AttentionCase {
            dims,
            q: randn(n * dims.n_head * dims.head_dim, 1.0, 8),
            k: (0..seqs)
                .map(|s| randn(cache_len * kvd, 1.0, 100 + s as u64))
                .collect(),
            v: (0..seqs)
                .map(|s| randn(cache_len * kvd, 1.0, 200 + s as u64))
                .collect(),
            row_seq,
            row_pos,
        }
    }

    /// Multiply-adds of q.k and of the weighted sum of v, two FLOPs each.
    fn flops(&self) -> u64 {
        let per_key = 2 * 2 * self.dims.head_dim * self.dims.n_head;
        self.row_pos
            .iter()
            .map(|&p| (p + 1) * per_key)
            .sum::<usize>() as u64
    }
}

fn attention(c: &mut Criterion) {
    let mut group = c.benchmark_group("attention_over_caches");
    let dims = AttentionDims {
        n_head: N_HEAD,
        n_kv_head: N_KV_HEAD,
        head_dim: HEAD_DIM,
    };
    // The 135m shape's heads: 9 query heads over 3 kv heads of 64.
    let dims_135m = AttentionDims {
        n_head: 9,
        n_kv_head: 3,
        head_dim: 64,
    };
    let cases = [
        (
            "decode",
            "32seq_cache96",
            AttentionCase::new(dims, 32, 96, 1),
        ),
        (
            "prefill",
            "4seq_x32rows",
            AttentionCase::new(dims, 4, 32, 32),
        ),
        (
            "decode_135m",
            "64seq_cache40",
            AttentionCase::new(dims_135m, 64, 40, 1),
        ),
        (
            "decode_135m",
            "64seq_cache96",
            AttentionCase::new(dims_135m, 64, 96, 1),
        ),
        (
            "decode_135m",
            "64seq_cache160",
            AttentionCase::new(dims_135m, 64, 160, 1),
        ),
    ];
    for (name, param, case) in &cases {
        let kv: Vec<KvView> = case
            .k
            .iter()
            .zip(&case.v)
            .map(|(k, v)| KvView::new(k, v))
            .collect();
        let mut out = vec![0.0f32; case.q.len()];
        let mut lse = vec![0.0f32; case.row_seq.len() * case.dims.n_head];
        group.throughput(Throughput::Elements(case.flops()));
        group.bench_function(BenchmarkId::new(*name, param), |b| {
            b.iter(|| {
                attention_over_caches(
                    black_box(&mut out),
                    black_box(&mut lse),
                    black_box(&case.q),
                    &kv,
                    &case.row_seq,
                    &case.row_pos,
                    case.dims,
                )
                .unwrap()
            })
        });
    }
    group.finish();
}

/// Causal self-attention over a training batch of whole sequences packed row after row,
/// each sequence's keys/values slices of the packed k/v, forward then backward.
fn attention_train(c: &mut Criterion) {
    let mut group = c.benchmark_group("attention_train");
    let dims = AttentionDims {
        n_head: N_HEAD,
        n_kv_head: N_KV_HEAD,
        head_dim: HEAD_DIM,
    };
    let (n, qd, kvd) = (TRAIN_ROWS, N_HEAD * HEAD_DIM, N_KV_HEAD * HEAD_DIM);
    let seqs: Vec<std::ops::Range<usize>> = (0..n)
        .step_by(TRAIN_SEQ_LEN)
        .map(|r| r..r + TRAIN_SEQ_LEN)
        .collect();
    let row_seq: Vec<usize> = (0..n).map(|r| r / TRAIN_SEQ_LEN).collect();
    let row_pos: Vec<usize> = (0..n).map(|r| r % TRAIN_SEQ_LEN).collect();
    let (q, k, v) = (
        randn(n * qd, 1.0, 9),
        randn(n * kvd, 1.0, 10),
        randn(n * kvd, 1.0, 11),
    );
    let dout = randn(n * qd, 1.0, 12);
    let kv: Vec<KvView> = seqs
        .iter()
        .map(|r| {
            KvView::new(
                &k[r.start * kvd..r.end * kvd],
                &v[r.start * kvd..r.end * kvd],
            )
        })
        .collect();
    let (mut out, mut lse) = (vec![0.0f32; n * qd], vec![0.0f32; n * N_HEAD]);
    // Multiply-adds of q.k and of the weighted sum of v over the causal keys, two FLOPs each.
    let forward_flops = (row_pos.iter().map(|&p| p + 1).sum::<usize>() * 2 * 2 * qd) as u64;
    let param = format!("{}seq_x{TRAIN_SEQ_LEN}rows", seqs.len());
    group.throughput(Throughput::Elements(forward_flops));
    group.bench_function(BenchmarkId::new("forward", &param), |b| {
        b.iter(|| {
            attention_over_caches(
                black_box(&mut out),
                black_box(&mut lse),
                black_box(&q),
                &kv,
                &row_seq,
                &row_pos,
                dims,
            )
            .unwrap()
        })
    });
    // The backward's saved state, whether or not the forward's benchmark ran.
    attention_over_caches(&mut out, &mut lse, &q, &kv, &row_seq, &row_pos, dims).unwrap();
    let (mut dq, mut dk, mut dv) = (vec![0.0f32; n * qd], vec![0.0; n * kvd], vec![0.0; n * kvd]);
    // Five products of the forward's size: the scores again, dP, dQ, dK and dV.
    group.throughput(Throughput::Elements(forward_flops * 5 / 2));
    group.bench_function(BenchmarkId::new("backward", &param), |b| {
        b.iter(|| {
            attention_backward(
                black_box(&mut dq),
                black_box(&mut dk),
                black_box(&mut dv),
                black_box(&dout),
                &q,
                &k,
                &v,
                &out,
                &lse,
                &seqs,
                dims,
            )
            .unwrap()
        })
    });
    group.finish();
}

criterion_group! {
    name = ops;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = matmul, matmul_train_backward, rmsnorm, rope, swiglu, attention, attention_train
}
criterion_main!(ops);
