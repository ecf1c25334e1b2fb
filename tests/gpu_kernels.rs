//! Each CUDA kernel against its CPU twin on fresh random inputs, in f32 and bf16. Skipped,
//! with the reason printed, where there is no GPU (or the build has no kernels);
//! scripts/gpu-check.sh runs them on a GPU, where a skip fails.

mod common;

use common::gpu::*;
use half::bf16;
use tpo_engine::backend::cpu::adamw::adamw_update;
use tpo_engine::backend::cpu::attention::{attention_over_caches, KvView};
use tpo_engine::backend::cpu::embedding::{embedding_backward, embedding_forward};
use tpo_engine::backend::cpu::matmul::{matmul_backward, matmul_forward};
use tpo_engine::backend::cpu::rmsnorm::{rmsnorm_backward, rmsnorm_forward};
use tpo_engine::backend::cpu::rope::{rope_backward, rope_forward};
use tpo_engine::backend::cpu::swiglu::{swiglu_row_backward, swiglu_row_forward};
use tpo_engine::backend::cuda::{DecodeDims, DeviceRope, DeviceTokens, Gpu};
use tpo_engine::backend::rope_table::{inv_frequencies, RopeScaling, RopeTable};
use tpo_engine::backend::settings::AdamW;
use tpo_engine::backend::settings::AttentionDims;

/// Relative tolerance of an element of type T against the f32 CPU result.
fn tol<T: Storage>() -> f32 {
    if T::SUFFIX == "bf16" {
        1.6e-2
    } else {
        1e-5
    }
}

fn rmsnorm_case<T: Storage>(gpu: &Gpu, n: usize, c: usize) {
    let eps = 1e-5;
    let round = round_to::<T>;
    // Inputs rounded to T first, so both sides see the same values.
    let x = round(random(n * c, 1 + c as u64));
    let w = round(random(c, 2).iter().map(|v| 1.0 + 0.5 * v).collect());
    let dy = round(random(n * c, 3));
    let up = |v: &[f32]| upload::<T>(gpu, v);
    let down = |s: &cudarc::driver::CudaSlice<T>| download(gpu, s);
    let (gx, gw, gdy) = (up(&x), up(&w), up(&dy));

    let mut want = vec![0.0; n * c];
    rmsnorm_forward(&mut want, &x, &w, eps, c).unwrap();
    let mut out = nans::<T>(gpu, n * c);
    gpu.rmsnorm_forward(&mut out, &gx, &gw, eps, c).unwrap();
    assert_close(
        &format!("rmsnorm forward {n}x{c}"),
        &down(&out),
        &want,
        tol::<T>(),
    );

    let mut want_dx = vec![0.0; n * c];
    let mut want_dw = vec![0.25; c]; // accumulated into
    rmsnorm_backward(&mut want_dx, Some(&mut want_dw), &dy, &x, &w, eps, c).unwrap();
    let mut dx = nans::<T>(gpu, n * c);
    let mut dw = gpu.stream.clone_htod(&vec![0.25f32; c]).unwrap();
    gpu.rmsnorm_backward(&mut dx, Some(&mut dw), &gdy, &gx, &gw, eps, c)
        .unwrap();
    // A frozen weight: the same d(input), no column sums.
    let mut frozen = nans::<T>(gpu, n * c);
    let no_dw: Option<&mut cudarc::driver::CudaSlice<f32>> = None;
    gpu.rmsnorm_backward(&mut frozen, no_dw, &gdy, &gx, &gw, eps, c)
        .unwrap();
    assert!(
        down(&frozen) == down(&dx),
        "rmsnorm {n}x{c}: frozen dinp differs"
    );
    assert_close(
        &format!("rmsnorm dinp {n}x{c}"),
        &down(&dx),
        &want_dx,
        tol::<T>() * 2.0,
    );
    let dw = gpu.stream.clone_dtoh(&dw).unwrap();
    assert_close(&format!("rmsnorm dweight {n}x{c}"), &dw, &want_dw, 1e-4);
}

#[test]
fn rmsnorm_matches_its_cpu_twin() {
    let Some(gpu) = gpu() else { return };
    for (n, c) in [(1, 1), (37, 301), (5, 4096), (129, 96)] {
        rmsnorm_case::<f32>(&gpu, n, c);
        rmsnorm_case::<bf16>(&gpu, n, c);
    }
}

/// n rows of im: the GPU reads the fused (N, 2I) gate/up rows, the CPU twin each row's
/// halves.
fn swiglu_case<T: Storage>(gpu: &Gpu, n: usize, im: usize) {
    let round = round_to::<T>;
    let gate_up = round(random(n * 2 * im, 11).iter().map(|x| 6.0 * x).collect());
    let dout = round(random(n * im, 13));
    let (gu, d) = (upload::<T>(gpu, &gate_up), upload::<T>(gpu, &dout));
    let down = |s: &cudarc::driver::CudaSlice<T>| download(gpu, s);
    let (mut want, mut want_dgu) = (vec![0.0; n * im], vec![0.0; n * 2 * im]);
    for r in 0..n {
        let row = &gate_up[r * 2 * im..(r + 1) * 2 * im];
        let (g, u) = row.split_at(im);
        swiglu_row_forward(&mut want[r * im..(r + 1) * im], g, u).unwrap();
        let (dg, du) = want_dgu[r * 2 * im..(r + 1) * 2 * im].split_at_mut(im);
        swiglu_row_backward(dg, du, &dout[r * im..(r + 1) * im], g, u).unwrap();
    }
    let mut out = nans::<T>(gpu, n * im);
    gpu.swiglu_forward(&mut out, &gu, im).unwrap();
    assert_close(
        &format!("swiglu forward {n}x{im}"),
        &down(&out),
        &want,
        tol::<T>(),
    );
    let mut dgu = nans::<T>(gpu, n * 2 * im);
    gpu.swiglu_backward(&mut dgu, &d, &gu, im).unwrap();
    assert_close(
        &format!("swiglu dgate_up {n}x{im}"),
        &down(&dgu),
        &want_dgu,
        tol::<T>(),
    );
}

#[test]
fn swiglu_matches_its_cpu_twin() {
    let Some(gpu) = gpu() else { return };
    // 3 000 007 outputs: more than the grid covers in one stride.
    for (n, im) in [(1, 1), (10, 100), (3, 1_000_003), (3_000_007, 1)] {
        swiglu_case::<f32>(&gpu, n, im);
        swiglu_case::<bf16>(&gpu, n, im);
    }
}

#[test]
fn adamw_matches_its_cpu_twin_over_three_steps() {
    let Some(gpu) = gpu() else { return };
    let n = 2_500_003;
    let mut p = random(n, 21);
    let (mut m, mut v, mut prev) = (vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]);
    let mut dp = gpu.stream.clone_htod(&p).unwrap();
    let mut dm = gpu.stream.alloc_zeros::<f32>(n).unwrap();
    let mut dv = gpu.stream.alloc_zeros::<f32>(n).unwrap();
    let mut dprev = gpu.stream.alloc_zeros::<f32>(n).unwrap();
    let mut shadow = gpu.stream.alloc_zeros::<bf16>(n).unwrap();
    for step in 1..=3u32 {
        let g = random(n, 30 + step as u64);
        let h = AdamW {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
            step,
            grad_scale: 0.5,
        };
        adamw_update(&mut p, &mut prev, &mut m, &mut v, &g, None, h).unwrap();
        let dg = gpu.stream.clone_htod(&g).unwrap();
        let with_shadow = step == 3;
        gpu.adamw_update(
            &mut dp,
            &mut dprev,
            &mut dm,
            &mut dv,
            &dg,
            with_shadow.then_some(&mut shadow),
            h,
        )
        .unwrap();
    }
    let got = gpu.stream.clone_dtoh(&dp).unwrap();
    assert_close("adamw params", &got, &p, 1e-5);
    assert_close(
        "adamw previous",
        &gpu.stream.clone_dtoh(&dprev).unwrap(),
        &prev,
        1e-5,
    );
    assert_close("adamw m", &gpu.stream.clone_dtoh(&dm).unwrap(), &m, 1e-5);
    assert_close("adamw v", &gpu.stream.clone_dtoh(&dv).unwrap(), &v, 1e-5);
    let shadow: Vec<f32> = gpu
        .stream
        .clone_dtoh(&shadow)
        .unwrap()
        .into_iter()
        .map(|x| x.to_f32())
        .collect();
    let rounded: Vec<f32> = got.iter().map(|&x| bf16::from_f32(x).to_f32()).collect();
    assert_eq!(
        shadow, rounded,
        "the bf16 shadow is the new weights, rounded"
    );
}

fn embedding_case<T: Storage>(gpu: &Gpu, vocab: usize, n: usize, c: usize) {
    let round = round_to::<T>;
    let table = round(random(vocab * c, 41));
    // Repeated ids, so the backward's sums are exercised.
    let tokens: Vec<u32> = (0..n).map(|i| ((i * 7 + 3) % vocab) as u32).collect();
    let dout = round(random(n * c, 42));
    let mut want = vec![0.0; n * c];
    embedding_forward(&mut want, &tokens, &table, c).unwrap();
    let dtokens = DeviceTokens::new(gpu, &tokens).unwrap();
    let mut out = nans::<T>(gpu, n * c);
    gpu.embedding_forward(&mut out, &dtokens, &upload::<T>(gpu, &table), c)
        .unwrap();
    assert_eq!(
        download(gpu, &out),
        want,
        "embedding forward {n}x{c}: a copy is exact"
    );
    let mut want_dt = vec![0.5; vocab * c];
    embedding_backward(&mut want_dt, &dout, &tokens, c).unwrap();
    let mut dt = gpu.stream.clone_htod(&vec![0.5f32; vocab * c]).unwrap();
    gpu.embedding_backward(&mut dt, &upload::<T>(gpu, &dout), &dtokens, c)
        .unwrap();
    // Same additions in the same order: exact.
    assert_eq!(
        gpu.stream.clone_dtoh(&dt).unwrap(),
        want_dt,
        "embedding backward {n}x{c}"
    );
}

#[test]
fn embedding_matches_its_cpu_twin() {
    let Some(gpu) = gpu() else { return };
    for (vocab, n, c) in [(1, 1, 1), (11, 50, 37), (300, 129, 512)] {
        embedding_case::<f32>(&gpu, vocab, n, c);
        embedding_case::<bf16>(&gpu, vocab, n, c);
    }
}

fn rope_case<T: Storage>(gpu: &Gpu, n: usize, heads: usize, d: usize) {
    let round = round_to::<T>;
    let scaling = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 64.0,
    };
    let positions: Vec<usize> = (0..n).map(|i| (i * 37) % 1000).collect();
    let table = RopeTable::for_positions(&inv_frequencies(d, 10000.0, &scaling), &positions);
    let x = round(random(n * heads * d, 51));
    let rope = DeviceRope::new(gpu, &table).unwrap();
    for direction in [1.0f32, -1.0] {
        let mut want = x.clone();
        if direction > 0.0 {
            rope_forward(&mut want, &table, heads).unwrap();
        } else {
            rope_backward(&mut want, &table, heads).unwrap();
        }
        let mut gx = upload::<T>(gpu, &x);
        if direction > 0.0 {
            gpu.rope_forward(&mut gx, &rope, heads).unwrap();
        } else {
            gpu.rope_backward(&mut gx, &rope, heads).unwrap();
        }
        assert_close(
            &format!("rope {direction} {n}x{heads}x{d}"),
            &download(gpu, &gx),
            &want,
            tol::<T>(),
        );
    }
}

#[test]
fn rope_matches_its_cpu_twin() {
    let Some(gpu) = gpu() else { return };
    for (n, heads, d) in [(1, 1, 2), (33, 3, 64), (257, 8, 128)] {
        rope_case::<f32>(&gpu, n, heads, d);
        rope_case::<bf16>(&gpu, n, heads, d);
    }
}

fn matmul_case<T: Storage>(gpu: &Gpu, n: usize, c: usize, oc: usize, with_bias: bool) {
    let round = round_to::<T>;
    let x = round(random(n * c, 61));
    let w = round(random(oc * c, 62));
    let b = round(random(oc, 63));
    let dy = round(random(n * oc, 64));
    let bias = with_bias.then_some(b.as_slice());
    let mut want = vec![0.0; n * oc];
    matmul_forward(&mut want, &x, &w, bias, n, c, oc).unwrap();
    let (gx, gw, gb, gdy) = (
        upload::<T>(gpu, &x),
        upload::<T>(gpu, &w),
        upload::<T>(gpu, &b),
        upload::<T>(gpu, &dy),
    );
    let mut out = nans::<T>(gpu, n * oc);
    gpu.matmul_forward(&mut out, &gx, &gw, with_bias.then_some(&gb), n, c, oc)
        .unwrap();
    let what = format!("matmul {n}x{c}x{oc} bias {with_bias}");
    // f32: cuBLAS sums in its own order; bf16: the output is rounded.
    let tol = tol::<T>().max(1e-4);
    assert_close(&format!("{what} forward"), &download(gpu, &out), &want, tol);

    let mut want_dx = vec![0.0; n * c];
    let mut want_dw = vec![0.5; oc * c];
    let mut want_db = vec![0.5; oc];
    matmul_backward(
        &mut want_dx,
        &mut want_dw,
        with_bias.then_some(want_db.as_mut_slice()),
        &dy,
        &x,
        &w,
        n,
        c,
        oc,
    )
    .unwrap();
    let mut dx = nans::<T>(gpu, n * c);
    let mut dw = gpu.stream.clone_htod(&vec![0.5f32; oc * c]).unwrap();
    let mut db = gpu.stream.clone_htod(&vec![0.5f32; oc]).unwrap();
    gpu.matmul_backward(
        &mut dx,
        Some(&mut dw),
        with_bias.then_some(&mut db),
        &gdy,
        &gx,
        &gw,
        n,
        c,
        oc,
    )
    .unwrap();
    assert_close(&format!("{what} dinp"), &download(gpu, &dx), &want_dx, tol);
    let dw = gpu.stream.clone_dtoh(&dw).unwrap();
    assert_close(&format!("{what} dweight"), &dw, &want_dw, 1e-4);
    if with_bias {
        let db = gpu.stream.clone_dtoh(&db).unwrap();
        assert_close(&format!("{what} dbias"), &db, &want_db, 1e-4);
    }
    // A frozen weight: dinp alone, the same as with the weight's gradient.
    let mut dx_only = nans::<T>(gpu, n * c);
    gpu.matmul_backward(
        &mut dx_only,
        None::<&mut cudarc::driver::CudaSlice<f32>>,
        None,
        &gdy,
        &gx,
        &gw,
        n,
        c,
        oc,
    )
    .unwrap();
    assert_eq!(
        download(gpu, &dx_only),
        download(gpu, &dx),
        "{what}: dinp without the weight's gradient"
    );
}

#[test]
fn matmul_matches_its_cpu_twin() {
    let Some(gpu) = gpu() else { return };
    for (n, c, oc) in [(1, 1, 1), (37, 301, 129), (256, 512, 1000)] {
        for with_bias in [false, true] {
            matmul_case::<f32>(&gpu, n, c, oc, with_bias);
            matmul_case::<bf16>(&gpu, n, c, oc, with_bias);
        }
    }
}

/// The gradient rows of `logits` into a T buffer whose view starts `doff` elements in (and
/// ends 5 before its end), the logits view `off` elements into its buffer; returns the view's
/// values, after checking that the poisoned elements around it were left alone.
#[allow(clippy::too_many_arguments)]
fn grad_rows_at<T: Storage>(
    gpu: &Gpu,
    logits: &cudarc::driver::CudaSlice<f32>,
    off: usize,
    doff: usize,
    targets: &cudarc::driver::CudaSlice<u32>,
    lse: &cudarc::driver::CudaSlice<f32>,
    upstream: &cudarc::driver::CudaSlice<f32>,
    n: usize,
    v: usize,
) -> Vec<f32> {
    let mut grad = nans::<T>(gpu, doff + n + 5);
    gpu.logprob_grad_rows(
        &mut grad.slice_mut(doff..doff + n),
        &logits.slice(off..off + n),
        targets,
        lse,
        upstream,
        v,
    )
    .unwrap();
    let all = download(gpu, &grad);
    let outside = all[..doff].iter().chain(&all[doff + n..]);
    assert!(
        outside.into_iter().all(|x| x.is_nan()),
        "written outside the view"
    );
    all[doff..doff + n].to_vec()
}

#[test]
fn logprob_rows_match_log_softmax_and_its_gradient_in_f64() {
    let Some(gpu) = gpu() else { return };
    // V of no particular multiple, so rows start at every alignment: one split per row (V
    // below 8192 logits), several (32003: 4, 100003: 13 on 132 SMs), and enough logits
    // (40 x 100003) for the gradient pass to stride more than once over its one-wave grid.
    for (r, v) in [(1, 1), (7, 1001), (33, 32003), (5, 100_003), (40, 100_003)] {
        let logits: Vec<f32> = random(r * v, 71 + r as u64)
            .iter()
            .map(|x| 8.0 * x)
            .collect();
        let mut targets: Vec<u32> = (0..r).map(|i| ((i * 7919) % v) as u32).collect();
        targets[r - 1] = v as u32 - 1; // the last logit: in the tail or the last split
        let upstream: Vec<f32> = random(r, 72);
        // The reference: log-softmax in f64, and its gradient: d logp_t / d z_j = [j = t] -
        // softmax_j, times the upstream d(loss)/d(logp).
        let mut want_logp = vec![0.0f64; r];
        let mut want_lse = vec![0.0f64; r];
        let mut want_grad = vec![0.0f32; r * v];
        for i in 0..r {
            let row: Vec<f64> = logits[i * v..(i + 1) * v]
                .iter()
                .map(|&x| x as f64)
                .collect();
            let m = row.iter().cloned().fold(f64::MIN, f64::max);
            let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            want_lse[i] = lse;
            want_logp[i] = row[targets[i] as usize] - lse;
            for j in 0..v {
                let onehot = if j == targets[i] as usize { 1.0 } else { 0.0 };
                want_grad[i * v + j] =
                    (upstream[i] as f64 * (onehot - (row[j] - lse).exp())) as f32;
            }
        }
        let gtargets = gpu.stream.clone_htod(&targets).unwrap();
        let gup = gpu.stream.clone_htod(&upstream).unwrap();
        // The logits view `off` floats into its buffer and the gradient rows `doff` elements
        // into theirs: aligned; both off by the same phase (the float4 path, with a scalar
        // head); off by different phases (the scalar fallback, in f32 and in bf16).
        for (off, doff) in [(0, 0), (1, 1), (2, 6), (1, 0)] {
            let what = format!("{r}x{v} at +{off}/+{doff}");
            let mut padded = vec![f32::NAN; off];
            padded.extend(&logits);
            let glogits = gpu.stream.clone_htod(&padded).unwrap();
            let mut logp = nans::<f32>(&gpu, r);
            let mut lse = nans::<f32>(&gpu, r);
            gpu.logprob_rows(&mut logp, &mut lse, &glogits.slice(off..), &gtargets, v)
                .unwrap();
            let got_logp: Vec<f32> = gpu.stream.clone_dtoh(&logp).unwrap();
            let got_lse: Vec<f32> = gpu.stream.clone_dtoh(&lse).unwrap();
            for i in 0..r {
                let (g, w) = (got_logp[i] as f64, want_logp[i]);
                assert!(
                    (g - w).abs() < 1e-4 * w.abs().max(1.0),
                    "logp[{i}] {what}: {g} vs {w}"
                );
                let (g, w) = (got_lse[i] as f64, want_lse[i]);
                assert!(
                    (g - w).abs() < 1e-4 * w.abs().max(1.0),
                    "lse[{i}] {what}: {g} vs {w}"
                );
            }
            // Deterministic: the same inputs give the same bits.
            let mut again = nans::<f32>(&gpu, r);
            let mut lse2 = nans::<f32>(&gpu, r);
            gpu.logprob_rows(&mut again, &mut lse2, &glogits.slice(off..), &gtargets, v)
                .unwrap();
            let again: Vec<f32> = gpu.stream.clone_dtoh(&again).unwrap();
            assert!(
                again
                    .iter()
                    .zip(&got_logp)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "logp {what}: not deterministic"
            );
            // f32 gradient rows to a buffer of their own, and bf16 ones (what a bf16 backward
            // feeds cuBLAS), rounded once.
            let n = r * v;
            let grad = grad_rows_at::<f32>(&gpu, &glogits, off, doff, &gtargets, &lse, &gup, n, v);
            for (j, (g, w)) in grad.iter().zip(&want_grad).enumerate() {
                assert!((g - w).abs() < 1e-5, "dlogits[{j}] {what}: {g} vs {w}");
            }
            let grad = grad_rows_at::<bf16>(&gpu, &glogits, off, doff, &gtargets, &lse, &gup, n, v);
            for (j, (g, w)) in grad.iter().zip(&want_grad).enumerate() {
                assert!(
                    (g - w).abs() <= 4e-3 * w.abs() + 1e-5,
                    "bf16 dlogits[{j}] {what}: {g} vs {w}"
                );
            }
        }
    }
}

/// ‖got − want‖ / ‖want‖, in f64.
fn relative_error(got: &[f32], want: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (g, w) in got.iter().zip(want) {
        num += (*g as f64 - *w as f64).powi(2);
        den += (*w as f64).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

/// Decode attention of one query row per sequence over caches of `t_max` positions,
/// sequence s holding `lens[s]`, against the CPU twin; twice, to check that every element
/// is written (outputs and scratch start as NaN) and that the result is bit for bit the
/// same.
fn decode_case<T: Storage>(
    gpu: &Gpu,
    lens: &[usize],
    t_max: usize,
    n_head: usize,
    n_kv_head: usize,
    d: usize,
) {
    let round = round_to::<T>;
    let b = lens.len();
    let kv_row = n_kv_head * d;
    let seed = (b * 1000 + t_max + 17 * n_head + 131 * n_kv_head + 7919 * d) as u64;
    let q = round(random(b * n_head * d, seed));
    let k = round(random(b * t_max * kv_row, seed + 1));
    let v = round(random(b * t_max * kv_row, seed + 2));
    // The CPU twin: each sequence's cache is its first lens[s] positions.
    let views: Vec<KvView> = (0..b)
        .map(|s| {
            let base = s * t_max * kv_row;
            KvView::new(
                &k[base..base + lens[s] * kv_row],
                &v[base..base + lens[s] * kv_row],
            )
        })
        .collect();
    let row_seq: Vec<usize> = (0..b).collect();
    let row_pos: Vec<usize> = lens.iter().map(|l| l - 1).collect();
    let (mut want, mut want_lse) = (vec![0.0; b * n_head * d], vec![0.0; b * n_head]);
    let dims = AttentionDims {
        n_head,
        n_kv_head,
        head_dim: d,
    };
    attention_over_caches(
        &mut want,
        &mut want_lse,
        &q,
        &views,
        &row_seq,
        &row_pos,
        dims,
    )
    .unwrap();
    let ddims = DecodeDims {
        batch: b,
        n_head,
        n_kv_head,
        head_dim: d,
        t_max,
    };
    let lens32: Vec<i32> = lens.iter().map(|&l| l as i32).collect();
    let (gq, gk, gv) = (
        upload::<T>(gpu, &q),
        upload::<T>(gpu, &k),
        upload::<T>(gpu, &v),
    );
    let glens = gpu.stream.clone_htod(&lens32).unwrap();
    let need = gpu.decode_attention_scratch_len(ddims).unwrap();
    let run = || {
        let mut out = nans::<T>(gpu, b * n_head * d);
        let mut lse = nans::<f32>(gpu, b * n_head);
        // One NaN where no scratch is needed (a buffer cannot be empty here).
        let mut scratch = nans::<f32>(gpu, need.max(1));
        gpu.decode_attention(
            &mut out,
            &mut lse,
            &mut scratch,
            &gq,
            &gk,
            &gv,
            &glens,
            ddims,
        )
        .unwrap();
        (download(gpu, &out), gpu.stream.clone_dtoh(&lse).unwrap())
    };
    let (got, got_lse) = run();
    let what = format!(
        "decode attention lens {lens:?} of {t_max} H {n_head} Hkv {n_kv_head} D {d} {}",
        T::SUFFIX
    );
    assert_close(&what, &got, &want, tol::<T>());
    let rel = relative_error(&got, &want);
    let rel_tol = if T::SUFFIX == "f32" { 1e-5 } else { 5e-3 };
    assert!(rel < rel_tol, "{what}: relative error {rel:e}");
    // The scores see the same values on both sides: lse is f32-tight in bf16 too.
    assert_close(&format!("{what} lse"), &got_lse, &want_lse, 1e-5);
    let (again, again_lse) = run();
    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
    assert_eq!(bits(&got), bits(&again), "{what}: a second run differs");
    assert_eq!(
        bits(&got_lse),
        bits(&again_lse),
        "{what} lse: a second run differs"
    );
}

#[test]
fn decode_attention_matches_its_cpu_twin() {
    let Some(gpu) = gpu() else { return };
    // Batches of (lens, Tmax): a short cache that one split covers (no combine); lengths 1,
    // a few and 1000 of 1200 (on an H100, 9 or 10 splits of 120 to 134 positions: sequences
    // that end in the first split beside one that spans many); one long sequence (the most
    // splits); 16 sequences of mixed lengths, some ending near a split's edge or at Tmax.
    let mixed = [
        1, 2, 7, 64, 129, 500, 1000, 1200, 3, 1, 255, 256, 257, 777, 1199, 40,
    ];
    let batches: [(&[usize], usize); 4] = [
        (&[1, 5, 40], 64),
        (&[1, 3, 1000], 1200),
        (&[1000], 1200),
        (&mixed, 1200),
    ];
    // (H, Hkv, D): GQA ratios 1, 2, 4, 6 (a group that is not a power of two), 8 and 16
    // (two blocks per kv head), Hkv = 1; head dims 16, 64, 128, 256 (the largest), 96 (lanes
    // past D), 20 (f32: a lane's second 16-byte load past D; bf16: rows off 16 bytes, the
    // scalar loads) and 18 (the scalar loads in f32 too).
    let heads = [
        (4, 4, 64),
        (8, 4, 128),
        (8, 2, 64),
        (4, 1, 16),
        (8, 1, 128),
        (12, 2, 64),
        (32, 2, 16),
        (8, 2, 96),
        (4, 2, 256),
        (4, 2, 20),
        (6, 3, 18),
    ];
    for (n_head, n_kv_head, d) in heads {
        for (lens, t_max) in batches {
            decode_case::<f32>(&gpu, lens, t_max, n_head, n_kv_head, d);
            decode_case::<bf16>(&gpu, lens, t_max, n_head, n_kv_head, d);
        }
    }
    // Head dims past the kernel's are an error, not a wrong answer.
    let (q, kv) = (nans::<f32>(&gpu, 512), nans::<f32>(&gpu, 512));
    let mut out = nans::<f32>(&gpu, 512);
    let mut lse = nans::<f32>(&gpu, 1);
    let mut scratch = nans::<f32>(&gpu, 1);
    let lens = gpu.stream.clone_htod(&[1i32]).unwrap();
    let dims = DecodeDims {
        batch: 1,
        n_head: 1,
        n_kv_head: 1,
        head_dim: 512,
        t_max: 1,
    };
    assert!(gpu
        .decode_attention(&mut out, &mut lse, &mut scratch, &q, &kv, &kv, &lens, dims)
        .is_err());
}

#[test]
fn glue_kernels_move_what_the_cpu_model_moves() {
    use tpo_engine::backend::cuda::Columns;
    let Some(gpu) = gpu() else { return };
    let (rows, stride) = (37, 29);
    let src = random(rows * stride, 41);
    let s = upload::<f32>(&gpu, &src);
    // Columns 7..20 of each row into a dense (rows, 13), then into columns 3..16 of rows
    // of 20.
    let mut dense = nans::<f32>(&gpu, rows * 13);
    let at = |stride, offset| Columns { stride, offset };
    gpu.copy_columns((&mut dense, at(13, 0)), (&s, at(stride, 7)), rows, 13)
        .unwrap();
    let want: Vec<f32> = (0..rows)
        .flat_map(|r| src[r * stride + 7..r * stride + 20].to_vec())
        .collect();
    assert_eq!(download(&gpu, &dense), want);
    let mut wide = upload::<f32>(&gpu, &vec![5.0; rows * 20]);
    gpu.copy_columns((&mut wide, at(20, 3)), (&dense, at(13, 0)), rows, 13)
        .unwrap();
    let got = download(&gpu, &wide);
    for r in 0..rows {
        assert_eq!(&got[r * 20 + 3..r * 20 + 16], &want[r * 13..(r + 1) * 13]);
        assert!(got[r * 20..r * 20 + 3].iter().all(|&x| x == 5.0));
        assert!(got[r * 20 + 16..(r + 1) * 20].iter().all(|&x| x == 5.0));
    }
    // A block that does not fit its rows is an error, not a wild write.
    assert!(gpu
        .copy_columns((&mut dense, at(13, 1)), (&s, at(stride, 7)), rows, 13)
        .is_err());
    // Scaled blocks, added and assigned, as the CPU twin does them (bit for bit: the added
    // scale is a power of two, so a fused multiply-add rounds as the CPU's two steps do).
    let mut cpu_wide = vec![5.0f32; rows * 20];
    tpo_engine::backend::cpu::glue::scale_columns(
        &mut cpu_wide,
        at(20, 3),
        &src,
        at(stride, 7),
        rows,
        13,
        0.25,
        true,
    )
    .unwrap();
    let mut gpu_wide = upload::<f32>(&gpu, &vec![5.0; rows * 20]);
    gpu.scale_columns(
        (&mut gpu_wide, at(20, 3)),
        (&s, at(stride, 7)),
        rows,
        13,
        0.25,
        true,
    )
    .unwrap();
    assert_eq!(download(&gpu, &gpu_wide), cpu_wide);
    let mut cpu_dense = vec![0.0f32; rows * 13];
    tpo_engine::backend::cpu::glue::scale_columns(
        &mut cpu_dense,
        at(13, 0),
        &cpu_wide,
        at(20, 3),
        rows,
        13,
        -3.0,
        false,
    )
    .unwrap();
    let mut gpu_dense = nans::<f32>(&gpu, rows * 13);
    gpu.scale_columns(
        (&mut gpu_dense, at(13, 0)),
        (&gpu_wide, at(20, 3)),
        rows,
        13,
        -3.0,
        false,
    )
    .unwrap();
    assert_eq!(download(&gpu, &gpu_dense), cpu_dense);

    // Gather rows 30, 2, 11 of src, then scatter them to rows 0, 36, 5 of a zero buffer.
    let idx = gpu.stream.clone_htod(&[30i32, 2, 11]).unwrap();
    let mut three = nans::<f32>(&gpu, 3 * stride);
    gpu.gather_rows(&mut three, &s, &idx, stride).unwrap();
    let got = download(&gpu, &three);
    for (m, r) in [30, 2, 11].into_iter().enumerate() {
        assert_eq!(
            &got[m * stride..(m + 1) * stride],
            &src[r * stride..(r + 1) * stride]
        );
    }
    let to = gpu.stream.clone_htod(&[0i32, 36, 5]).unwrap();
    let mut zeros = upload::<f32>(&gpu, &vec![0.0; rows * stride]);
    gpu.scatter_rows(&mut zeros, &three, &to, stride).unwrap();
    let got = download(&gpu, &zeros);
    for r in 0..rows {
        let want = match r {
            0 => &src[30 * stride..31 * stride],
            36 => &src[2 * stride..3 * stride],
            5 => &src[11 * stride..12 * stride],
            _ => &[0.0f32; 29][..],
        };
        assert_eq!(&got[r * stride..(r + 1) * stride], want, "row {r}");
    }

    // LoRA dropout: the same mask as the CPU's from the same seed (its uniforms are exact
    // in f32 on both), assigned and added, over more elements than one launch's grid.
    let n = 3_000_017;
    let values = random(n, 44);
    let mut cpu_drop = vec![0.0f32; n];
    tpo_engine::backend::cpu::dropout::dropout(&mut cpu_drop, &values, 0.1, 77, false).unwrap();
    let gv = upload::<f32>(&gpu, &values);
    let mut gd = nans::<f32>(&gpu, n);
    gpu.dropout(&mut gd, &gv, 0.1, 77, false).unwrap();
    assert_eq!(download(&gpu, &gd), cpu_drop, "dropout assigned");
    let mut cpu_added = cpu_drop.clone();
    tpo_engine::backend::cpu::dropout::dropout(&mut cpu_added, &values, 0.1, 78, true).unwrap();
    gpu.dropout(&mut gd, &gv, 0.1, 78, true).unwrap();
    assert_eq!(download(&gpu, &gd), cpu_added, "dropout added");

    // The residual add, in bf16: x + y rounded once.
    let (x, y) = (random(1001, 42), random(1001, 43));
    let xr = round_to::<bf16>(x.clone());
    let yr = round_to::<bf16>(y.clone());
    let mut xd = upload::<bf16>(&gpu, &xr);
    gpu.residual_forward(&mut xd, &upload::<bf16>(&gpu, &yr))
        .unwrap();
    let want: Vec<f32> = xr.iter().zip(&yr).map(|(a, b)| a + b).collect();
    assert_close(
        "residual_forward",
        &download(&gpu, &xd),
        &want,
        tol::<bf16>(),
    );
}

#[test]
fn reductions_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    // The gradient norm's sum of squares: f64 on both sides, over more elements than the
    // grid covers in one stride.
    let x = random(3_000_017, 51);
    let want = tpo_engine::backend::cpu::adamw::sum_squares(&x);
    let got = gpu.sum_squares(&upload::<f32>(&gpu, &x)).unwrap();
    assert!((got - want).abs() <= 1e-9 * want, "{got} vs {want}");
    assert_eq!(gpu.sum_squares(&upload::<f32>(&gpu, &[])).unwrap(), 0.0);

    // Column sums, added onto what the output holds: row counts around the segment size.
    for (n, c) in [(1, 5), (63, 7), (64, 300), (65, 33), (16_385, 129)] {
        let x = round_to::<bf16>(random(n * c, 52 + n as u64));
        let mut want = vec![0.25f32; c];
        for r in 0..n {
            for j in 0..c {
                want[j] += x[r * c + j];
            }
        }
        let mut out = upload::<f32>(&gpu, &vec![0.25; c]);
        gpu.column_sums(&mut out, &upload::<bf16>(&gpu, &x), n, c)
            .unwrap();
        assert_close(
            &format!("column sums {n}x{c}"),
            &download(&gpu, &out),
            &want,
            1e-5,
        );
    }
}
