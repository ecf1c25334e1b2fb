//! Token sampling over the benchmark model's vocabulary, and one whole-model decode step of
//! 32 sequences (the step `generate` repeats), on the benchmark config with random weights.

mod common;

use common::{bench_model, VOCAB};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;
use tpo_engine::backend::cpu::kv_cache::KvCache;
use tpo_engine::backend::cpu::sampling::{sample, SamplerScratch};
use tpo_engine::backend::rng::Rng;
use tpo_engine::backend::settings::SamplingParams;
use tpo_engine::model::LogitRows;

const BATCH: usize = 32;
const PROMPT_LEN: usize = 32;

fn sampling(c: &mut Criterion) {
    let mut group = c.benchmark_group("sample");
    let mut rng = Rng::new(1);
    let logits: Vec<f32> = (0..VOCAB).map(|_| 2.0 * rng.normal()).collect();
    let with = |temperature, top_p, top_k| SamplingParams {
        temperature,
        top_p,
        top_k,
    };
    let cases = [
        ("greedy", SamplingParams::GREEDY),
        ("temperature_0.8", with(0.8, 1.0, 0)),
        ("temperature_0.8_top_p_0.95", with(0.8, 0.95, 0)),
        ("temperature_0.8_top_k_50", with(0.8, 1.0, 50)),
    ];
    group.throughput(Throughput::Elements(VOCAB as u64));
    for (name, params) in cases {
        let mut rng = Rng::new(2);
        let mut scratch = SamplerScratch::default();
        group.bench_function(BenchmarkId::new(name, VOCAB), |b| {
            b.iter(|| sample(black_box(&logits), &params, &mut rng, &mut scratch))
        });
    }
    group.finish();
}

fn decode_step(c: &mut Criterion) {
    let model = bench_model();
    let mut rng = Rng::new(4);
    let mut token = || (rng.next_u64() % VOCAB as u64) as u32;
    let prompts: Vec<Vec<u32>> = (0..BATCH)
        .map(|_| (0..PROMPT_LEN).map(|_| token()).collect())
        .collect();
    let next: Vec<[u32; 1]> = (0..BATCH).map(|_| [token()]).collect();

    let mut caches: Vec<KvCache> = (0..BATCH).map(|_| model.new_cache()).collect();
    let seqs: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
    let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
    model.forward(&seqs, &mut refs, LogitRows::Last).unwrap();

    let seqs: Vec<&[u32]> = next.iter().map(|t| t.as_slice()).collect();
    let mut group = c.benchmark_group("model_forward");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(
        BenchmarkId::new("decode_step", format!("{BATCH}seq_after_{PROMPT_LEN}")),
        |b| {
            b.iter_batched(
                || {
                    // A clone holds no spare capacity; `generate` reserves room up front,
                    // so the step is timed without the reallocation of every layer's cache.
                    let mut fresh = caches.clone();
                    for cache in &mut fresh {
                        cache.reserve(1);
                    }
                    fresh
                },
                |mut fresh| {
                    let mut refs: Vec<&mut KvCache> = fresh.iter_mut().collect();
                    let logits = model
                        .forward(black_box(&seqs), &mut refs, LogitRows::Last)
                        .unwrap();
                    // Returned, so that freeing them falls outside the timing.
                    (fresh, logits)
                },
                BatchSize::LargeInput,
            )
        },
    );
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = sampling, decode_step
}
criterion_main!(benches);
