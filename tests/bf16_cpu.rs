//! bf16 products on the CPU (`--precision bf16`) against f32, on every bf16 kernel this CPU
//! runs (the others are named as untested on stderr): log-probs, DPO training over a few
//! updates, and generation's independence of threads and batch size.
//!
//! Tolerances, for a random model of the benchmark's widths (hidden 256, K up to 688),
//! about 10x what each kernel gave here (Sapphire Rapids: AMX, AVX512-BF16, portable):
//! - a sequence's summed completion log-prob (30 to 55 tokens, -250 to -375): within 5e-5
//!   of the f32 sum, relative (measured: at most 3.7e-6). bf16 keeps 8 bits of each operand,
//!   2^-9 relative error each, but the errors of many products cancel in each sum;
//! - the DPO loss of each of 4 updates (from 0.69 down to 0.05): within 1e-3 absolute of
//!   f32's (measured: at most 1.1e-4), and both runs lower the loss.

use anyhow::Result;
use serde_json::{Map, Value};
use tpo_engine::backend::cpu::bf16::Bf16Path;
use tpo_engine::backend::cpu::{Cpu, Products};
use tpo_engine::backend::device::Device;
use tpo_engine::backend::rng::Rng;
use tpo_engine::backend::settings::SamplingParams;
use tpo_engine::engine::{train, Engine};
use tpo_engine::generate::{generate_on, Completion, GenerateOptions};
use tpo_engine::model::graph::ScoredSequence;
use tpo_engine::model::weights::StorageDtype;
use tpo_engine::model::{Model, ModelConfig, ParamLayout};
use tpo_engine::train::trainer::{RunSink, Trained};
use tpo_engine::train::{
    DpoConfig, DpoLossType, Example, LrSchedule, Objective, OptimizerConfig, TrainConfig,
};

/// A CPU of each bf16 kernel this machine runs.
fn bf16_cpus() -> Vec<Cpu> {
    Bf16Path::ALL
        .into_iter()
        .filter(|p| {
            let ok = p.available();
            if !ok {
                eprintln!("bf16 path {} not tested: this CPU cannot run it", p.name());
            }
            ok
        })
        .map(|p| Cpu::new(Products::Bf16(p)))
        .collect()
}

const V: u32 = 4096;

fn wide_model() -> Model {
    let config = ModelConfig::from_json(&serde_json::json!({"model_type": "llama", "hidden_size": 256,
        "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 4,
        "vocab_size": V, "max_position_embeddings": 256}))
    .unwrap();
    let layout = ParamLayout::new(&config);
    let mut rng = Rng::new(5);
    let params = (0..layout.len).map(|_| 0.05 * rng.normal()).collect();
    Model::from_params(config, params, StorageDtype::F32)
}

fn tokens(rng: &mut Rng, n: usize) -> Vec<u32> {
    (0..n)
        .map(|_| (rng.next_u64() % u64::from(V)) as u32)
        .collect()
}

/// Pairs of (prompt + chosen, prompt + rejected), reference log-probs filled by `score`.
fn pairs(count: usize) -> Vec<Example> {
    let mut rng = Rng::new(11);
    (0..count)
        .map(|i| {
            let prompt = tokens(&mut rng, 12 + i);
            let chosen = [prompt.clone(), tokens(&mut rng, 30 + 3 * i)].concat();
            let rejected = [prompt.clone(), tokens(&mut rng, 40 + i)].concat();
            Example {
                seqs: vec![chosen, rejected],
                prompt_len: prompt.len(),
                reference: vec![],
            }
        })
        .collect()
}

fn score(model: &Model, cpu: Cpu, examples: &[Example]) -> Vec<f64> {
    let seqs: Vec<ScoredSequence> = examples
        .iter()
        .flat_map(|e| {
            e.seqs.iter().map(|s| ScoredSequence {
                tokens: s,
                prompt_len: e.prompt_len,
            })
        })
        .collect();
    Engine::Cpu(model, cpu).score(&seqs, 256, &|_| {}).unwrap()
}

#[test]
fn bf16_log_probs_follow_f32() {
    let model = wide_model();
    let examples = pairs(6);
    let want = score(&model, Cpu::F32, &examples);
    for cpu in bf16_cpus() {
        let got = score(&model, cpu.clone(), &examples);
        assert_ne!(
            got, want,
            "{cpu:?}: bf16 products gave f32's sums bit for bit"
        );
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 5e-5 * w.abs(),
                "{cpu:?} sequence {i}: {g} vs {w}"
            );
        }
    }
}

#[derive(Default)]
struct Losses(Vec<f64>);

impl RunSink for Losses {
    fn metrics(&mut self, line: &Map<String, Value>) -> Result<()> {
        self.0.push(line["loss"].as_f64().unwrap());
        Ok(())
    }
    fn after_step(&mut self, _: Trained, _: usize, _: bool) -> Result<()> {
        Ok(())
    }
    fn keep_last_good(&mut self, _: Trained, _: usize) -> Result<String> {
        Ok(String::new())
    }
    fn progress(&mut self, _: usize, _: f64, _: f64) {}
}

/// DPO losses of 4 updates (lr 1e-3) from `wide_model` on `cpu`, and the loss after them.
fn dpo_losses(cpu: Cpu) -> Vec<f64> {
    let mut model = wide_model();
    let mut examples = pairs(8);
    let refs = score(&model, Cpu::F32, &examples);
    for (e, r) in examples.iter_mut().zip(refs.chunks(2)) {
        e.reference = r.to_vec();
    }
    let cfg = TrainConfig {
        objective: Objective::Dpo(DpoConfig {
            loss_type: DpoLossType::Sigmoid,
            beta: 0.5,
            label_smoothing: 0.0,
            nll_alpha: 0.0,
        }),
        optimizer: OptimizerConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            schedule: LrSchedule::Constant,
            warmup_steps: 0,
        },
        epochs: 4,
        batch_size: examples.len(),
        micro_batch_tokens: 300,
        seed: 3,
    };
    let mut sink = Losses::default();
    train(
        &mut model,
        None,
        &examples,
        &cfg,
        &mut sink,
        &Device::Cpu(cpu),
    )
    .unwrap();
    assert_eq!(sink.0.len(), 4);
    sink.0
}

#[test]
fn bf16_dpo_training_follows_f32() {
    let want = dpo_losses(Cpu::F32);
    assert!(
        want[3] < want[0] - 0.01,
        "f32 training does not learn: {want:?}"
    );
    for cpu in bf16_cpus() {
        let got = dpo_losses(cpu.clone());
        assert!(
            got[3] < got[0] - 0.01,
            "{cpu:?} training does not learn: {got:?}"
        );
        for (s, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-3, "{cpu:?} update {s}: {g} vs {w}");
        }
    }
}

#[test]
fn bf16_generation_does_not_depend_on_threads_or_batch_size() {
    let model = wide_model();
    let prompts: Vec<Vec<u32>> = (0..3u32)
        .map(|p| (0..20 + 7 * p).map(|i| (i * 37 + p * 11) % V).collect())
        .collect();
    let opts = GenerateOptions {
        samples: 4,
        max_new_tokens: 64,
        sampling: SamplingParams {
            temperature: 0.8,
            top_p: 0.95,
            top_k: 0,
        },
        seed: 3,
        batch_size: 1,
        eos_ids: vec![],
        steering: None,
    };
    for cpu in bf16_cpus() {
        let run_on = |threads: usize, batch: usize| -> Vec<Vec<Completion>> {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let opts = GenerateOptions {
                batch_size: batch,
                ..opts.clone()
            };
            pool.install(|| generate_on(&model, cpu.clone(), &prompts, &opts, &|_| false, &|_| {}))
                .unwrap()
                .0
        };
        let reference = run_on(1, 1);
        for (threads, batch) in [(2, 5), (3, 12), (2, 64)] {
            assert_eq!(
                run_on(threads, batch),
                reference,
                "{cpu:?}: {threads} threads, batch {batch}"
            );
        }
    }
}
