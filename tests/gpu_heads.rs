//! The device pieces at the model's head against their CPU twins on fresh random inputs: the
//! chunked LM-head log-probs (forward and backward, f32 and bf16), the per-sequence sums and
//! their backward, the DPO loss, and sampling. Skipped, with the reason printed, where there
//! is no GPU (or the build has no kernels); scripts/gpu-check.sh runs them on a GPU, where a
//! skip fails.

mod common;

use common::gpu::*;
use half::bf16;
use tpo_engine::backend::cpu::logprobs::{
    logprobs_backward, logprobs_forward, LogitsScratch as CpuScratch,
};
use tpo_engine::backend::cpu::sampling::{argmax, candidates, sample, SamplerScratch};
use tpo_engine::backend::cuda::logprobs::{default_chunk_rows, LogitsScratch};
use tpo_engine::backend::cuda::Gpu;
use tpo_engine::backend::rng::Rng;
use tpo_engine::backend::settings::SamplingParams;
use tpo_engine::train::loss::{dpo_loss, DpoConfig, DpoLossType, DpoTotals, PairLogps};

/// Standard normal values from the engine's seeded generator.
fn normals(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.normal()).collect()
}

/// Relative tolerance of an element of type T against the f32 CPU result.
fn tol<T: Storage>() -> f32 {
    if T::SUFFIX == "bf16" {
        2e-2
    } else {
        1e-4
    }
}

fn logprobs_case<T: Storage>(gpu: &Gpu, m: usize, c: usize, v: usize, chunk: usize) {
    let round = round_to::<T>;
    let hidden = round(normals(m * c, 1 + m as u64));
    let weight = round(normals(v * c, 2).iter().map(|w| w * 0.3).collect());
    let targets: Vec<u32> = (0..m).map(|r| ((r * 7919 + 3) % v) as u32).collect();
    let dlogp = normals(m, 3);
    let dw0: Vec<f32> = normals(v * c, 4).iter().map(|x| 0.5 * x).collect();

    // The CPU twin on the same (rounded) inputs, with its own chunking.
    let (mut want_logp, mut want_lse) = (vec![0.0; m], vec![0.0; m]);
    let mut cpu_scratch = CpuScratch::new(7);
    logprobs_forward(
        &mut want_logp,
        &mut want_lse,
        &hidden,
        &weight,
        &targets,
        c,
        v,
        &mut cpu_scratch,
    )
    .unwrap();
    let mut want_dh = vec![0.0; m * c];
    let mut want_dw = dw0.clone();
    logprobs_backward(
        &mut want_dh,
        Some(&mut want_dw),
        &dlogp,
        &hidden,
        &weight,
        &targets,
        &want_lse,
        c,
        v,
        &mut cpu_scratch,
    )
    .unwrap();

    let (gh, gw) = (upload::<T>(gpu, &hidden), upload::<T>(gpu, &weight));
    let gt = gpu.stream.clone_htod(&targets).unwrap();
    let gdlogp = gpu.stream.clone_htod(&dlogp).unwrap();
    let mut scratch = LogitsScratch::new(gpu, chunk, v).unwrap();
    assert_eq!(scratch.chunk_rows(), chunk);
    let (mut logp, mut lse) = (nans::<f32>(gpu, m), nans::<f32>(gpu, m));
    gpu.logprobs_forward(&mut logp, &mut lse, &gh, &gw, &gt, c, v, &mut scratch)
        .unwrap();
    let what = format!("{} logprobs M {m} C {c} V {v} chunk {chunk}", T::SUFFIX);
    // The logits are f32 sums of the same products in another order, in either type.
    let logp = gpu.stream.clone_dtoh(&logp).unwrap();
    assert_close(&format!("{what} logp"), &logp, &want_logp, 1e-4);
    let lse = gpu.stream.clone_dtoh(&lse).unwrap();
    assert_close(&format!("{what} lse"), &lse, &want_lse, 1e-4);

    let mut dh = nans::<T>(gpu, m * c);
    let mut dw = gpu.stream.clone_htod(&dw0).unwrap();
    let glse = gpu.stream.clone_htod(&lse).unwrap();
    gpu.logprobs_backward(
        &mut dh,
        Some(&mut dw),
        &gdlogp,
        &gh,
        &gw,
        &gt,
        &glse,
        c,
        v,
        &mut scratch,
    )
    .unwrap();
    // bf16: the gradient rows are rounded to bf16 before both products.
    assert_close(
        &format!("{what} dhidden"),
        &download(gpu, &dh),
        &want_dh,
        tol::<T>(),
    );
    let dw = gpu.stream.clone_dtoh(&dw).unwrap();
    assert_close(&format!("{what} dweight"), &dw, &want_dw, tol::<T>());
    // A frozen head: the same d(hidden) without the weight's product.
    let mut frozen = nans::<T>(gpu, m * c);
    let no_dw: Option<&mut cudarc::driver::CudaSlice<f32>> = None;
    gpu.logprobs_backward(
        &mut frozen,
        no_dw,
        &gdlogp,
        &gh,
        &gw,
        &gt,
        &glse,
        c,
        v,
        &mut scratch,
    )
    .unwrap();
    assert!(
        download(gpu, &frozen) == download(gpu, &dh),
        "{what}: a frozen head changes d(hidden)"
    );
}

#[test]
fn chunked_logprobs_match_their_cpu_twin() {
    let Some(gpu) = gpu() else { return };
    // One row; odd M over several chunks with a short last one; a chunk larger than M; a V
    // whose rows the forward splits over several blocks (3 on 132 SMs; the 22-row last chunk
    // too), of no particular multiple so that rows start at every alignment.
    for (m, c, v, chunk) in [
        (1, 8, 13, 4),
        (37, 64, 1001, 8),
        (130, 96, 5003, 64),
        (5, 32, 300, 64),
        (150, 32, 20_011, 64),
    ] {
        logprobs_case::<f32>(&gpu, m, c, v, chunk);
        logprobs_case::<bf16>(&gpu, m, c, v, chunk);
    }
    // The default chunk: a multiple of 64 rows whose f32 logits fit 256 MiB.
    for v in [1000, 32_000, 128_256] {
        let chunk = default_chunk_rows(v);
        assert!(
            chunk.is_multiple_of(64) && chunk * v * 4 <= 256 << 20,
            "V {v}: {chunk}"
        );
    }
}

fn dpo_case(gpu: &Gpu, cfg: &DpoConfig, p: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut uniform = |lo: f32, hi: f32| lo + (hi - lo) * rng.uniform();
    // Summed log-probs, and references close enough that margins fall on both sides of
    // every loss's kinks (hinge at beta * margin = 1).
    let mut policy = vec![];
    let mut reference = vec![];
    let mut n_tokens = vec![];
    for _ in 0..2 * p {
        let lp = uniform(-80.0, -2.0);
        policy.push(lp);
        reference.push(lp + uniform(-12.0, 12.0));
        n_tokens.push(uniform(1.0, 60.0) as i32);
    }
    let pairs: Vec<PairLogps> = (0..p)
        .map(|i| PairLogps {
            chosen: policy[2 * i] as f64,
            rejected: policy[2 * i + 1] as f64,
            ref_chosen: reference[2 * i] as f64,
            ref_rejected: reference[2 * i + 1] as f64,
            n_chosen: n_tokens[2 * i] as usize,
            n_rejected: n_tokens[2 * i + 1] as usize,
        })
        .collect();
    // A micro-batch of a larger optimizer batch.
    let batch_pairs = p + 3;
    let batch_tokens = pairs.iter().map(|x| x.n_chosen).sum::<usize>() + 17;

    let mut dseq = nans::<f32>(gpu, 2 * p);
    let mut stats = gpu.stream.clone_htod(&vec![f64::NAN; 6 * p]).unwrap();
    gpu.dpo_loss(
        &mut dseq,
        &mut stats,
        &gpu.stream.clone_htod(&policy).unwrap(),
        &gpu.stream.clone_htod(&reference).unwrap(),
        &gpu.stream.clone_htod(&n_tokens).unwrap(),
        cfg,
        batch_pairs,
        batch_tokens,
    )
    .unwrap();
    let dseq = gpu.stream.clone_dtoh(&dseq).unwrap();
    let stats = gpu.stream.clone_dtoh(&stats).unwrap();

    let close = |g: f64, w: f64| (g - w).abs() <= 1e-12 * w.abs().max(1.0);
    let mut all = DpoTotals::default();
    for (i, pair) in pairs.iter().enumerate() {
        // The CPU twin pair by pair, so each stats row is checked on its own.
        let mut want = DpoTotals::default();
        let grad = dpo_loss(&[*pair], cfg, batch_pairs, batch_tokens, &mut want)[0];
        let row: [f64; 6] = stats[6 * i..6 * i + 6].try_into().unwrap();
        let mut got = DpoTotals::default();
        got.add_pair(&row);
        all.add_pair(&row);
        let (got, want) = (got.metrics(cfg), want.metrics(cfg));
        assert_eq!(got.len(), want.len());
        for (key, w) in &want {
            let (g, w) = (got[key].as_f64().unwrap(), w.as_f64().unwrap());
            assert!(close(g, w), "{cfg:?} pair {i} {key}: {g} vs {w}");
        }
        for (side, (g, w)) in [(dseq[2 * i], grad.0), (dseq[2 * i + 1], grad.1)]
            .into_iter()
            .enumerate()
        {
            assert!(
                (g as f64 - w).abs() <= 1e-6 * w.abs() + 1e-12,
                "{cfg:?} pair {i} side {side}: d {g} vs {w}"
            );
        }
    }
    // And the whole micro-batch at once: the same totals.
    let mut want = DpoTotals::default();
    dpo_loss(&pairs, cfg, batch_pairs, batch_tokens, &mut want);
    let (got, want) = (all.metrics(cfg), want.metrics(cfg));
    for (key, w) in &want {
        let (g, w) = (got[key].as_f64().unwrap(), w.as_f64().unwrap());
        assert!(close(g, w), "{cfg:?} batch {key}: {g} vs {w}");
    }
}

#[test]
fn dpo_loss_matches_its_cpu_twin_for_every_loss() {
    let Some(gpu) = gpu() else { return };
    let mut seed = 10;
    for loss_type in [DpoLossType::Sigmoid, DpoLossType::Ipo, DpoLossType::Hinge] {
        for (beta, label_smoothing, nll_alpha) in [
            (0.1, 0.0, 0.0),
            (0.5, 0.0, 1.0),
            (0.1, 0.2, 0.0),
            (0.3, 0.1, 0.5),
        ] {
            if label_smoothing != 0.0 && loss_type != DpoLossType::Sigmoid {
                continue; // label smoothing is the sigmoid loss's only
            }
            let cfg = DpoConfig {
                loss_type,
                beta,
                label_smoothing,
                nll_alpha,
            };
            // One pair, and more pairs than a block has threads.
            for p in [1, 300] {
                seed += 1;
                dpo_case(&gpu, &cfg, p, seed);
            }
        }
    }
}

/// The kept set the definition gives, in f64, given how many tokens the filters keep: the
/// first `n` of the tokens ordered by weight, then id (ties go to the lowest ids).
struct Reference {
    weights: Vec<f64>, // (V) exp((l - max) / T)
    order: Vec<u32>,   // ids by descending weight, then ascending id
    /// cum[n]: the mass of order[..n]
    cum: Vec<f64>,
    /// How many tokens top-k keeps, and the top-p target over them (None: no top-p).
    n_k: usize,
    target: Option<f64>,
}

/// Relative tolerances on masses against the f64 reference: the device sums its f32
/// weights exactly (fixed point), the CPU in f32, bucket by bucket.
const DEVICE_MASS_TOL: f64 = 1e-5;
const CPU_MASS_TOL: f64 = 1e-4;

impl Reference {
    fn new(logits: &[f32], p: &SamplingParams) -> Reference {
        let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let t = p.temperature as f64;
        let weights: Vec<f64> = logits
            .iter()
            .map(|&l| ((l as f64 - max) / t).exp())
            .collect();
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        order.sort_by(|&a, &b| {
            weights[b as usize]
                .total_cmp(&weights[a as usize])
                .then(a.cmp(&b))
        });
        let mut cum = vec![0.0];
        for &i in &order {
            cum.push(cum.last().unwrap() + weights[i as usize]);
        }
        let n_k = if p.top_k > 0 {
            p.top_k.min(logits.len())
        } else {
            logits.len()
        };
        let target = (p.top_p < 1.0).then(|| p.top_p as f64 * cum[n_k]);
        Reference {
            weights,
            order,
            cum,
            n_k,
            target,
        }
    }

    /// Whether keeping the first n tokens of `order` is right within a relative `tol` of
    /// the masses.
    fn acceptable(&self, n: usize, tol: f64) -> bool {
        match self.target {
            None => n == self.n_k,
            Some(target) => {
                let slack = tol * self.cum[self.n_k];
                n >= 1
                    && n <= self.n_k
                    && self.cum[n - 1] < target + slack
                    && self.cum[n] >= target - slack
            }
        }
    }

    /// `kept` (ids ascending) is the first kept.len() tokens of `order`.
    fn is_prefix(&self, kept: &[u32]) -> bool {
        let mut first: Vec<u32> = self.order[..kept.len()].to_vec();
        first.sort();
        first == kept
    }
}

/// B rows of V logits: normals quantized to 1/64 (distinct values differ by far more than
/// rounding, equal ones tie exactly), one row of heavy ties (7 values) and one whose
/// largest logit appears twice.
fn sampling_logits(b: usize, v: usize, seed: u64) -> Vec<f32> {
    let mut logits: Vec<f32> = normals(b * v, seed)
        .iter()
        .map(|x| (x * 3.0 * 64.0).round() / 64.0)
        .collect();
    for (i, l) in logits[..v].iter_mut().enumerate() {
        *l = (i % 7) as f32 * 0.5;
    }
    let row = &mut logits[v..2 * v];
    row[v / 3] = 40.0;
    row[v - 1] = 40.0;
    logits
}

fn sampling_case(gpu: &Gpu, b: usize, v: usize, p: &SamplingParams, seed: u64) {
    let logits = sampling_logits(b, v, seed);
    // One uniform per row from the host's generator: the CPU's `sample` draws the same.
    let streams: Vec<Rng> = (0..b as u64).map(|r| Rng::for_stream(seed, r, 0)).collect();
    let uniforms: Vec<f32> = streams.iter().map(|s| s.clone().uniform()).collect();
    let glogits = gpu.stream.clone_htod(&logits).unwrap();
    let guniforms = gpu.stream.clone_htod(&uniforms).unwrap();
    let mut tokens = gpu.stream.clone_htod(&vec![u32::MAX; b]).unwrap();
    let mut kept = gpu.stream.clone_htod(&vec![7u8; b * v]).unwrap();
    gpu.sample_rows_with_kept(&mut tokens, &mut kept, &glogits, &guniforms, p, v)
        .unwrap();
    let tokens = gpu.stream.clone_dtoh(&tokens).unwrap();
    let kept = gpu.stream.clone_dtoh(&kept).unwrap();
    // Without the mask the kernel stops walking early: the same draws.
    let mut plain = gpu.stream.clone_htod(&vec![u32::MAX; b]).unwrap();
    gpu.sample_rows(&mut plain, &glogits, &guniforms, p, v)
        .unwrap();
    assert_eq!(
        gpu.stream.clone_dtoh(&plain).unwrap(),
        tokens,
        "{p:?} V {v}"
    );

    let mut scratch = SamplerScratch::default();
    for r in 0..b {
        let row = &logits[r * v..(r + 1) * v];
        let what = format!("{p:?} V {v} row {r}");
        let want = sample(row, p, &mut streams[r].clone(), &mut scratch);
        if p.temperature <= 0.0 {
            assert_eq!(tokens[r], argmax(row), "{what}: greedy");
            assert_eq!(tokens[r], want, "{what}: greedy");
            continue;
        }
        let mask = &kept[r * v..(r + 1) * v];
        assert!(
            mask.iter().all(|&k| k <= 1),
            "{what}: kept mask not written"
        );
        let gpu_kept: Vec<u32> = (0..v as u32).filter(|&i| mask[i as usize] == 1).collect();
        let cpu_kept: Vec<u32> = candidates(row, p, &mut scratch)
            .iter()
            .map(|c| c.0)
            .collect();
        let reference = Reference::new(row, p);
        assert!(
            reference.is_prefix(&gpu_kept) && reference.acceptable(gpu_kept.len(), DEVICE_MASS_TOL),
            "{what}: the device keeps {} tokens, not a nucleus (the CPU keeps {})",
            gpu_kept.len(),
            cpu_kept.len()
        );
        if gpu_kept != cpu_kept {
            // Only where the top-p boundary is within rounding for both.
            assert!(
                reference.acceptable(cpu_kept.len(), CPU_MASS_TOL),
                "{what}: kept {} tokens, the CPU {}",
                gpu_kept.len(),
                cpu_kept.len()
            );
        }
        // The draw: the token whose kept mass, walked in id order, covers u * total;
        // within rounding of a boundary either neighbour will do.
        let t = tokens[r];
        assert!(
            gpu_kept.binary_search(&t).is_ok(),
            "{what}: drew {t}, not kept"
        );
        if t != want || gpu_kept != cpu_kept {
            let total: f64 = gpu_kept
                .iter()
                .map(|&i| reference.weights[i as usize])
                .sum();
            let x = uniforms[r] as f64 * total;
            let before: f64 = gpu_kept
                .iter()
                .take_while(|&&i| i < t)
                .map(|&i| reference.weights[i as usize])
                .sum();
            let through = before + reference.weights[t as usize];
            let slack = DEVICE_MASS_TOL * total;
            assert!(
                before - slack <= x && x < through + slack,
                "{what}: drew {t}, the CPU {want}; u * total {x}, token's mass [{before}, {through})"
            );
        }
    }
}

#[test]
fn sampling_matches_its_cpu_twin() {
    let Some(gpu) = gpu() else { return };
    let mut seed = 100;
    for (b, v) in [(41, 1000), (6, 50_000)] {
        seed += 1;
        sampling_case(&gpu, b, v, &SamplingParams::GREEDY, seed);
        for temperature in [0.7, 1.0] {
            for top_p in [0.9, 0.95, 1.0] {
                for top_k in [0, 20] {
                    let p = SamplingParams {
                        temperature,
                        top_p,
                        top_k,
                    };
                    seed += 1;
                    sampling_case(&gpu, b, v, &p, seed);
                }
            }
        }
    }
    // Tiny vocabularies: top-k of all but one, top-k beyond V, top-p keeping one token.
    for (v, top_k, top_p) in [(1, 0, 0.5), (2, 1, 1.0), (5, 4, 0.3), (7, 9, 0.01)] {
        seed += 1;
        let p = SamplingParams {
            temperature: 0.9,
            top_p,
            top_k,
        };
        sampling_case(&gpu, 3, v, &p, seed);
    }
}
