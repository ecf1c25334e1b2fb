//! One DPO training update on the benchmark model (`TPO_BENCH_SHAPE`: 7m by default, or
//! 135m; random weights): 4 pairs = 8 sequences of 256 tokens (64 prompt + 192 completion),
//! forward, fused log-probs, DPO loss, backward, gradient norm and AdamW; the reference
//! log-probs are precomputed, as in `tpo-engine dpo`. Tokens/s of the update = 2048 / time.
//! The id is `dpo_train_step/SHAPE-8x256` with f32 products and `dpo_train_step_bf16/...`
//! with bf16 ones on the best bf16 kernel this CPU has (`TPO_CPU_BF16` forces one);
//! `dpo_train_step_lora/...` and `dpo_train_step_lora_bf16/...` train a rank-16 LoRA
//! adapter on every Linear over the frozen model instead.
//! scripts/bench-train.sh runs them beside PyTorch.

mod common;

use common::{bench_model, bench_shape};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;
use tpo_engine::backend::cpu::bf16::Bf16Path;
use tpo_engine::backend::cpu::{Cpu, Products};
use tpo_engine::backend::rng::Rng;
use tpo_engine::model::lora::{Adapter, LoraConfig, Target};
use tpo_engine::train::trainer::{micro_batch_rows, Trainer};
use tpo_engine::train::{
    DpoConfig, DpoLossType, Example, LrSchedule, Objective, OptimizerConfig, TrainConfig,
};

const PAIRS: usize = 4;
const SEQ_LEN: usize = 256;
const PROMPT_LEN: usize = 64;

fn dpo_train_step(c: &mut Criterion) {
    update(c, "dpo_train_step", Cpu::F32, false);
    let path = Bf16Path::chosen().expect("TPO_CPU_BF16 names a kernel this CPU runs");
    eprintln!("bf16 products on {path}");
    let products = Products::Bf16(path);
    update(c, "dpo_train_step_bf16", Cpu::new(products), false);
    update(c, "dpo_train_step_lora", Cpu::F32, true);
    update(c, "dpo_train_step_lora_bf16", Cpu::new(products), true);
}

/// The update with `cpu`'s products, as benchmark group `name`; with `lora`, of a rank-16
/// adapter on every Linear.
fn update(c: &mut Criterion, name: &str, cpu: Cpu, lora: bool) {
    let mut model = bench_model();
    let mut adapter = lora.then(|| {
        let all = Target::ALL.to_vec();
        let config = LoraConfig::new(16, 32.0, false, 0.0, all).expect("a LoRA config");
        Adapter::init(&model.config, config, 1)
    });
    let (shape, _) = bench_shape();
    let vocab = model.config.vocab_size;
    let mut rng = Rng::new(4);
    let mut tokens = |n: usize| -> Vec<u32> {
        (0..n)
            .map(|_| (rng.next_u64() % vocab as u64) as u32)
            .collect()
    };
    let examples: Vec<Example> = (0..PAIRS)
        .map(|_| {
            let prompt = tokens(PROMPT_LEN);
            let completion = |t: Vec<u32>| [prompt.as_slice(), &t].concat();
            Example {
                seqs: vec![
                    completion(tokens(SEQ_LEN - PROMPT_LEN)),
                    completion(tokens(SEQ_LEN - PROMPT_LEN)),
                ],
                prompt_len: PROMPT_LEN,
                reference: vec![-1500.0, -1510.0],
            }
        })
        .collect();
    let cfg = TrainConfig {
        objective: Objective::Dpo(DpoConfig {
            loss_type: DpoLossType::Sigmoid,
            beta: 0.1,
            label_smoothing: 0.0,
            nll_alpha: 0.0,
        }),
        optimizer: OptimizerConfig {
            lr: 1e-5,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            schedule: LrSchedule::Constant,
            warmup_steps: 0,
        },
        epochs: 1,
        batch_size: PAIRS,
        micro_batch_tokens: 2 * PAIRS * SEQ_LEN,
        seed: 0,
    };
    let rows = micro_batch_rows(&examples, &cfg);
    let mut trainer =
        Trainer::new(cpu, &mut model, adapter.as_mut(), &cfg, rows).expect("a trainer");
    let batch: Vec<usize> = (0..PAIRS).collect();
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements((2 * PAIRS * SEQ_LEN) as u64));
    group.bench_function(
        BenchmarkId::from_parameter(format!("{shape}-{}x{SEQ_LEN}", 2 * PAIRS)),
        |b| {
            b.iter(|| {
                trainer
                    .step(&examples, &batch, 0, 1_000_000)
                    .expect("a step")
                    .expect("a finite step")
            })
        },
    );
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8));
    targets = dpo_train_step
}
criterion_main!(benches);
