//! The CUDA kernels and one whole DPO step timed on the GPU, one JSON line per measurement
//! on stdout: {"bench", "shape", "impl": "tpo-engine", "ms", then "tflops", "gbps",
//! "us" or "tokens_per_s" with the formula that gave it}. scripts/gpu_bench_torch.py times
//! the same work in PyTorch under the same (bench, shape) keys, and scripts/gpu-check.sh
//! joins the two into one table.
//!
//!   cargo bench --bench gpu [-- FILTER..]     # only the groups whose name holds a FILTER
//!
//! Groups: memcpy, attention, logprobs, rows, adamw, dpo_loss, sample, train_step. Where
//! no GPU can be opened it prints why and exits 0, so `cargo bench` stays fine on a CPU
//! machine. Inputs are random (never zeros); the large buffers are tiled from a random
//! block of 16 Mi elements, uploaded once.

use anyhow::{Context, Result};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};
use half::bf16;
use rayon::prelude::*;
use serde_json::{json, Map, Value};
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;
use tpo_engine::backend::cuda::logprobs::default_chunk_rows;
use tpo_engine::backend::cuda::CudaOps;
use tpo_engine::backend::cuda::{Gpu, LogitsScratch, PackedSeqs};
use tpo_engine::backend::rng::splitmix64;
use tpo_engine::backend::settings::AdamW;
use tpo_engine::backend::settings::AttentionDims;
use tpo_engine::backend::settings::SamplingParams;
use tpo_engine::model::weights::StorageDtype;
use tpo_engine::model::{Model, ModelConfig, ParamLayout};
use tpo_engine::train::loss::PAIR_STATS;
use tpo_engine::train::trainer::Trainer;
use tpo_engine::train::{
    DpoConfig, DpoLossType, Example, LrSchedule, Objective, OptimizerConfig, TrainConfig,
};

const EVENTS: &str = "CUDA events around each repetition, median";
const WALL: &str = "stream synchronised + host clock around each step, median";

/// FlashAttention's count for causal attention, as benchmarks/benchmark_flash_attention.py
/// of Dao-AILab/flash-attention: half of the 4·B·T²·H·D of the two full products.
const ATTN_FORMULA: &str =
    "fwd = 4·B·T²·H·D/2 (FlashAttention's causal count); fwd+bwd = 3.5 × fwd (bwd = 2.5 × fwd)";

fn main() {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let gpu = match Gpu::open(0) {
        Ok(gpu) => Arc::new(gpu),
        Err(why) => {
            eprintln!("skipped: {why}");
            emit(json!({"bench": "gpu_bench", "skipped": why}));
            return;
        }
    };
    let name = gpu.ctx.name().unwrap_or_else(|_| "unknown".into());
    let peak = bf16_dense_peak_tflops(&name);
    emit(json!({
        "bench": "device",
        "impl": "tpo-engine",
        "name": name,
        "describe": gpu.describe(),
        "bf16_dense_peak_tflops": peak,
        "timing": format!("{EVENTS} of the timed repetitions after untimed warm-ups (whole train steps: {WALL})"),
    }));
    let b = Bench { gpu, filters, peak };
    b.group("memcpy", Bench::memcpy);
    b.group("attention", Bench::attention);
    b.group("logprobs", Bench::logprobs);
    b.group("rows", Bench::logprob_rows);
    b.group("adamw", Bench::adamw);
    b.group("dpo_loss", Bench::dpo_loss);
    b.group("sample", Bench::sample);
    b.group("train_step", Bench::train_step);
}

/// Dense (no sparsity) bf16 tensor-core peak of the datasheets, TFLOP/s.
fn bf16_dense_peak_tflops(name: &str) -> Option<f64> {
    let n = name.to_ascii_uppercase();
    if n.contains("H200") {
        Some(989.4)
    } else if n.contains("H100") {
        Some(if n.contains("PCIE") {
            756.0
        } else if n.contains("NVL") {
            835.0
        } else {
            989.4 // SXM ("H100 80GB HBM3")
        })
    } else if n.contains("A100") {
        Some(312.0)
    } else {
        None
    }
}

fn emit(v: Value) {
    let mut out = std::io::stdout().lock();
    // A closed pipe only loses the line; the run goes on.
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        0.5 * (xs[n / 2 - 1] + xs[n / 2])
    }
}

/// n values uniform in [-a, a) with standard deviation `std` (a = std·√3), from `seed`:
/// element i is a hash of (seed, i), so the values do not depend on the thread count.
fn uniform_host(n: usize, std: f32, seed: u64) -> Vec<f32> {
    const CHUNK: usize = 1 << 16;
    let a = std * 3f32.sqrt();
    let key = splitmix64(seed);
    let mut v = vec![0f32; n];
    v.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
        for (j, x) in chunk.iter_mut().enumerate() {
            let r = splitmix64(key ^ (c * CHUNK + j) as u64);
            *x = ((r >> 40) as f32 * (1.0 / (1u64 << 24) as f32) * 2.0 - 1.0) * a;
        }
    });
    v
}

/// n integers uniform in [0, below).
fn ints_host(n: usize, below: u64, seed: u64) -> Vec<u32> {
    let key = splitmix64(seed);
    (0..n)
        .map(|i| (splitmix64(key ^ i as u64) % below) as u32)
        .collect()
}

struct Bench {
    gpu: Arc<Gpu>,
    filters: Vec<String>,
    peak: Option<f64>,
}

impl Bench {
    /// Runs one group unless filtered out; an error or panic outside `measure` becomes an
    /// error line for the whole group.
    fn group(&self, name: &str, f: fn(&Bench) -> Result<()>) {
        if !self.filters.is_empty() && !self.filters.iter().any(|x| name.contains(x.as_str())) {
            return;
        }
        let started = Instant::now();
        let err = match catch_unwind(AssertUnwindSafe(|| f(self))) {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("{e:#}")),
            Err(p) => Some(panic_message(p)),
        };
        if let Some(e) = err {
            emit(json!({"bench": name, "shape": "*", "impl": "tpo-engine", "error": e}));
        }
        eprintln!(
            "gpu_bench: {name} took {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }

    /// Times `f` with CUDA events: `warmup` untimed calls, then the median of `reps`. Emits
    /// {bench, shape, ms, ..extra(ms)} or the error.
    fn measure(
        &self,
        bench: &str,
        shape: &str,
        (warmup, reps): (usize, usize),
        mut f: impl FnMut() -> Result<()>,
        extra: impl FnOnce(f64) -> Value,
    ) {
        let timed = catch_unwind(AssertUnwindSafe(|| -> Result<f64> {
            let stream = &self.gpu.stream;
            for _ in 0..warmup {
                f()?;
            }
            stream.synchronize()?;
            let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
            let mut events = Vec::with_capacity(reps);
            for _ in 0..reps {
                let start = stream.record_event(flags)?;
                f()?;
                events.push((start, stream.record_event(flags)?));
            }
            let mut ms = events
                .iter()
                .map(|(s, e)| s.elapsed_ms(e).map(f64::from))
                .collect::<Result<Vec<f64>, _>>()?;
            Ok(median(&mut ms))
        }));
        self.report(bench, shape, reps, EVENTS, timed, extra);
    }

    fn report(
        &self,
        bench: &str,
        shape: &str,
        reps: usize,
        timing: &str,
        timed: std::thread::Result<Result<f64>>,
        extra: impl FnOnce(f64) -> Value,
    ) {
        let mut line = Map::new();
        line.insert("bench".into(), json!(bench));
        line.insert("shape".into(), json!(shape));
        line.insert("impl".into(), json!("tpo-engine"));
        match timed {
            Ok(Ok(ms)) => {
                line.insert("ms".into(), json!(ms));
                if let Value::Object(more) = extra(ms) {
                    line.extend(more);
                }
                line.insert("reps".into(), json!(reps));
                line.insert("timing".into(), json!(timing));
            }
            Ok(Err(e)) => {
                line.insert("error".into(), json!(format!("{e:#}")));
            }
            Err(p) => {
                line.insert("error".into(), json!(panic_message(p)));
            }
        }
        emit(Value::Object(line));
    }

    /// A device buffer of n values drawn as `uniform_host`, tiled from one random block of
    /// at most 16 Mi elements (uploading gigabytes of fresh randoms would dominate the run).
    fn random<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        n: usize,
        std: f32,
        seed: u64,
        conv: fn(f32) -> T,
    ) -> Result<CudaSlice<T>> {
        let block: Vec<T> = uniform_host(n.min(1 << 24), std, seed)
            .into_iter()
            .map(conv)
            .collect();
        let stream = &self.gpu.stream;
        let block = stream
            .clone_htod(&block)
            .context("uploading a random block")?;
        let mut buf = self.gpu.alloc::<T>(n, "for the benchmark's inputs")?;
        let mut at = 0;
        while at < n {
            let len = block.len().min(n - at);
            stream.memcpy_dtod(&block.slice(0..len), &mut buf.slice_mut(at..at + len))?;
            at += len;
        }
        Ok(buf)
    }

    fn f32s(&self, n: usize, std: f32, seed: u64) -> Result<CudaSlice<f32>> {
        self.random(n, std, seed, |x| x)
    }

    fn bf16s(&self, n: usize, std: f32, seed: u64) -> Result<CudaSlice<bf16>> {
        self.random(n, std, seed, bf16::from_f32)
    }

    /// The card's copy bandwidth, the yardstick of the memory-bound kernels.
    fn memcpy(&self) -> Result<()> {
        let n = 512 << 20; // f32: 2 GiB
        let src = self.f32s(n, 1.0, 1)?;
        let mut dst = self.gpu.alloc::<f32>(n, "for the copy")?;
        let bytes = 2.0 * 4.0 * n as f64;
        self.measure(
            "memcpy_d2d",
            "2 GiB",
            (3, 10),
            || Ok(self.gpu.stream.memcpy_dtod(&src, &mut dst)?),
            |ms| json!({"gbps": bytes / ms / 1e6, "bytes": "2 × size (read + write)"}),
        );
        Ok(())
    }

    /// Fused causal attention, bf16, head dim 128, 16k tokens: 8 × 2048 and 4 × 4096, with
    /// 16 KV heads and with 4 (GQA).
    fn attention(&self) -> Result<()> {
        let gpu = &*self.gpu;
        let (h, d) = (16, 128);
        for (b, t) in [(8usize, 2048usize), (4, 4096)] {
            for hkv in [16usize, 4] {
                let n = b * t;
                let dims = AttentionDims {
                    n_head: h,
                    n_kv_head: hkv,
                    head_dim: d,
                };
                let shape = format!("B={b} T={t} H={h} Hkv={hkv} D={d} causal bf16");
                let q = self.bf16s(n * h * d, 1.0, 11)?;
                let k = self.bf16s(n * hkv * d, 1.0, 12)?;
                let v = self.bf16s(n * hkv * d, 1.0, 13)?;
                let dout = self.bf16s(n * h * d, 1.0, 14)?;
                let starts: Vec<i32> = (0..=b).map(|i| (i * t) as i32).collect();
                let starts = gpu.stream.clone_htod(&starts)?;
                let seqs = PackedSeqs {
                    starts: &starts,
                    max_len: t,
                };
                const STAGE: &str = "for the attention benchmark";
                let mut out = gpu.alloc::<bf16>(n * h * d, STAGE)?;
                let mut lse = gpu.alloc::<f32>(n * h, STAGE)?;
                let mut dq = gpu.alloc::<bf16>(n * h * d, STAGE)?;
                let mut dk = gpu.alloc::<bf16>(n * hkv * d, STAGE)?;
                let mut dv = gpu.alloc::<bf16>(n * hkv * d, STAGE)?;
                let fwd_flops = 4.0 * (b * t * t * h * d) as f64 / 2.0;
                self.measure(
                    "attn_fwd",
                    &shape,
                    (3, 10),
                    || gpu.attention_forward(&mut out, &mut lse, &q, &k, &v, &seqs, dims),
                    |ms| json!({"tflops": fwd_flops / ms / 1e9, "flops": ATTN_FORMULA}),
                );
                self.measure(
                    "attn_fwd_bwd",
                    &shape,
                    (2, 8),
                    || {
                        gpu.attention_forward(&mut out, &mut lse, &q, &k, &v, &seqs, dims)?;
                        gpu.attention_backward(
                            &mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &out, &lse, &seqs, dims,
                        )
                    },
                    |ms| json!({"tflops": 3.5 * fwd_flops / ms / 1e9, "flops": ATTN_FORMULA}),
                );
            }
        }
        Ok(())
    }

    /// The fused LM-head log-probs (cuBLAS chunk GEMMs + row kernels), forward and
    /// forward + backward, at M = 16k scored rows of a Llama-3 vocabulary.
    fn logprobs(&self) -> Result<()> {
        let gpu = &*self.gpu;
        let (m, c, v) = (16384usize, 2048usize, 128_256usize);
        let shape = format!("M={m} C={c} V={v} bf16");
        const STAGE: &str = "for the log-prob benchmark";
        let hidden = self.bf16s(m * c, 1.0, 21)?;
        let weight = self.bf16s(v * c, 0.02, 22)?;
        let targets = gpu.stream.clone_htod(&ints_host(m, v as u64, 23))?;
        let dlogp = self.f32s(m, 1e-3, 24)?;
        let mut logp = gpu.alloc::<f32>(m, STAGE)?;
        let mut lse = gpu.alloc::<f32>(m, STAGE)?;
        let mut dhidden = gpu.alloc::<bf16>(m * c, STAGE)?;
        let mut dweight = gpu.alloc::<f32>(v * c, STAGE)?;
        let chunk = default_chunk_rows(v);
        let mut scratch = LogitsScratch::new(gpu, chunk, v)?;
        // What the pass holds of the logits: one chunk, f32, and its bf16 gradient rows.
        let scratch_bytes = chunk * v * (4 + 2);
        let full_logits = m * v * 2;
        let gemm = 2.0 * (m * c * v) as f64;
        let memory = json!({
            "logits_scratch_bytes": scratch_bytes,
            "full_logits_bf16_bytes": full_logits,
            "chunk_rows": chunk,
        });
        self.measure(
            "logprobs_fwd",
            &shape,
            (2, 10),
            || {
                gpu.logprobs_forward(
                    &mut logp,
                    &mut lse,
                    &hidden,
                    &weight,
                    &targets,
                    c,
                    v,
                    &mut scratch,
                )
            },
            |ms| {
                let mut j =
                    json!({"tflops": gemm / ms / 1e9, "flops": "2·M·C·V (the logits GEMM)"});
                j.as_object_mut()
                    .unwrap()
                    .extend(memory.as_object().unwrap().clone());
                j
            },
        );
        self.measure(
            "logprobs_fwd_bwd",
            &shape,
            (2, 8),
            || {
                gpu.logprobs_forward(
                    &mut logp,
                    &mut lse,
                    &hidden,
                    &weight,
                    &targets,
                    c,
                    v,
                    &mut scratch,
                )?;
                gpu.logprobs_backward(
                    &mut dhidden,
                    Some(&mut dweight),
                    &dlogp,
                    &hidden,
                    &weight,
                    &targets,
                    &lse,
                    c,
                    v,
                    &mut scratch,
                )
            },
            |ms| {
                let mut j = json!({
                    "tflops": 3.0 * gemm / ms / 1e9,
                    "flops": "6·M·C·V (logits, d(hidden), d(W)); the pass also recomputes the logits: 8·M·C·V executed",
                });
                j.as_object_mut()
                    .unwrap()
                    .extend(memory.as_object().unwrap().clone());
                j
            },
        );
        Ok(())
    }

    /// The non-GEMM part of the log-probs alone: the row kernels over prepared f32 logits of
    /// M = 16k rows, launched per chunk as the pass launches them, per 128-row chunk (the
    /// chunk of before, small enough that the forward splits its rows over several blocks
    /// and combines them: the path of a short last chunk), and in one launch.
    fn logprob_rows(&self) -> Result<()> {
        let gpu = &*self.gpu;
        let (m, v) = (16384usize, 128_256usize);
        let shape = format!("M={m} V={v} f32 logits");
        const STAGE: &str = "for the row-kernel benchmark";
        let logits = self.f32s(m * v, 3.0, 31)?;
        let targets = gpu.stream.clone_htod(&ints_host(m, v as u64, 32))?;
        let upstream = self.f32s(m, 1e-3, 33)?;
        let mut logp = gpu.alloc::<f32>(m, STAGE)?;
        let mut lse = gpu.alloc::<f32>(m, STAGE)?;
        let mut dlogits = gpu.alloc::<bf16>(m * v, STAGE)?;
        let chunk = default_chunk_rows(v);
        let fwd_bytes = (m * v * 4 + m * 12) as f64;
        let bwd_bytes = (m * v * (4 + 2) + m * 12) as f64;
        let fwd_formula = "M·V·4 (logits read once) + M·12 (targets, logp, lse)";
        let bwd_formula =
            "M·V·(4 + 2) (f32 logits read, bf16 gradient rows written) + M·12 (targets, lse, upstream)";
        for (suffix, rows) in [("", chunk), ("_128rows", 128), ("_1launch", m)] {
            let note = if rows == m {
                "one launch over all M rows".to_string()
            } else {
                format!("{rows}-row launches, as the chunked pass runs them")
            };
            self.measure(
                &format!("logprob_rows{suffix}"),
                &shape,
                (3, 10),
                || {
                    for r0 in (0..m).step_by(rows) {
                        let r1 = (r0 + rows).min(m);
                        gpu.logprob_rows(
                            &mut logp.slice_mut(r0..r1),
                            &mut lse.slice_mut(r0..r1),
                            &logits.slice(r0 * v..r1 * v),
                            &targets.slice(r0..r1),
                            v,
                        )?;
                    }
                    Ok(())
                },
                |ms| json!({"gbps": fwd_bytes / ms / 1e6, "bytes": fwd_formula, "note": note}),
            );
            self.measure(
                &format!("logprob_grad_rows{suffix}"),
                &shape,
                (3, 10),
                || {
                    for r0 in (0..m).step_by(rows) {
                        let r1 = (r0 + rows).min(m);
                        gpu.logprob_grad_rows::<bf16>(
                            &mut dlogits.slice_mut(r0 * v..r1 * v),
                            &logits.slice(r0 * v..r1 * v),
                            &targets.slice(r0..r1),
                            &lse.slice(r0..r1),
                            &upstream.slice(r0..r1),
                            v,
                        )?;
                    }
                    Ok(())
                },
                |ms| json!({"gbps": bwd_bytes / ms / 1e6, "bytes": bwd_formula, "note": note}),
            );
        }
        Ok(())
    }

    /// One fused AdamW update over 1.2e9 f32 parameters, writing the bf16 shadow.
    fn adamw(&self) -> Result<()> {
        let gpu = &*self.gpu;
        let p = 1_200_000_000usize;
        let mut params = self.f32s(p, 0.02, 41)?;
        let grads = self.f32s(p, 1e-3, 42)?;
        let mut m = self.f32s(p, 1e-4, 43)?;
        // The second moment must not be negative: an offset uniform.
        let mut v = self.random(p, 1e-7, 44, |x| x + 2e-7)?;
        let mut previous = gpu.alloc::<f32>(p, "for the AdamW benchmark")?;
        let mut shadow = gpu.alloc::<bf16>(p, "for the AdamW benchmark")?;
        let h = AdamW {
            lr: 1e-5,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            step: 10,
            grad_scale: 1.0,
        };
        let bytes = 34.0 * p as f64;
        self.measure(
            "adamw",
            "P=1.2e9 f32",
            (3, 10),
            || {
                gpu.adamw_update(
                    &mut params,
                    &mut previous,
                    &mut m,
                    &mut v,
                    &grads,
                    Some(&mut shadow),
                    h,
                )
            },
            |ms| {
                json!({
                    "gbps": bytes / ms / 1e6,
                    "bytes": "34·P: params, m, v, grads read (16); params, previous, m, v written (16); bf16 shadow written (2)",
                })
            },
        );
        Ok(())
    }

    /// The DPO loss kernel (sigmoid) with its per-pair stats, 4096 pairs.
    fn dpo_loss(&self) -> Result<()> {
        let gpu = &*self.gpu;
        let pairs = 4096usize;
        let policy = self.random(2 * pairs, 30.0, 51, |x| x - 300.0)?;
        let reference = self.random(2 * pairs, 30.0, 52, |x| x - 300.0)?;
        let n_tokens: Vec<i32> = ints_host(2 * pairs, 400, 53)
            .into_iter()
            .map(|x| 100 + x as i32)
            .collect();
        let n_tokens = gpu.stream.clone_htod(&n_tokens)?;
        let mut dseq = gpu.alloc::<f32>(2 * pairs, "for the DPO loss benchmark")?;
        let mut stats = gpu.alloc::<f64>(pairs * PAIR_STATS, "for the DPO loss benchmark")?;
        let cfg = DpoConfig {
            loss_type: DpoLossType::Sigmoid,
            beta: 0.1,
            label_smoothing: 0.0,
            nll_alpha: 0.0,
        };
        self.measure(
            "dpo_loss",
            &format!("pairs={pairs} sigmoid"),
            (20, 200),
            || {
                gpu.dpo_loss(
                    &mut dseq,
                    &mut stats,
                    &policy,
                    &reference,
                    &n_tokens,
                    &cfg,
                    pairs,
                    pairs * 300,
                )
            },
            |ms| json!({"us": ms * 1e3, "work": "loss, d(loss)/d(logp) and per-pair rewards"}),
        );
        Ok(())
    }

    /// Temperature + top-p sampling of 64 rows over a Llama-3 vocabulary.
    fn sample(&self) -> Result<()> {
        let gpu = &*self.gpu;
        let (b, v) = (64usize, 128_256usize);
        let logits = self.f32s(b * v, 3.0, 61)?;
        let uniforms = self.random(b, 0.25, 62, |x| x + 0.5)?;
        let mut tokens = gpu.alloc::<u32>(b, "for the sampling benchmark")?;
        let params = SamplingParams {
            temperature: 0.8,
            top_p: 0.95,
            top_k: 0,
        };
        self.measure(
            "sample",
            &format!("B={b} V={v} T=0.8 top_p=0.95"),
            (10, 100),
            || gpu.sample_rows(&mut tokens, &logits, &uniforms, &params, v),
            |ms| json!({"us": ms * 1e3, "logits": "uniform, std 3"}),
        );
        Ok(())
    }

    /// One whole DPO update (forward, log-probs, loss, backward, gradient norm, AdamW) of a
    /// Llama-3.2-1B-shaped model with random weights through `Trainer<CudaOps<bf16>>`.
    fn train_step(&self) -> Result<()> {
        let (pairs, seq, prompt, micro) = (16usize, 512usize, 128usize, 8192usize);
        let config = ModelConfig::from_json(&json!({
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": 2048,
            "intermediate_size": 8192,
            "num_hidden_layers": 16,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "vocab_size": 128256,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0,
            "tie_word_embeddings": true,
        }))?;
        let layout = ParamLayout::new(&config);
        let n_params = layout.len;
        let started = Instant::now();
        let mut params = uniform_host(n_params, 0.02, 71);
        for t in layout.tensors(&config) {
            if t.shape.len() == 1 {
                params[t.range].fill(1.0); // RMSNorm weights
            }
        }
        let (l, hd) = (config.num_hidden_layers, config.q_dim());
        let vocab = config.vocab_size;
        let shape = format!(
            "Llama {:.2}B (C=2048 L={l} H=32 Hkv=8 D=64 I=8192 V={vocab} tied), {pairs} pairs x 2 x {seq} tokens, micro-batch {micro}",
            n_params as f64 / 1e9
        );
        let model = Model::from_params(config, params, StorageDtype::Bf16);
        let cfg = TrainConfig {
            objective: Objective::Dpo(DpoConfig {
                loss_type: DpoLossType::Sigmoid,
                beta: 0.1,
                label_smoothing: 0.0,
                nll_alpha: 0.0,
            }),
            optimizer: OptimizerConfig {
                lr: 1e-6,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
                max_grad_norm: 1.0,
                schedule: LrSchedule::Constant,
                warmup_steps: 0,
            },
            epochs: 1,
            batch_size: pairs,
            micro_batch_tokens: micro,
            seed: 0,
        };
        let mut model = model;
        let ops = CudaOps::<bf16>::new(self.gpu.clone());
        let mut trainer = Trainer::new(ops, &mut model, None, &cfg, micro)?;
        drop(model);
        let setup_s = started.elapsed().as_secs_f64();
        let examples: Vec<Example> = (0..pairs)
            .map(|i| {
                let toks = |s: u64, n: usize| ints_host(n, vocab as u64, 1000 * i as u64 + s);
                let head = toks(1, prompt);
                Example {
                    seqs: vec![
                        [head.clone(), toks(2, seq - prompt)].concat(),
                        [head, toks(3, seq - prompt)].concat(),
                    ],
                    prompt_len: prompt,
                    // About what random weights give: (seq - prompt) × -ln V.
                    reference: vec![-4500.0, -4520.0],
                }
            })
            .collect();
        let batch: Vec<usize> = (0..pairs).collect();
        let tokens = 2 * pairs * seq;
        let (warmup, reps) = (1, 4);
        let mut step = |i: usize| -> Result<f64> {
            let t0 = Instant::now();
            let outcome = trainer.step(&examples, &batch, i, 1_000_000)?;
            self.gpu.stream.synchronize()?;
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            match outcome {
                Ok(o) if o.tokens == tokens => Ok(ms),
                Ok(o) => anyhow::bail!("the step processed {} tokens, not {tokens}", o.tokens),
                Err(bad) => anyhow::bail!("the {} is {}", bad.what, bad.value),
            }
        };
        let timed = catch_unwind(AssertUnwindSafe(|| -> Result<f64> {
            for i in 0..warmup {
                step(i)?;
            }
            let mut ms = (0..reps)
                .map(|i| step(warmup + i))
                .collect::<Result<Vec<f64>>>()?;
            Ok(median(&mut ms))
        }));
        let flops_per_token = 6.0 * n_params as f64 + 6.0 * (l * hd * seq) as f64;
        let peak = self.peak;
        self.report("train_step", &shape, reps, WALL, timed, |ms| {
            let tps = tokens as f64 / (ms / 1e3);
            let tflops = tps * flops_per_token / 1e12;
            json!({
                "tokens_per_s": tps,
                "tflops": tflops,
                "mfu": peak.map(|p| tflops / p),
                "params": n_params,
                "flops": "per token 6·P + 6·L·T·H·D (P all parameters, tied: the LM head is the embedding; causal attention fwd+bwd at T = 512); MFU = that × tokens/s / the bf16 dense peak",
                "precision": "bf16 weights and activations, f32 master weights, gradients and AdamW state",
                "setup_s": setup_s,
            })
        });
        Ok(())
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    let msg = p
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown".into());
    format!("panicked: {msg}")
}
