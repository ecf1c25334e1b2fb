//! The memory formula of training (`memory::training`, `memory::lora_training`, and the
//! GPU's `lora_training_on_gpu` built from the same terms) against what the CPU trainer
//! really allocates, counted by the allocator: full training holds 20 bytes a parameter,
//! LoRA 4 bytes a frozen parameter and 20 an adapter one, beside the activations, which the
//! formula estimates.
//!
//! One test per binary: the allocator counts every thread of the process.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use tpo_engine::backend::cpu::Cpu;
use tpo_engine::backend::rng::Rng;
use tpo_engine::memory;
use tpo_engine::model::graph::Activations;
use tpo_engine::model::lora::{Adapter, LoraConfig, Target};
use tpo_engine::model::weights::StorageDtype;
use tpo_engine::model::{Model, ModelConfig, ParamLayout};
use tpo_engine::train::trainer::Trainer;
use tpo_engine::train::{
    DpoConfig, DpoLossType, LrSchedule, Objective, OptimizerConfig, TrainConfig,
};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        CURRENT.fetch_add(layout.size(), Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes still held after `f`, beyond those held before it (what it returns included).
fn held<T>(f: impl FnOnce() -> T) -> (T, i64) {
    let before = CURRENT.load(Ordering::SeqCst) as i64;
    let out = f();
    (out, CURRENT.load(Ordering::SeqCst) as i64 - before)
}

fn model() -> Model {
    let config = ModelConfig::from_json(&serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "hidden_size": 128, "intermediate_size": 352,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 3000, "max_position_embeddings": 512, "tie_word_embeddings": true,
    }))
    .unwrap();
    let mut rng = Rng::new(3);
    let params = (0..ParamLayout::new(&config).len)
        .map(|_| 0.02 * rng.normal())
        .collect();
    Model::from_params(config, params, StorageDtype::F32)
}

fn config() -> TrainConfig {
    TrainConfig {
        objective: Objective::Dpo(DpoConfig {
            loss_type: DpoLossType::Sigmoid,
            beta: 0.1,
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
        epochs: 1,
        batch_size: 4,
        micro_batch_tokens: 1024,
        seed: 0,
    }
}

/// Small bookkeeping a trainer keeps beside its buffers: configs, layouts, rotary tables.
const SLACK: i64 = 64 << 10;

#[test]
fn the_trainers_state_is_what_the_formula_counts() {
    let rows = 1024;
    let mut full_model = model();
    let p = full_model.layout.len as i64;
    // The activations alone, as a trainer of either kind makes them.
    let (_, acts) = held(|| Activations::new(&full_model.net(), rows, true).unwrap());
    // Full training: the master is the model's own vector (moved), plus 16 bytes a
    // parameter (roll-back copy, two moments, gradient) and the activations.
    let (full, full_bytes) =
        held(|| Trainer::new(Cpu::F32, &mut full_model, None, &config(), rows).unwrap());
    drop(full);
    let full_state = full_bytes - acts;
    assert!(
        (full_state - 16 * p).abs() <= SLACK,
        "full: {full_state} bytes beside the activations, want {}",
        16 * p
    );

    let mut lora_model = model();
    let all = Target::ALL.to_vec();
    let lora = LoraConfig::new(8, 16.0, false, 0.0, all).unwrap();
    let mut adapter = Adapter::init(&lora_model.config, lora, 1);
    let a = adapter.layout.len as i64;
    // LoRA: the frozen weights and the adapter's master are moved in; 16 bytes an adapter
    // parameter, the activations, the adapter's t = x A^T of every layer and Linear (r
    // columns a token) and its scratch (rows of the widest Linear: the product, the output
    // block's gradient and the input's, which a device that cannot add in place uses; and
    // dt, r columns).
    let (trainer, lora_bytes) = held(|| {
        Trainer::new(
            Cpu::F32,
            &mut lora_model,
            Some(&mut adapter),
            &config(),
            rows,
        )
        .unwrap()
    });
    drop(trainer);
    let cfg = &lora_model.config;
    let adapter_acts = 4 * rows as i64 * cfg.num_hidden_layers as i64 * 7 * 8;
    let scratch = 4 * rows as i64 * (cfg.intermediate_size as i64 * 3 + 8);
    let lora_state = lora_bytes - acts - adapter_acts - scratch;
    assert!(
        (lora_state - 16 * a).abs() <= SLACK,
        "LoRA: {lora_state} bytes beside the activations and the adapter's, want {}",
        16 * a
    );

    // The formula: weights and state exactly (the model's vector and the adapter's are
    // the 4 bytes it counts for them), the activations within 1% (its per-token terms
    // against the buffers the graph allocates).
    let need = memory::training(&full_model.config, rows);
    let lora_need = memory::lora_training(cfg, a as u64, rows);
    let counted = need.total() as i64 - lora_need.total() as i64;
    let params = full_model.config.parameter_count().unwrap() as i64;
    assert_eq!(
        counted,
        16 * params - 20 * a,
        "the two formulas differ by the state only"
    );
    let estimate = need.total() as i64 - 20 * params;
    let ratio = estimate as f64 / acts as f64;
    eprintln!(
        "activations of {rows} rows: {acts} bytes allocated, {estimate} estimated ({ratio:.3}); adapter products {adapter_acts}"
    );
    assert!(
        (0.99..1.01).contains(&ratio),
        "activation estimate {ratio:.3} of the allocation"
    );
}
